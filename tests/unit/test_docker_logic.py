"""Pure parts of the Docker runtime: references, limits, ports, exit statuses, stats."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from agent.docker.containers import container_port, exit_status
from agent.docker.images import check_cpus, parse_memory, release_tag, validate_reference
from agent.docker.stats import Reading, reading_from_stats
from agent.errors import InvalidRequest
from agent.supervisor.runtime import ExitStatus, LogPaths, RunSpec


@pytest.mark.parametrize("ref", [
    "nginx", "nginx:1.25", "library/nginx:latest", "registry.example.com:5000/team/app:2.1",
    "localhost/app", "ghcr.io/o-r/x_y.z:v1.2-rc.1",
    "app@sha256:" + "a" * 64, "app:1@sha256:" + "0" * 64, "sha256:" + "f" * 64,
])
def test_valid_references(ref: str) -> None:
    """Docker's reference grammar, and bare image ids, are accepted as they are."""
    assert validate_reference(ref) == ref


@pytest.mark.parametrize("ref", [
    "", "Nginx", "nginx:", ":tag", "nginx::1", "a b", "nginx:1.25 --rm", "-app", "app/",
    "app:" + "x" * 129, "app@sha256:xyz", "app:tag:extra",
])
def test_invalid_references(ref: str) -> None:
    """Anything else is a 400 naming the field."""
    with pytest.raises(InvalidRequest) as error:
        validate_reference(ref)
    assert error.value.details["field"] == "image"


@pytest.mark.parametrize(("text", "size"), [
    ("256m", 256 << 20), ("1.5g", 3 << 29), ("64MiB", 64 << 20), ("512MB", 512 << 20),
    ("6m", 6 << 20), ("268435456", 256 << 20), (7 << 20, 7 << 20), ("1t", 1 << 40),
])
def test_memory_sizes(text: str | int, size: int) -> None:
    """Sizes in Docker's units (binary), or bytes."""
    assert parse_memory(text) == size


@pytest.mark.parametrize("text", ["lots", "5m", "-1m", "2t", "1.5", 1024, "10 gigs"])
def test_bad_memory_sizes(text: str | int) -> None:
    with pytest.raises(InvalidRequest) as error:
        parse_memory(text)
    assert error.value.details["field"] == "memory"


def test_cpus_bounded_by_this_host() -> None:
    """Between 0.01 and the host's CPU count, as Docker enforces."""
    assert check_cpus(0.5) == 0.5
    assert check_cpus(float(os.cpu_count() or 1)) == float(os.cpu_count() or 1)
    for bad in (0.0, 0.001, (os.cpu_count() or 1) + 0.5, -1.0):
        with pytest.raises(InvalidRequest):
            check_cpus(bad)


def test_release_tag() -> None:
    assert release_tag("web", "rel_01abc") == ("dployr/web", "rel_01abc")


def _spec(port: int | None = None) -> RunSpec:
    return RunSpec(service_id="s", name="n", command=None, cwd=None, env={},
                   logs=LogPaths(Path("o"), Path("e")), run_dir=Path("r"), port=port)


def test_container_port_choice() -> None:
    """The deployment's port, else the image's single exposed TCP port, else the host's."""
    one = {"Config": {"ExposedPorts": {"8080/tcp": {}}}}
    two = {"Config": {"ExposedPorts": {"80/tcp": {}, "443/tcp": {}}}}
    udp = {"Config": {"ExposedPorts": {"53/udp": {}}}}
    assert container_port(_spec(3000), one, 41000) == 3000
    assert container_port(_spec(), one, 41000) == 8080
    assert container_port(_spec(), two, 41000) == 41000
    assert container_port(_spec(), udp, 41000) == 41000
    assert container_port(_spec(), {"Config": {"ExposedPorts": None}}, 41000) == 41000


def test_exit_status_from_inspect() -> None:
    """Exit codes as they are; 128+N as signal N; an OOM kill as SIGKILL; -1 as unknown."""
    assert exit_status({"ExitCode": 3}) == ExitStatus(code=3)
    assert exit_status({"ExitCode": 143}) == ExitStatus(signal=int(signal.SIGTERM))
    assert exit_status({"ExitCode": 137, "OOMKilled": True}) == ExitStatus(
        signal=int(signal.SIGKILL))
    assert exit_status({"ExitCode": -1}) == ExitStatus()
    assert not exit_status({}).known


def test_reading_from_docker_stats() -> None:
    """Memory is usage minus the inactive file cache (v1 and v2 names); processes come from
    the cgroup when known, else Docker's task count."""
    v1 = {"cpu_stats": {"cpu_usage": {"total_usage": 2_500_000_000}},
          "memory_stats": {"usage": 10_000, "stats": {"total_inactive_file": 4_000}},
          "pids_stats": {"current": 3}}
    reading = reading_from_stats(v1, 7.0, None)
    assert reading == Reading(at=7.0, cpu_ns=2_500_000_000, memory=6_000, tasks=3, processes=3,
                              open_files=0)
    v2 = {"cpu_stats": {"cpu_usage": {"total_usage": 1}},
          "memory_stats": {"usage": 10_000, "stats": {"inactive_file": 1_000}}}
    assert reading_from_stats(v2, 1.0, [os.getpid()]).memory == 9_000
    assert reading_from_stats(v2, 1.0, [os.getpid()]).processes == 1
    assert reading_from_stats(v2, 1.0, [os.getpid()]).open_files > 0
    assert reading_from_stats({}, 1.0, None).memory == 0
