"""A real ``dployr-agent serve`` killed with SIGKILL again and again: its apps never notice.

Also: a crash loop under a real agent costs it little CPU.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from tests.support.agent import LiveAgent, wait_until
from tests.support.services import PYTHON, TICKER_APP, alive, kill_apps, session_of, wrappers_of

APPS = 10
KILLS = 10


def _configure(agent: LiveAgent, root: Path) -> None:
    agent.extra_env.update({
        "DPLOYR_SERVICES__ALLOWED_LOCAL_ROOTS": json.dumps([str(root)]),
        "DPLOYR_SERVICES__STARTUP_SECONDS": "0.2",
        "DPLOYR_LOGGING__ACCESS_LOG": "false",
    })


def _call(agent: LiveAgent, token: str, method: str, path: str, body: Any = None) -> Any:
    status, _, payload = agent.request(method, path, token=token, body=body)
    assert status < 300, (status, payload)
    return payload


def _deploy(agent: LiveAgent, token: str, root: Path, name: str, run_cmd: str,
            **extra: Any) -> str:
    app = root / name
    app.mkdir()
    (app / "app.py").write_text(TICKER_APP)
    dep = _call(agent, token, "POST", "/v1/deployments",
                {"name": name, "source": "local", "path": str(app), "run_cmd": run_cmd, **extra})
    return str(dep["service_id"])


def _ticks(agent: LiveAgent, token: str, sid: str) -> list[int]:
    req = urllib.request.Request(f"{agent.url}/v1/services/{sid}/logs?tail=100000&stream=stdout",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        lines = resp.read().decode().splitlines()
    return [int(line.rsplit(" ", 1)[1]) for line in lines]


def test_kill_9_the_agent_ten_times_apps_keep_running(live_agent: LiveAgent,
                                                      tmp_path: Path) -> None:
    """10 apps, 10 SIGKILLs of the agent: same pids, no restart, no duplicate, logs complete
    and followable, and a later exit of an adopted app is noticed within a second."""
    root = tmp_path / "srv"
    root.mkdir()
    _configure(live_agent, root)
    try:
        live_agent.start()
        token = live_agent.login()
        sids = [_deploy(live_agent, token, root, f"app{i}", f"exec {PYTHON} app.py",
                        env={"TICK": "0.05"}) for i in range(APPS)]

        def states() -> dict[str, dict[str, Any]]:
            return {sid: _call(live_agent, token, "GET", f"/v1/services/{sid}") for sid in sids}

        wait_until(lambda: all(s["state"] == "running" for s in states().values()),
                   timeout=30, message="every app to run")
        pids = {sid: s["pid"] for sid, s in states().items()}

        for _ in range(KILLS):
            assert live_agent.kill(signal.SIGKILL) == -signal.SIGKILL
            assert all(alive(pid) for pid in pids.values())
            live_agent.start()
            now = states()
            assert {sid: s["pid"] for sid, s in now.items()} == pids
            assert all(s["state"] == "running" and s["restart_count"] == 0 for s in now.values())
            assert sorted(w.pid for w in wrappers_of(live_agent.state_dir)) == sorted(pids.values())

        # Logs: every tick of every app exactly once, in order, across the ten agent deaths.
        for sid in sids:
            ticks = _ticks(live_agent, token, sid)
            assert ticks == list(range(1, len(ticks) + 1)) and len(ticks) > 20

        # Follow still streams new lines.
        req = urllib.request.Request(f"{live_agent.url}/v1/services/{sids[0]}/logs"
                                     "?follow=true&tail=0",
                                     headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert b"stdout tick" in resp.readline()

        # A later exit of an adopted app is noticed at once (pidfd, not polling).
        leader = pids[sids[1]]
        app = next(p.pid for p in session_of(leader) if p.ppid == leader)
        killed_at = time.time()
        os.kill(app, signal.SIGKILL)

        def last_exit() -> dict[str, Any] | None:
            status = _call(live_agent, token, "GET", f"/v1/services/{sids[1]}/status")
            return status["last_exit"]

        exit = wait_until(last_exit, timeout=10, message="the exit to be recorded")
        assert exit["signal"] == "SIGKILL"
        noticed = datetime.fromisoformat(exit["exited_at"]).timestamp() - killed_at
        assert noticed < 1.0, f"noticed after {noticed:.2f}s"
    finally:
        live_agent.stop()
        kill_apps(live_agent.state_dir)


def test_a_crash_loop_costs_the_agent_little_cpu(live_agent: LiveAgent, tmp_path: Path) -> None:
    """While an app crashes and is restarted 20 times, the agent uses a small share of a CPU."""
    root = tmp_path / "srv"
    root.mkdir()
    _configure(live_agent, root)
    try:
        live_agent.start()
        token = live_agent.login()
        assert live_agent.process is not None
        agent = psutil.Process(live_agent.process.pid)
        before, started = agent.cpu_times(), time.monotonic()
        sid = _deploy(live_agent, token, root, "crashy", "echo boom >&2; exit 3",
                      restart={"initial_delay": 0.05, "multiplier": 1.5, "max_delay": 0.3,
                               "jitter": 0, "max_restarts": 20})
        status = wait_until(
            lambda: (s := _call(live_agent, token, "GET", f"/v1/services/{sid}/status"))
            and s["state"] == "crashed" and s, timeout=60, interval=0.2,
            message="the crash loop to end")
        after, wall = agent.cpu_times(), time.monotonic() - started
        cpu = (after.user + after.system) - (before.user + before.system)
        assert status["restart_count"] == 20 and status["last_exit"]["exit_code"] == 3
        assert cpu / wall < 0.3, f"the agent used {cpu:.2f}s of CPU in {wall:.2f}s"
    finally:
        live_agent.stop()
        kill_apps(live_agent.state_dir)
