"""Docker services measured through their cgroup, and a real container's memory limit."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.metrics.cgroup import CgroupReader
from agent.metrics.compute import compute_host
from agent.metrics.processes import ProcessTreeSampler
from agent.metrics.psutil_reader import PsutilHostReader
from agent.metrics.sources import ServiceProcess
from tests.conftest import require
from tests.support.agent import wait_until

IMAGE = "dployr-metrics-test/busybox:latest"


def _docker_ok() -> tuple[bool, str]:
    if shutil.which("docker") is None:
        return False, "no docker CLI"
    probe = subprocess.run(["docker", "info"], capture_output=True, check=False)
    return probe.returncode == 0, "the Docker engine does not answer"


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A two-megabyte image holding busybox, built locally (no registry needed)."""
    available, why = _docker_ok()
    require("docker", available, why)
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True,
                      check=False).returncode != 0:
        busybox = shutil.which("busybox")
        require("docker", busybox is not None, "busybox-static is not installed")
        context = tmp_path_factory.mktemp("image")
        shutil.copy(str(busybox), context / "busybox")
        (context / "Dockerfile").write_text("FROM scratch\nCOPY busybox /bin/busybox\n"
                                            'CMD ["/bin/busybox", "sleep", "600"]\n')
        subprocess.run(["docker", "build", "-q", "-t", IMAGE, str(context)], check=True,
                       capture_output=True)
    return IMAGE


@pytest.fixture
def container(image: str) -> Iterator[str]:
    """A container running a shell with two sleeping children, limited to 96 MiB."""
    cid = subprocess.run(
        ["docker", "run", "-d", "--rm", "--memory", "96m", "--label", "dployr-test=metrics",
         image, "/bin/busybox", "sh", "-c",
         "/bin/busybox sleep 600 & /bin/busybox sleep 600 & wait"],
        capture_output=True, text=True, check=True).stdout.strip()
    try:
        yield cid
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True, check=False)


def _pid(cid: str) -> int:
    out = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", cid],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip())


def test_docker_service_is_measured_over_its_cgroup(container: str) -> None:
    """Every process of the container counts: the shell and its two sleeps."""
    sampler = ProcessTreeSampler()
    service = ServiceProcess("svc_c", "c", "docker", "running", None, container)

    def three() -> bool:
        sample = sampler.sample([service], monotonic=0.0, wall=0.0)[0]
        return sample.usage is not None and sample.usage.processes == 3

    wait_until(three, timeout=30, message="three processes in the container")
    usage = sampler.sample([service], monotonic=1.0, wall=1.0)[0].usage
    assert usage is not None and usage.rss_bytes > 0 and usage.threads >= 3


def test_memory_inside_a_container_reports_its_cgroup_limit(container: str) -> None:
    """Read from inside the container's cgroup, memory is the 96 MiB limit, not the host's RAM."""
    inside = CgroupReader(Path("/sys/fs/cgroup"), Path(f"/proc/{_pid(container)}/cgroup"))
    limited = inside.memory()
    assert limited is not None and limited.limit == 96 << 20
    host = compute_host(None, PsutilHostReader(cgroups=inside).read(), elapsed=0.0,
                        timestamp=1.0)
    assert host.memory.source == "cgroup" and host.memory.total == 96 << 20
    assert host.memory.host_total > 96 << 20
