"""Runtime detection with real subprocesses: versions, missing binaries, failures, timeouts."""

from __future__ import annotations

import sys
from pathlib import Path

from agent.instance.runtimes import detect_runtimes, probe


async def test_python_version_is_read_from_the_real_binary() -> None:
    """Probing the running interpreter reports it available with its version."""
    info = await probe("python", (sys.executable, "--version"))
    expected = ".".join(str(n) for n in sys.version_info[:3])
    assert info.available and info.version == expected and info.detail is None


async def test_missing_binary_is_unavailable_with_a_reason() -> None:
    """A runtime not on PATH is reported unavailable, saying so."""
    info = await probe("zig", ("dployr-no-such-binary", "version"))
    assert not info.available and info.version is None
    assert "not installed" in (info.detail or "")


async def test_failing_and_hanging_probes_are_unavailable(tmp_path: Path) -> None:
    """A probe that exits non-zero, or does not answer in time, is unavailable."""
    failing = await probe("go", ("sh", "-c", "exit 3"))
    assert not failing.available and "status 3" in (failing.detail or "")
    hanging = await probe("node", ("sleep", "30"), limit=0.2)
    assert not hanging.available and "did not answer" in (hanging.detail or "")


async def test_default_detection_reports_every_runtime() -> None:
    """The default detector reports node, python, go and docker, each with a verdict."""
    found = {r.name: r for r in await detect_runtimes()}
    assert set(found) == {"node", "python", "go", "docker"}
    assert found["python"].available and found["python"].version
    for info in found.values():
        assert info.available == (info.detail is None or info.detail == "version not recognised")
