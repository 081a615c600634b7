"""A real ``dployr-agent serve`` killed with SIGKILL: its containers never notice (same id,
same start time, no restart), and the service's log stays complete: no line lost, none
doubled, those written while the agent was dead included."""

from __future__ import annotations

import re
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import LiveAgent, wait_until
from tests.support.docker import TICKER, cleanup, docker, inspect, need_docker

KILLS = 3


@pytest.fixture
def agent(live_agent: LiveAgent) -> Iterator[LiveAgent]:
    need_docker()
    live_agent.extra_env.update({"DPLOYR_SERVICES__STARTUP_SECONDS": "0.2",
                                 "DPLOYR_LOGGING__ACCESS_LOG": "false"})
    try:
        yield live_agent
    finally:
        live_agent.stop()
        cleanup(live_agent.state_dir)


def _call(agent: LiveAgent, token: str, method: str, path: str, body: Any = None) -> Any:
    status, _, payload = agent.request(method, path, token=token, body=body)
    assert status < 300, (status, payload)
    return payload


def _numbers(agent: LiveAgent, token: str, sid: str) -> list[int]:
    req = urllib.request.Request(f"{agent.url}/v1/services/{sid}/logs?tail=100000&stream=stdout",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        text = resp.read().decode()
    return [int(n) for n in re.findall(r" stdout line (\d+)$", text, re.M)]


def _docker_last(container_id: str) -> int:
    """The last number the container wrote, as Docker has it (the agent may be dead)."""
    out = docker("logs", "--tail", "1", container_id)
    match = re.search(r"line (\d+)", out)
    return int(match[1]) if match else 0


def test_kill_9_leaves_containers_running_and_logs_complete(agent: LiveAgent,
                                                            tmp_path: Path) -> None:
    """Three SIGKILLs of the agent while a container ticks 20 lines a second: the same
    container (id, start time, pid) runs throughout, and the log has every line once."""
    agent.start()
    token = agent.login()
    dep = _call(agent, token, "POST", "/v1/deployments", {
        "name": "ticker", "source": "image", "image": need_docker(), "run_cmd": TICKER,
        "env": {"TICK": "0.05"}})
    sid = dep["service_id"]
    wait_until(lambda: _call(agent, token, "GET", f"/v1/services/{sid}")["state"] == "running",
               timeout=30, message="the container to run")
    before = _call(agent, token, "GET", f"/v1/services/{sid}")
    cid = before["container_id"]
    started = inspect(cid)["State"]["StartedAt"]

    for _ in range(KILLS):
        wait_until(lambda t=token: len(_numbers(agent, t, sid)) > 10, timeout=30,
                   message="lines in the service log")
        assert agent.kill(signal.SIGKILL) == -signal.SIGKILL
        dead_at = _docker_last(cid)
        wait_until(lambda: _docker_last(cid) >= dead_at + 20, timeout=30,  # noqa: B023
                   message="output written while the agent is dead")
        state = inspect(cid)["State"]
        assert state["Running"] and state["StartedAt"] == started
        agent.start()
        token = agent.login()

    def caught_up() -> bool:
        return len(_numbers(agent, token, sid)) >= _docker_last(cid) - 5

    wait_until(caught_up, timeout=30, message="the log to catch up")
    numbers = _numbers(agent, token, sid)
    assert numbers == list(range(1, len(numbers) + 1)), "lines lost or doubled"
    after = _call(agent, token, "GET", f"/v1/services/{sid}")
    assert after["container_id"] == cid and after["pid"] == before["pid"]
    assert after["state"] == "running" and after["restart_count"] == 0
    assert inspect(cid)["State"]["StartedAt"] == started
