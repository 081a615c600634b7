"""The state machine of a service, driven through every transition with a FakeRuntime.

The store, the log capture and the health probes are real; only the runtime is fake, so exits,
stop escalation and adoption happen exactly when the test says.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from agent.supervisor.health import HealthCheck
from agent.supervisor.policy import RestartPolicy
from agent.supervisor.runtime import ExitStatus
from agent.testing import FakeRuntime
from tests.support.agent import eventually, free_port
from tests.support.units import World, open_world


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with open_world(tmp_path, FakeRuntime()) as w:
        yield w


async def test_start_runs_then_stop_and_both_are_idempotent(world: World) -> None:
    """stopped -> starting -> running -> stopping -> stopped; repeated commands change nothing."""
    with structlog.testing.capture_logs() as logs:
        sid = await world.create()
        await world.until(sid, "running")
        pid = world.pid(sid)
        await world.sup.start(sid)
        assert world.pid(sid) == pid and len(world.runtime.started) == 1
        await world.sup.stop(sid, wait=5)
        assert world.state(sid) == "stopped"
        await world.sup.stop(sid, wait=5)
    assert [(e["old"], e["new"]) for e in logs if e.get("event") == "service_state_changed"] == [
        ("stopped", "starting"), ("starting", "running"), ("running", "stopping"),
        ("stopping", "stopped")]
    assert world.drain_events() == ["deployment.created", "deployment.succeeded",
                                    "service.started", "service.stopped"]
    assert world.sup.get(sid).desired_state.value == "stopped"


async def test_exit_backs_off_restarts_then_crashes_with_the_reason(world: World) -> None:
    """Each exit moves to backoff and restarts; after max_restarts the service is crashed."""
    sid = await world.create()
    await world.until(sid, "starting")
    for attempt in range(4):
        pid = world.pid(sid)
        world.runtime.end(pid, ExitStatus(code=3))
        if attempt < 3:
            await eventually(lambda old=pid: _async(world.sup.get(sid).pid not in (None, old)),
                             message="a new run")
    await world.until(sid, "crashed")
    status = await world.sup.status(sid)
    assert status.last_exit is not None and status.last_exit.status == ExitStatus(code=3)
    assert status.info.restart_count == 3 and len(world.runtime.started) == 4
    events = world.drain_events()
    assert events.count("service.crashed") == 4


async def _async(value: Any) -> Any:
    return value


async def test_clean_exit_with_on_failure_policy_stops_for_good(world: World) -> None:
    """An app that exits 0 under on-failure is stopped, and its desired state follows."""
    sid = await world.create(restart=RestartPolicy(mode="on-failure", jitter=0))
    await world.until(sid, "starting")
    world.runtime.end(world.pid(sid), ExitStatus(code=0))
    await world.until(sid, "stopped")
    assert world.sup.get(sid).desired_state.value == "stopped"
    assert "service.stopped" in world.drain_events()


async def test_a_start_that_cannot_spawn_fails_and_can_be_retried(world: World) -> None:
    """A spawn failure is state failed with the reason; a later start works."""
    world.runtime.fail_next = "no such directory"
    sid = await world.create()
    assert world.state(sid) == "failed"
    status = await world.sup.status(sid)
    assert status.last_exit is not None and status.last_exit.reason == "spawn_failed"
    assert status.last_exit.stderr_tail == ("no such directory",)
    await world.sup.start(sid)
    await world.until(sid, "running")


async def test_restart_replaces_the_run_without_a_stopped_event(world: World) -> None:
    """restart: running -> stopping -> starting with a new pid; the old one got SIGTERM."""
    sid = await world.create()
    await world.until(sid, "running")
    old = world.pid(sid)
    world.drain_events()
    await world.sup.restart(sid, wait=5)
    assert world.state(sid) == "running" and world.pid(sid) != old
    assert world.runtime.runs[old].signals == [15]
    assert world.drain_events() == ["service.started"]


async def test_stop_during_backoff_cancels_the_restart(world: World) -> None:
    """A service in backoff stops at once and is not started again by the timer."""
    sid = await world.create(restart=RestartPolicy(initial_delay=0.3, max_delay=1, jitter=0))
    await world.until(sid, "starting")
    world.runtime.end(world.pid(sid), ExitStatus(signal=9))
    await world.until(sid, "backoff")
    await world.sup.stop(sid)
    assert world.state(sid) == "stopped"
    await asyncio.sleep(0.5)  # proving a non-event: longer than the backoff, no restart may come
    assert world.state(sid) == "stopped" and len(world.runtime.started) == 1


async def test_a_stop_signal_ignored_past_the_grace_period_ends_in_sigkill(world: World) -> None:
    """stop_timeout elapses, then the run is killed."""
    world.runtime.ignore_stop = True
    sid = await world.create(stop_signal="SIGINT", stop_timeout=0.1)
    await world.until(sid, "running")
    pid = world.pid(sid)
    await world.sup.stop(sid, wait=5)
    assert world.runtime.runs[pid].signals == [2, 9]
    status = await world.sup.status(sid)
    assert status.last_exit is not None and status.last_exit.status == ExitStatus(signal=9)


async def test_health_gates_running_marks_unhealthy_recovers_and_restarts(world: World) -> None:
    """starting until the first passing check; threshold failures -> unhealthy; a pass ->
    running again (recovered); with restart, an unhealthy run is replaced."""
    port = free_port()
    check = HealthCheck(type="tcp", port=port, interval=0.05, timeout=0.5, threshold=2,
                        start_timeout=30, restart=False)
    sid = await world.create(health_check=check)
    await asyncio.sleep(0.3)
    assert world.state(sid) == "starting"
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
    await world.until(sid, "running")
    server.close()
    await server.wait_closed()
    await world.until(sid, "unhealthy")
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
    await world.until(sid, "running")
    server.close()
    await server.wait_closed()
    events = world.drain_events()
    assert events[-3:] == ["service.started", "service.unhealthy", "service.recovered"]

    restart_check = HealthCheck(type="tcp", port=port, interval=0.05, timeout=0.5, threshold=2,
                                start_timeout=30, restart=True)
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
    sid2 = await world.create("app2", health_check=restart_check)
    await world.until(sid2, "running")
    first = world.pid(sid2)
    server.close()
    await server.wait_closed()
    await eventually(lambda: _async(world.sup.get(sid2).restart_count >= 1), message="restart")
    assert first not in [world.sup.get(sid2).pid]
    status = await world.sup.status(sid2)
    assert status.last_exit is not None and status.last_exit.reason == "unhealthy"


async def test_no_passing_check_within_start_timeout_counts_as_a_failed_run(world: World) -> None:
    """A start whose check never passes is stopped (reason start_timeout) and retried."""
    check = HealthCheck(type="tcp", port=free_port(), interval=0.05, timeout=0.2,
                        start_timeout=0.3)
    sid = await world.create(health_check=check)
    await eventually(lambda: _async(world.sup.get(sid).restart_count >= 1), message="retry")
    status = await world.sup.status(sid)
    assert status.last_exit is not None and status.last_exit.reason == "start_timeout"


async def test_agent_restart_adopts_live_runs_and_settles_ended_ones(world: World) -> None:
    """A new supervisor keeps a live run (same pid, no new start), keeps a stopped service
    stopped, and treats a run that ended while it was away as an exit (restart)."""
    live = await world.create("live")
    ended = await world.create("ended")
    stopped = await world.create("stopped")
    for sid in (live, ended, stopped):
        await world.until(sid, "running")
    await world.sup.stop(stopped, wait=5)
    live_pid, ended_pid = world.pid(live), world.pid(ended)
    starts = len(world.runtime.started)
    await world.sup.close()
    world.runtime.end(ended_pid, ExitStatus(code=7))
    await world.reopen()
    assert world.state(live) == "running" and world.pid(live) == live_pid
    assert world.state(stopped) == "stopped"
    await eventually(lambda: _async(world.sup.get(ended).pid not in (None, ended_pid)),
                     message="the ended service to run again")
    assert len(world.runtime.started) == starts + 1
    status = await world.sup.status(ended)
    assert status.last_exit is not None and status.last_exit.status == ExitStatus(code=7)
