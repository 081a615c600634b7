"""``build_image``: a local directory's Dockerfile (``FROM`` the test image) built through the
engine, its output in the log, failures and the time limit reported as BuildFailed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.config import DockerConfig
from agent.deploy.errors import BuildFailed
from agent.docker.build import build_image
from agent.docker.engine import DockerEngine
from agent.testing import FakeClock
from tests.support.docker import BASE_IMAGE, docker, need_docker

TAG = "dployr-test-build/app"


@pytest.fixture
async def engine() -> AsyncIterator[DockerEngine]:
    need_docker()
    engine = DockerEngine(DockerConfig(), clock=FakeClock())
    try:
        yield engine
    finally:
        await engine.close()
        tags = docker("images", TAG, "--format", "{{.Repository}}:{{.Tag}}").split()
        if tags:
            docker("rmi", "-f", *tags, check=False)


def _context(root: Path, dockerfile: str, **files: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Dockerfile").write_text(dockerfile)
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def _no_build_leftovers() -> bool:
    """No intermediate container of a build is left (they carry no name we know: look for
    containers created from our build's steps by their command)."""
    out = docker("ps", "-a", "--no-trunc", "--format", "{{.Command}}")
    return "dployr-build-step" not in out


async def test_builds_the_dockerfile_and_tags_the_image(engine: DockerEngine,
                                                        tmp_path: Path) -> None:
    """The image is built from the directory, tagged, labelled, and every step's output
    reaches the log; the image runs what was built."""
    context = _context(tmp_path / "app", f"FROM {BASE_IMAGE}\nCOPY page.html /www/index.html\n"
                       "RUN echo dployr-build-step built-ok\n", **{"page.html": "built page\n"})
    lines: list[str] = []

    async def log(line: str) -> None:
        lines.append(line)

    image_id = await build_image(engine, context, f"{TAG}:abc123", log, limit=120)
    assert image_id.startswith("sha256:")
    assert docker("image", "inspect", "-f", "{{.Id}}", f"{TAG}:abc123") == image_id
    assert docker("image", "inspect", "-f", '{{index .Config.Labels "dployr.managed"}}',
                  image_id) == "true"
    text = "\n".join(lines)
    assert "Step 1/4 : FROM" in text and "built-ok" in text
    out = docker("run", "--rm", image_id, "cat", "/www/index.html")
    assert out == "built page"
    assert _no_build_leftovers()


async def test_a_failing_step_raises_build_failed_with_the_reason(engine: DockerEngine,
                                                                  tmp_path: Path) -> None:
    """A RUN that exits 7 fails the build with the engine's reason, logged too; no image."""
    context = _context(tmp_path / "bad", f"FROM {BASE_IMAGE}\n"
                       "RUN echo dployr-build-step failing; exit 7\n")
    lines: list[str] = []

    async def log(line: str) -> None:
        lines.append(line)

    with pytest.raises(BuildFailed) as failed:
        await build_image(engine, context, f"{TAG}:bad", log, limit=120)
    assert "returned a non-zero code: 7" in failed.value.reason
    assert any(line.startswith("error:") for line in lines)
    assert docker("images", "-q", f"{TAG}:bad") == ""
    assert _no_build_leftovers()


async def test_the_time_limit_cuts_the_build_short(engine: DockerEngine,
                                                   tmp_path: Path) -> None:
    """A build longer than its limit fails with BuildFailed, and the engine cancels it: no
    image is made and no step container is left behind."""
    context = _context(tmp_path / "slow", f"FROM {BASE_IMAGE}\n"
                       "RUN echo dployr-build-step sleeping; sleep 30\n")

    async def log(line: str) -> None:
        return None

    with pytest.raises(BuildFailed) as failed:
        await build_image(engine, context, f"{TAG}:slow", log, limit=2)
    assert "longer than 2s" in failed.value.reason
    from tests.support.agent import wait_until

    wait_until(_no_build_leftovers, timeout=30, message="the build's step container to go")
    assert docker("images", "-q", f"{TAG}:slow") == ""


async def test_a_directory_without_dockerfile_is_refused(engine: DockerEngine,
                                                         tmp_path: Path) -> None:
    """No Dockerfile: BuildFailed saying so, before the engine is asked anything."""
    (tmp_path / "empty").mkdir()

    async def log(line: str) -> None:
        return None

    with pytest.raises(BuildFailed, match="no Dockerfile"):
        await build_image(engine, tmp_path / "empty", f"{TAG}:none", log, limit=10)
