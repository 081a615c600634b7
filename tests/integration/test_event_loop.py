"""[server] event_loop: serve runs on uvloop by default, on asyncio when asked, and falls back
to asyncio (saying so) when uvloop cannot be imported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.agent import LiveAgent, wait_until


def _listening(agent: LiveAgent) -> dict[str, object]:
    def found() -> dict[str, object] | None:
        for line in agent.log().splitlines():
            if line.startswith("{") and json.loads(line).get("event") == "agent_listening":
                return dict(json.loads(line))
        return None

    return wait_until(found, timeout=10, message="the agent_listening line")


def _exercise(agent: LiveAgent) -> None:
    """Log in, create and list a project, use the read cache and the metrics endpoint."""
    token = agent.login()
    status, _, _ = agent.request("POST", "/v1/projects", token=token, body={"name": "on-loop"})
    assert status == 201
    for _ in range(3):
        status, headers, listing = agent.request("GET", "/v1/projects", token=token)
        assert status == 200 and [p["name"] for p in listing["data"]] == ["on-loop"]
        assert headers["X-Request-ID"] and headers["X-RateLimit-Remaining"]
    assert agent.request("GET", "/metrics")[0] == 200


@pytest.mark.parametrize(("setting", "expected"), [(None, "uvloop"), ("asyncio", "asyncio"),
                                                   ("uvloop", "uvloop")])
def test_serve_runs_on_the_configured_loop(tmp_path: Path, setting: str | None,
                                           expected: str) -> None:
    """The agent reports the loop it runs on, and the API works on it."""
    env = {"DPLOYR_SERVER__EVENT_LOOP": setting} if setting else {}
    agent = LiveAgent(state_dir=tmp_path / "state", extra_env=env)
    try:
        agent.start()
        assert _listening(agent)["event_loop"] == expected
        _exercise(agent)
    finally:
        agent.stop()
    assert agent.process is not None and agent.process.returncode == 0


def test_without_uvloop_serve_falls_back_to_asyncio(tmp_path: Path) -> None:
    """If uvloop cannot be imported, serve warns once and runs on asyncio's loop."""
    shim = tmp_path / "shim"
    shim.mkdir()
    # A module that makes ``import uvloop`` fail, as on a platform without a wheel.
    (shim / "sitecustomize.py").write_text("import sys\nsys.modules['uvloop'] = None\n")
    agent = LiveAgent(state_dir=tmp_path / "state", extra_env={"PYTHONPATH": str(shim)})
    try:
        agent.start()
        assert _listening(agent)["event_loop"] == "asyncio"
        warnings = [json.loads(line) for line in agent.log().splitlines()
                    if line.startswith("{") and "event_loop_unavailable" in line]
        assert warnings and warnings[0]["level"] == "warning"
        _exercise(agent)
    finally:
        agent.stop()
