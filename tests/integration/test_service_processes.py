"""Real apps under the supervisor: lifecycle, no orphans, SIGKILL after the grace, crash loops,
health checks. Each test writes its small app and runs it through the API."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
import urllib.request
from pathlib import Path

from agent.keys import DB_KEY
from tests.support.agent import eventually
from tests.support.services import PYTHON, SERVER_APP, Harness, alive, session_of, wrappers_of


def http_get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
        return str(resp.read().decode())


async def test_a_local_app_starts_stops_and_restarts_through_the_api(svc: Harness) -> None:
    """The app answers on its PORT; stop ends it; start and restart give new pids; repeated
    start and stop are no-ops."""
    dep = await svc.deploy("web", f"{PYTHON} server.py", files={"server.py": SERVER_APP})
    sid = dep["service_id"]
    status = await svc.wait_state(sid, "running")
    assert status["desired_state"] == "running" and status["pid"]
    assert await asyncio.to_thread(http_get, status["listen_port"]) == "hello"
    assert status["memory_bytes"] > 0 and status["processes"] >= 2
    first = status["pid"]

    again = await svc.action(sid, "start")
    assert again["pid"] == first and again["state"] == "running"

    stopped = await svc.action(sid, "stop", wait=True)
    assert stopped["state"] == "stopped" and stopped["desired_state"] == "stopped"
    assert stopped["pid"] is None and not alive(first)
    assert stopped["last_exit"]["reason"] == "stopped"
    assert (await svc.action(sid, "stop", wait=True))["state"] == "stopped"

    started = await svc.action(sid, "start", wait=True)
    assert started["state"] == "running" and started["pid"] != first
    restarted = await svc.action(sid, "restart", wait=True)
    assert restarted["state"] == "running" and restarted["pid"] != started["pid"]
    assert not alive(started["pid"])
    assert await asyncio.to_thread(http_get, restarted["listen_port"]) == "hello"


async def test_stop_kills_the_whole_process_group_no_orphans(svc: Harness) -> None:
    """`sleep 1000 & exec server`: after stop neither the server nor the sleep survives."""
    cmd = f"sleep 1000 & echo $! > sleep.pid; exec {PYTHON} server.py"
    dep = await svc.deploy("orphans", cmd, files={"server.py": SERVER_APP})
    sid = dep["service_id"]
    status = await svc.wait_state(sid, "running")
    leader = status["pid"]
    sleep_pid = int((svc.apps_root / "orphans" / "sleep.pid").read_text())
    assert alive(sleep_pid) and len(session_of(leader)) >= 3
    await svc.action(sid, "stop", wait=True)
    assert not alive(sleep_pid) and not alive(leader)
    assert session_of(leader) == []


async def test_an_app_ignoring_the_stop_signal_is_killed_after_the_grace(svc: Harness) -> None:
    """stop_signal then stop_timeout seconds, then SIGKILL to the group."""
    app = ("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
           "print('up', flush=True)\ntime.sleep(1000)\n")
    dep = await svc.deploy("stubborn", f"exec {PYTHON} app.py", files={"app.py": app},
                           stop_timeout=0.5)
    sid = dep["service_id"]
    status = await svc.wait_state(sid, "running")
    stopped = await svc.action(sid, "stop", wait=True)
    assert stopped["state"] == "stopped" and not alive(status["pid"])
    assert stopped["last_exit"]["signal"] == "SIGKILL"


async def test_a_crash_loop_backs_off_with_growing_delays_then_crashes(svc: Harness) -> None:
    """An app that exits at once is restarted max_restarts times with doubling delays, then
    is crashed with its exit code and the tail of its stderr."""
    cmd = "date +%s.%N >> starts.log; echo 'fatal: no config' >&2; exit 3"
    policy = {"initial_delay": 0.2, "multiplier": 2, "max_delay": 5, "jitter": 0,
              "max_restarts": 4}
    dep = await svc.deploy("crashy", cmd, restart=policy)
    sid = dep["service_id"]
    status = await svc.wait_state(sid, "crashed", timeout=30)
    exit = status["last_exit"]
    assert exit["exit_code"] == 3 and exit["signal"] is None, exit
    assert status["last_exit"]["stderr_tail"][-1] == "fatal: no config"
    assert status["restart_count"] == 4 and status["pid"] is None

    rows = svc.client.app[DB_KEY].query(
        "SELECT data FROM events WHERE type = 'service.crashed' ORDER BY seq")
    crashes = [json.loads(row["data"]) for row in rows]
    assert [c.get("restart_in") for c in crashes] == [0.2, 0.4, 0.8, 1.6, None]
    assert [c["restarting"] for c in crashes] == [True, True, True, True, False]
    assert crashes[-1]["exit_code"] == 3 and crashes[-1]["stderr_tail"][-1] == "fatal: no config"

    starts = [float(t) for t in (svc.apps_root / "crashy" / "starts.log").read_text().split()]
    assert len(starts) == 5
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(gap >= delay for gap, delay in zip(gaps, [0.2, 0.4, 0.8, 1.6], strict=True))


async def test_http_health_check_gates_running_and_tracks_unhealthy(svc: Harness) -> None:
    """running only after a passing check; failures make it unhealthy; passing again
    recovers it (restart disabled here)."""
    check = {"type": "http", "path": "/", "interval": 0.1, "timeout": 1, "threshold": 2,
             "restart": False}
    dep = await svc.deploy("checked", f"sleep 0.5; exec {PYTHON} server.py",
                           files={"server.py": SERVER_APP}, health_check=check)
    sid = dep["service_id"]
    early = await svc.status(sid)
    assert early["state"] == "starting" and early["health"] == "unknown"
    status = await svc.wait_state(sid, "running")
    assert status["health"] == "passing"
    flag: Path = svc.apps_root / "checked" / "unhealthy"
    flag.touch()
    status = await svc.wait_state(sid, "unhealthy")
    assert status["health_detail"]["last_error"] == "HTTP 500"
    assert status["health_detail"]["consecutive_failures"] >= 2
    flag.unlink()
    status = await svc.wait_state(sid, "running", where=lambda s: s["health"] == "passing")
    assert status["restart_count"] == 0


async def test_an_unhealthy_app_is_restarted_when_configured(svc: Harness) -> None:
    """With restart on, an unhealthy run is replaced by a new one (reason unhealthy)."""
    check = {"type": "tcp", "interval": 0.1, "timeout": 1, "threshold": 2, "restart": True}
    # Listens, then closes its socket after a moment but keeps running: TCP checks fail.
    app = ("import os, socket, time\ns = socket.socket()\n"
           "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
           "s.bind(('127.0.0.1', int(os.environ['PORT'])))\ns.listen()\n"
           "time.sleep(0.8)\ns.close()\ntime.sleep(1000)\n")
    dep = await svc.deploy("flaky", f"exec {PYTHON} app.py", files={"app.py": app},
                           health_check=check, restart={"initial_delay": 0.1, "jitter": 0})
    sid = dep["service_id"]
    first = (await svc.wait_state(sid, "running"))["pid"]
    status = await svc.wait_state(sid, "starting", "running", "backoff",
                                  where=lambda s: s["restart_count"] >= 1)
    assert status["last_exit"]["reason"] == "unhealthy"
    await eventually(lambda: _not_alive(first), message="the unhealthy run to be gone")


async def _not_alive(pid: int) -> bool:
    return not alive(pid)


async def test_wait_true_returns_the_outcome_of_a_start(svc: Harness) -> None:
    """start?wait=true answers once running (or failed); without wait it answers at once."""
    dep = await svc.deploy("slow", f"sleep 0.3; exec {PYTHON} server.py",
                           files={"server.py": SERVER_APP},
                           health_check={"type": "tcp", "interval": 0.1})
    sid = dep["service_id"]
    await svc.wait_state(sid, "running")
    await svc.action(sid, "stop", wait=True)
    quick = await svc.action(sid, "start")
    assert quick["state"] == "starting"
    await svc.action(sid, "stop", wait=True)
    bounded = await svc.request("POST", f"/v1/services/{sid}/start?wait=true&timeout=0.05",
                                expect=200)
    assert bounded["state"] == "starting"  # the bound passed first: the answer says so
    await svc.action(sid, "stop", wait=True)
    waited = await svc.action(sid, "start", wait=True)
    assert waited["state"] == "running" and waited["health"] == "passing"


async def test_build_cmd_runs_once_before_the_first_start_and_is_logged(svc: Harness) -> None:
    """The build's output is in the service log; the app sees what it built."""
    dep = await svc.deploy("built", f"cat built.txt; exec {PYTHON} server.py",
                           files={"server.py": SERVER_APP},
                           build_cmd="echo compiling; echo artifact > built.txt")
    sid = dep["service_id"]
    await svc.wait_state(sid, "running")
    assert (await svc.request("GET", f"/v1/deployments/{dep['id']}"))["status"] == "succeeded"
    logs = await svc.logs(sid)
    assert "stdout compiling" in logs and "stdout artifact" in logs
    await svc.action(sid, "restart", wait=True)
    assert (await svc.logs(sid, "?tail=1000")).count("stdout compiling") == 1


async def test_a_failing_build_fails_the_deployment_with_its_stderr(svc: Harness) -> None:
    """build_cmd exiting non-zero: deployment failed, service failed, stderr tail shown."""
    dep = await svc.deploy("broken", "true", build_cmd="echo 'missing dependency' >&2; exit 2")
    sid = dep["service_id"]
    status = await svc.wait_state(sid, "failed")
    assert status["last_exit"]["reason"] == "build_failed"
    assert status["last_exit"]["exit_code"] == 2
    assert status["last_exit"]["stderr_tail"] == ["missing dependency"]
    deployment = await svc.request("GET", f"/v1/deployments/{dep['id']}")
    assert deployment["status"] == "failed"
    assert deployment["status_detail"] == {"reason": "build exit code 2"}


async def test_status_reports_cpu_and_memory_of_the_whole_tree(svc: Harness) -> None:
    """A busy child process counts in the service's CPU and memory."""
    cmd = f"{PYTHON} -c 'while True: pass' & exec {PYTHON} server.py"
    dep = await svc.deploy("busy", cmd, files={"server.py": SERVER_APP})
    sid = dep["service_id"]
    await svc.wait_state(sid, "running")
    deadline = time.monotonic() + 10
    status = await svc.status(sid)
    while status["cpu_seconds"] < 0.2 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        status = await svc.status(sid)
    assert status["processes"] >= 3 and status["cpu_seconds"] >= 0.2
    assert status["cpu_percent"] > 10 and status["memory_bytes"] > 1_000_000
    await svc.action(sid, "stop", wait=True)
    assert all(not alive(p.pid) for p in session_of(status["pid"]))
    assert os.path.exists(svc.apps_root / "busy")


async def test_a_stop_right_after_a_start_is_never_lost(svc: Harness) -> None:
    """Stopping while the app is still being spawned ends it with the stop signal, not with
    SIGKILL after the grace period."""
    dep = await svc.deploy("quick", "exec sleep 1000", stop_timeout=5)
    sid = dep["service_id"]
    await svc.action(sid, "stop", wait=True)
    for _ in range(15):
        await svc.action(sid, "start")
        stopped = await svc.action(sid, "stop", wait=True)
        assert stopped["state"] == "stopped"
        assert stopped["last_exit"]["signal"] == "SIGTERM", stopped["last_exit"]
    assert wrappers_of(svc.state_dir) == []


async def test_a_stop_during_a_long_build_cuts_the_build_short(svc: Harness) -> None:
    """stop?wait=true does not wait for the build to finish: the build is stopped."""
    dep = await svc.deploy("slowbuild", "exec sleep 1000", build_cmd="echo building; sleep 60")
    sid = dep["service_id"]
    await eventually(lambda: _logs_have(svc, sid, "stdout building"), message="the build")
    stopped = await svc.action(sid, "stop", wait=True)
    assert stopped["state"] == "stopped" and stopped["last_exit"]["reason"] == "build_stopped"
    deployment = await svc.request("GET", f"/v1/deployments/{dep['id']}")
    assert deployment["status"] == "failed"
    assert deployment["status_detail"] == {"reason": "build stopped"}
    assert wrappers_of(svc.state_dir) == []


async def _logs_have(svc: Harness, sid: str, text: str) -> bool:
    return text in await svc.logs(sid)
