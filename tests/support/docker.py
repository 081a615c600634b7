"""Helpers for Docker tests: the local test image, images built by tests, and cleanup of every
container and image an agent of a test created (found by its instance id and its
deployments' names)."""

from __future__ import annotations

import contextlib
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
