"""The agent's death is not the apps' death: restarts of the agent adopt live apps, keep
desired states, learn how apps ended while it was away, and never signal a reused pid."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time

from agent.supervisor import procfs
from agent.supervisor.process import ProcessRuntime
from agent.supervisor.runtime import LogPaths, RunSpec
from tests.support.agent import eventually
from tests.support.services import (
    PYTHON,
    SERVER_APP,
    TICKER_APP,
    Harness,
    alive,
    session_of,
    wrappers_of,
)


def _app_pid(leader: int) -> int:
    """The app process under a wrapper (the wrapper's child)."""
    children = [p.pid for p in session_of(leader) if p.ppid == leader]
    assert len(children) == 1, children
    return children[0]


def _db(svc: Harness) -> sqlite3.Connection:
    return sqlite3.connect(svc.state_dir / "agent.db", isolation_level=None)


async def test_a_restarted_agent_adopts_running_apps_without_restarting_them(
        svc: Harness) -> None:
    """Same pids, no restart, logs go on; a later exit of an adopted app is noticed."""
    a = (await svc.deploy("ticker", f"exec {PYTHON} app.py", files={"app.py": TICKER_APP}))
    b = (await svc.deploy("web", f"exec {PYTHON} server.py", files={"server.py": SERVER_APP}))
    before = {d["service_id"]: (await svc.wait_state(d["service_id"], "running"))["pid"]
              for d in (a, b)}
    await svc.restart_agent()
    for sid, pid in before.items():
        status = await svc.status(sid)
        assert (status["state"], status["pid"], status["restart_count"]) == ("running", pid, 0)
    assert len(wrappers_of(svc.state_dir)) == 2

    ticker = a["service_id"]
    seen = await svc.logs(ticker, "?tail=1")
    await eventually(lambda: _changed(svc, ticker, seen), message="new ticks after adoption")

    victim = _app_pid(before[ticker])
    killed_at = time.time()
    os.kill(victim, signal.SIGKILL)
    status = await svc.wait_state(ticker, "backoff", "starting", "running",
                                  where=lambda s: s["last_exit"] is not None)
    exit = status["last_exit"]
    assert exit["signal"] == "SIGKILL" and exit["reason"] == "exited"
    noticed = _epoch(exit["exited_at"]) - killed_at
    assert noticed < 1.0, f"the exit was noticed after {noticed:.2f}s"


async def _changed(svc: Harness, sid: str, previous: str) -> bool:
    return await svc.logs(sid, "?tail=1") != previous


def _epoch(text: str) -> float:
    from datetime import datetime
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def test_a_service_a_user_stopped_stays_stopped_across_agent_restarts(
        svc: Harness) -> None:
    """desired_state=stopped is persisted: a new agent does not start it."""
    dep = await svc.deploy("quiet", f"exec {PYTHON} app.py", files={"app.py": TICKER_APP})
    sid = dep["service_id"]
    await svc.wait_state(sid, "running")
    await svc.action(sid, "stop", wait=True)
    await svc.restart_agent()
    status = await svc.status(sid)
    assert (status["state"], status["desired_state"], status["pid"]) == ("stopped", "stopped", None)
    assert wrappers_of(svc.state_dir) == []


async def test_an_app_that_died_while_the_agent_was_down_is_restarted_with_its_exit(
        svc: Harness) -> None:
    """The exit status of an app that ended during the agent's absence is recorded and the
    restart policy applies."""
    dep = await svc.deploy("mortal", f"exec {PYTHON} app.py", files={"app.py": TICKER_APP},
                           restart={"initial_delay": 0.1, "jitter": 0})
    sid = dep["service_id"]
    leader = (await svc.wait_state(sid, "running"))["pid"]
    await svc.client.close()
    os.kill(_app_pid(leader), signal.SIGTERM)
    await eventually(lambda: _async(not alive(leader)), message="the wrapper to exit")
    await svc.restart_agent()
    status = await svc.wait_state(sid, "running", where=lambda s: s["pid"] != leader)
    assert status["last_exit"]["signal"] == "SIGTERM"
    assert status["restart_count"] == 1


async def _async(value: object) -> object:
    return value


async def test_an_app_whose_wrapper_was_killed_and_reaped_while_the_agent_was_down_is_not_duplicated(
        svc: Harness) -> None:
    """The wrapper (session leader) of a run is killed and reaped, as init does, while the
    agent is down; its app lives on in the session. The next agent sweeps that app before
    the restart policy starts a new run: one copy of the app, never two."""
    dep = await svc.deploy("orphaned", f"exec {PYTHON} app.py", files={"app.py": TICKER_APP},
                           restart={"initial_delay": 0.1, "jitter": 0})
    sid = dep["service_id"]
    leader = (await svc.wait_state(sid, "running"))["pid"]
    app = _app_pid(leader)
    await svc.client.close()
    os.kill(leader, signal.SIGKILL)
    os.waitpid(leader, 0)  # this test process is the wrapper's parent: reap it, as init would
    assert alive(app)
    await svc.restart_agent()
    status = await svc.wait_state(sid, "running", where=lambda s: s["pid"] != leader)
    await eventually(lambda: _async(not alive(app)), message="the orphaned app to be killed")
    assert [w.pid for w in wrappers_of(svc.state_dir)] == [status["pid"]]
    assert len(session_of(status["pid"])) == 2  # the new wrapper and its app


async def test_a_stored_pid_that_now_belongs_to_another_process_is_never_signalled(
        svc: Harness) -> None:
    """After the app died, its pid is given to an unrelated process: the agent neither adopts
    nor signals it, and starts the service afresh."""
    dep = await svc.deploy("reused", f"exec {PYTHON} app.py", files={"app.py": TICKER_APP})
    sid = dep["service_id"]
    leader = (await svc.wait_state(sid, "running"))["pid"]
    await svc.client.close()
    for proc in session_of(leader):
        os.kill(proc.pid, signal.SIGKILL)
    await eventually(lambda: _async(not alive(leader)), message="the app to die")
    os.waitpid(leader, 0)  # reap it (we are its parent in this in-process test)
    stranger = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    try:
        # Point the stored handle at the stranger's pid, keeping the old start time: exactly
        # what a reused pid looks like.
        with _db(svc) as conn:
            (raw,) = conn.execute("SELECT handle FROM services WHERE id = ?", (sid,)).fetchone()
            handle = json.loads(raw)
            assert procfs.read_stat(stranger.pid).start_ticks != handle["start_ticks"]
            handle["pid"] = stranger.pid
            conn.execute("UPDATE services SET handle = ? WHERE id = ?",
                         (json.dumps(handle), sid))
        await svc.restart_agent()
        status = await svc.wait_state(sid, "running", where=lambda s: s["pid"] != stranger.pid)
        await svc.action(sid, "stop", wait=True)
        await svc.request("DELETE", f"/v1/deployments/{dep['id']}", expect=204)
        assert stranger.poll() is None, "the stranger was signalled"
        assert status["last_exit"]["reason"] == "exited"
    finally:
        stranger.kill()
        stranger.wait()


async def test_after_a_reboot_services_meant_to_run_are_started_again(svc: Harness) -> None:
    """A new boot id means every old pid is meaningless: running services start fresh,
    crashed ones get a new chance, stopped ones stay stopped."""
    run = await svc.deploy("runner", f"exec {PYTHON} app.py", files={"app.py": TICKER_APP})
    crash = await svc.deploy("crasher", "exit 1", restart={"max_restarts": 1,
                                                           "initial_delay": 0.05})
    stop = await svc.deploy("stopper", f"exec {PYTHON} app.py", files={"app.py": TICKER_APP})
    old = (await svc.wait_state(run["service_id"], "running"))["pid"]
    await svc.wait_state(crash["service_id"], "crashed")
    await svc.wait_state(stop["service_id"], "running")
    await svc.action(stop["service_id"], "stop", wait=True)
    await svc.client.close()
    for proc in session_of(old):
        os.kill(proc.pid, signal.SIGKILL)
    with _db(svc) as conn:
        conn.execute("UPDATE services SET boot_id = 'a-previous-boot',"
                     " handle = json_set(handle, '$.boot_id', 'a-previous-boot')")
    await svc.restart_agent()
    status = await svc.wait_state(run["service_id"], "running", where=lambda s: s["pid"] != old)
    assert status["last_exit"]["reason"] == "lost" and status["restart_count"] == 0
    assert (await svc.status(crash["service_id"]))["state"] in ("starting", "backoff", "crashed")
    assert (await svc.status(stop["service_id"]))["state"] == "stopped"
    assert len(wrappers_of(svc.state_dir)) <= 2


async def test_a_stray_duplicate_run_is_killed_on_agent_start(svc: Harness) -> None:
    """One run per service: a second run of the same service found on the host is killed,
    the recorded one is kept."""
    dep = await svc.deploy("single", f"exec {PYTHON} app.py", files={"app.py": TICKER_APP})
    sid = dep["service_id"]
    leader = (await svc.wait_state(sid, "running"))["pid"]
    await svc.client.close()
    app_dir = svc.state_dir / "apps" / "single"
    runtime = ProcessRuntime()
    stray = await runtime.start(RunSpec(
        service_id=sid, name="single", command="sleep 1000", cwd=app_dir, env={},
        logs=LogPaths(app_dir / "run/stdout.raw", app_dir / "run/stderr.raw"),
        run_dir=app_dir / "run"))
    runtime.close()
    assert stray.pid is not None and alive(stray.pid)
    await svc.restart_agent()
    assert (await svc.status(sid))["pid"] == leader
    await eventually(lambda: _async(not alive(stray.pid or 0)), message="the stray to die")
    assert [w.pid for w in wrappers_of(svc.state_dir)] == [leader]


async def test_a_restart_cut_short_after_its_run_ended_is_started_again(svc: Harness) -> None:
    """An agent killed in the middle of a restart, after the old run ended and before the new
    one started (state stopping, no run), starts the service again on its next start instead
    of leaving it stopping forever; a stop cut short the same way ends stopped."""
    started = await svc.deploy("again", f"exec {PYTHON} app.py", files={"app.py": TICKER_APP})
    stopped = await svc.deploy("halted", f"exec {PYTHON} app.py", files={"app.py": TICKER_APP})
    for dep in (started, stopped):
        await svc.wait_state(dep["service_id"], "running")
    await svc.client.close()
    for leader in [w.pid for w in wrappers_of(svc.state_dir)]:
        for proc in session_of(leader):  # the runs end whole, as the agent sweeps them
            os.kill(proc.pid, signal.SIGKILL)
    await eventually(lambda: _async(not wrappers_of(svc.state_dir)), message="the runs to end")
    with _db(svc) as conn:  # what a kill -9 between the two steps leaves behind
        conn.execute("UPDATE services SET state = 'stopping', handle = NULL, desired_state = ?"
                     " WHERE id = ?", ("running", started["service_id"]))
        conn.execute("UPDATE services SET state = 'stopping', handle = NULL, desired_state = ?"
                     " WHERE id = ?", ("stopped", stopped["service_id"]))
    await svc.restart_agent()
    await svc.wait_state(started["service_id"], "running")
    status = await svc.wait_state(stopped["service_id"], "stopped")
    assert status["desired_state"] == "stopped"
    assert len(wrappers_of(svc.state_dir)) == 1
