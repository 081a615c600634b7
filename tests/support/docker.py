"""Helpers for Docker tests: the local test image, images built by tests, and cleanup of every
container and image an agent of a test created (found by its instance id and its
deployments' names)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sqlite3
import subprocess
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from tests.conftest import require

BASE_IMAGE = "dployr-test/busybox:latest"
BUILD_SCRIPT = Path(__file__).with_name("build-test-image.sh")

#: A shell app printing "line N" every TICK seconds (default 0.05) on stdout, forever.
TICKER = 'i=0; while :; do i=$((i+1)); echo "line $i"; sleep ${TICK:-0.05}; done'


def docker(*args: str, check: bool = True, env: dict[str, str] | None = None,
           input: bytes | None = None) -> str:
    """Run the docker CLI; return its stdout."""
    result = subprocess.run(["docker", *args], capture_output=True, check=False, env=env,
                            input=input)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {result.stderr.decode(errors='replace')}")
    return result.stdout.decode(errors="replace").strip()


def docker_available() -> tuple[bool, str]:
    if shutil.which("docker") is None:
        return False, "the docker CLI is not installed"
    probe = subprocess.run(["docker", "info"], capture_output=True, check=False)
    return probe.returncode == 0, "the Docker engine does not answer (docker info failed)"


def need_docker() -> str:
    """Skip (or fail under DPLOYR_TEST_REQUIRE=docker) without an engine; make sure the test
    image exists; return its name."""
    available, why = docker_available()
    require("docker", available, why)
    if subprocess.run(["docker", "image", "inspect", BASE_IMAGE], capture_output=True,
                      check=False).returncode != 0:
        subprocess.run(["bash", str(BUILD_SCRIPT), BASE_IMAGE], check=True, capture_output=True)
    return BASE_IMAGE


def build_test_image(tag: str, dockerfile: str, files: dict[str, str] | None = None) -> str:
    """Build ``tag`` from a Dockerfile (``FROM`` the test image) with the CLI; return its id."""
    with tempfile.TemporaryDirectory() as tmp:
        context = Path(tmp)
        (context / "Dockerfile").write_text(textwrap.dedent(dockerfile))
        for name, text in (files or {}).items():
            (context / name).write_text(text)
        docker("build", "-q", "-t", tag, str(context))
    return docker("image", "inspect", "-f", "{{.Id}}", tag)


def web_image(tag: str, text: str) -> str:
    """An image whose httpd (on $PORT, default 8080) serves ``text`` at /."""
    return build_test_image(tag, f"""
        FROM {BASE_IMAGE}
        RUN echo '{text}' > /www/index.html
        CMD ["/bin/sh", "-c", "exec httpd -f -p ${{PORT:-8080}} -h /www"]
    """)


def instance_id(state_dir: Path) -> str | None:
    """The instance id an agent recorded in its state dir (None before the first start)."""
    db = state_dir / "agent.db"
    if not db.exists():
        return None
    with contextlib.closing(sqlite3.connect(db)) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = 'instance_id'").fetchone()
    return str(row[0]) if row else None


def deployment_names(state_dir: Path) -> list[str]:
    db = state_dir / "agent.db"
    if not db.exists():
        return []
    with contextlib.closing(sqlite3.connect(db)) as conn:
        try:
            return [r[0] for r in conn.execute("SELECT name FROM deployments")]
        except sqlite3.Error:
            return []


def containers_of(instance: str, *, env: dict[str, str] | None = None) -> list[str]:
    out = docker("ps", "-aq", "--no-trunc", "--filter", f"label=dployr.instance={instance}",
                 env=env, check=False)
    return out.split()


def inspect(container_id: str, *, env: dict[str, str] | None = None) -> dict[str, Any]:
    import json

    data: list[dict[str, Any]] = json.loads(docker("inspect", container_id, env=env))
    return data[0]


def cleanup(state_dir: Path, *, env: dict[str, str] | None = None,
            names: list[str] | None = None) -> None:
    """Remove every container of the agent of ``state_dir`` and the release tags
    (``dployr/<name>:*``) of its deployments (and of ``names``)."""
    instance = instance_id(state_dir)
    if instance:
        ids = containers_of(instance, env=env)
        if ids:
            docker("rm", "-f", "-v", *ids, env=env, check=False)
    for name in {*deployment_names(state_dir), *(names or [])}:
        tags = docker("images", f"dployr/{name}", "--format", "{{.Repository}}:{{.Tag}}",
                      env=env, check=False).split()
        if tags:
            docker("rmi", *tags, env=env, check=False)


class Dockerd:
    """A dedicated Docker engine for one test: its own socket, data, exec root, pid file,
    bridge and cgroup parent, so that stopping it touches nothing the other tests use.
    ``--live-restore``: its containers keep running while it is stopped."""

    def __init__(self) -> None:
        # Short paths: containerd's sockets live under the exec root (108-byte limit).
        self.root = Path(tempfile.mkdtemp(prefix="dd-", dir="/tmp"))
        self.socket = self.root / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.bridge = f"dpl{secrets.token_hex(3)}"
        self.process: subprocess.Popen[bytes] | None = None
        self.env = {**os.environ, "DOCKER_HOST": self.host}
        subnet = 200 + secrets.randbelow(50)
        self._address = f"10.213.{subnet}.1/24"

    def setup(self) -> None:
        subprocess.run(["ip", "link", "add", "name", self.bridge, "type", "bridge"], check=True,
                       capture_output=True)
        subprocess.run(["ip", "addr", "add", self._address, "dev", self.bridge], check=True,
                       capture_output=True)
        subprocess.run(["ip", "link", "set", self.bridge, "up"], check=True, capture_output=True)
        self.start()
        image = subprocess.run(["docker", "save", BASE_IMAGE], capture_output=True, check=True)
        docker("load", "-q", env=self.env, input=image.stdout)

    def start(self) -> None:
        with (self.root / "dockerd.log").open("ab") as log:
            self.process = subprocess.Popen(
                ["dockerd", "--host", self.host, "--data-root", str(self.root / "data"),
                 "--exec-root", str(self.root / "exec"), "--pidfile", str(self.root / "pid"),
                 "--bridge", self.bridge, "--iptables=false", "--ip-masq=false",
                 "--cgroup-parent", f"/{self.bridge}", "--live-restore"],
                stdout=log, stderr=log)
        from tests.support.agent import wait_until

        wait_until(self.answers, timeout=60, interval=0.1, message="the dedicated dockerd")

    def answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"dockerd exited:\n{self.log()}")
        return subprocess.run(["docker", "info"], env=self.env, capture_output=True,
                              check=False).returncode == 0

    def log(self) -> str:
        path = self.root / "dockerd.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM and wait: the engine is gone, its containers keep running."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)
        self.process = None

    def teardown(self) -> None:
        """Remove every container, stop the engine, delete its files and bridge."""
        with contextlib.suppress(Exception):
            if self.process is None:
                self.start()
            ids = docker("ps", "-aq", env=self.env, check=False).split()
            if ids:
                docker("rm", "-f", "-v", *ids, env=self.env, check=False)
        with contextlib.suppress(Exception):
            self.stop()
        for mount in (self.root / "exec", self.root / "data"):
            subprocess.run(["umount", "-R", str(mount)], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def can_run_dockerd() -> tuple[bool, str]:
    """A dedicated engine needs root, dockerd and ip."""
    if os.geteuid() != 0:
        return False, "a dedicated dockerd needs root"
    for binary in ("dockerd", "ip"):
        if shutil.which(binary) is None:
            return False, f"{binary} is not installed"
    return True, ""
