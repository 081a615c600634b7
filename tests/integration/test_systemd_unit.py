"""The systemd unit: what the agent relies on is there, it verifies, and it is well sandboxed."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "dployr-agent.service"
MAX_EXPOSURE = 5.0


def _directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.fixture
def testable_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointed at this checkout's installed command (/opt is absent)."""
    require("systemd", shutil.which("systemd-analyze") is not None, "systemd-analyze not installed")
    command = Path(sys.executable).parent / "dployr-agent"
    assert command.exists(), command
    text = re.sub(r"^ExecStart=\S+", f"ExecStart={command}", UNIT.read_text(), flags=re.MULTILINE)
    path = tmp_path / "dployr-agent.service"
    path.write_text(text)
    return path


def test_unit_has_what_the_agent_relies_on() -> None:
    """Type=notify with a watchdog, apps outlive restarts (KillMode=process), restarts on failure."""
    d = _directives()
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert int(d["WatchdogSec"][0]) > 0
    assert d["KillMode"] == ["process"]
    assert d["Restart"] == ["on-failure"]
    assert d["StateDirectory"] == ["dployr-agent"] and d["StateDirectoryMode"] == ["0700"]
    assert d["UMask"] == ["0077"]
    assert "serve --config /etc/dployr-agent/config.toml" in d["ExecStart"][0]
    # The agent's own shutdown must fit in systemd's stop timeout.
    assert int(d["TimeoutStopSec"][0]) > 10


def test_systemd_analyze_verify_passes(testable_unit: Path) -> None:
    """``systemd-analyze verify`` reports nothing about the unit."""
    result = subprocess.run(["systemd-analyze", "verify", str(testable_unit)], capture_output=True,
                            text=True, timeout=60, check=False)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if "dployr-agent" in line]
    assert result.returncode == 0 and problems == [], result.stdout + result.stderr


def test_security_exposure_is_below_5(testable_unit: Path) -> None:
    """``systemd-analyze security --offline=yes`` rates the unit's exposure below 5."""
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                             str(testable_unit)], capture_output=True, text=True, timeout=60, check=False)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    print(f"systemd-analyze security exposure: {match[1]}")
    assert float(match[1]) < MAX_EXPOSURE
