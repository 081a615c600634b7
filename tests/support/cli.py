"""Run the ``dployr-agent`` command line as a real subprocess against a state dir."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.agent import FAST_HASH_ENV


def run_cli(state_dir: Path, *args: str, stdin: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``dployr-agent ARGS`` with the state in ``state_dir``; stdin is not a terminal."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DPLOYR_")}
    full_env.update(FAST_HASH_ENV)
    full_env["DPLOYR_STATE__DIR"] = str(state_dir)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "agent", *args], input=stdin or "",
                          capture_output=True, text=True, env=full_env, timeout=60, check=False)


def create_token(state_dir: Path, name: str, role: str = "admin") -> tuple[str, str]:
    """A machine token made with ``dployr-agent token create``: (id, token)."""
    result = run_cli(state_dir, "token", "create", name, "--role", role)
    assert result.returncode == 0, result.stderr
    return result.stderr.split()[1], result.stdout.strip()
