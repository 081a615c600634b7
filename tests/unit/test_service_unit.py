"""The state machine of a service, driven through every transition with a FakeRuntime.

The store, the log capture and the health probes are real; only the runtime is fake, so exits,
stop escalation and adoption happen exactly when the test says.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog

from agent.clock import SystemClock
from agent.config import ServicesConfig
from agent.deployments import DeploymentService, LocalDeployment
from agent.env import EnvService
from agent.events import EventBus, Subscription
from agent.logs import LogManager
from agent.store import Database
from agent.supervisor.health import HealthCheck
from agent.supervisor.manager import Supervisor
from agent.supervisor.policy import RestartPolicy
from agent.supervisor.runtime import ExitStatus
from agent.testing import FakeRuntime
from tests.support.agent import eventually, free_port

FAST = RestartPolicy(initial_delay=0.01, max_delay=0.05, jitter=0, max_restarts=3)


@dataclass
class World:
    tmp: Path
    db: Database
    logs: LogManager
    env: EnvService
    runtime: FakeRuntime
    config: ServicesConfig
    sup: Supervisor
    deployments: DeploymentService
    events: Subscription

    async def create(self, name: str = "app", **kw: Any) -> str:
        kw.setdefault("restart", FAST)
        dep = await self.deployments.create_local(LocalDeployment(
            name=name, path=str(self.tmp), run_cmd="run", **kw))
        assert dep.service_id is not None
        return dep.service_id

    def state(self, sid: str) -> str:
        return self.sup.get(sid).state.value

    async def until(self, sid: str, state: str, timeout: float = 5.0) -> None:
        async def check() -> bool:
            return self.state(sid) == state
        await eventually(check, timeout=timeout, message=f"state {state}")

    def drain_events(self) -> list[str]:
        names = []
        while not self.events._queue.empty():
            names.append(self.events._queue.get_nowait().type)
        return names

    def pid(self, sid: str) -> int:
        pid = self.sup.get(sid).pid
        assert pid is not None
        return pid

    async def reopen(self) -> None:
        """A new supervisor on the same store and runtime: an agent restart."""
        await self.sup.close()
        self.sup = Supervisor(self.db, SystemClock(), self.config, apps_dir=self.tmp / "apps",
                              logs=self.logs, env=self.env, runtimes={"process": self.runtime},
                              base_env={"PATH": "/bin"}, rng=random.Random(1))
        await self.sup.open()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    clock = SystemClock()
    db = Database(tmp_path / "agent.db", bus=EventBus(), clock=clock)
    await db.open()
    logs = LogManager(max_bytes=1 << 20, max_files=3, clock=clock)
    await logs.open()
    env = EnvService(db, clock, max_bytes=1000, max_vars=10)
    runtime = FakeRuntime()
    config = ServicesConfig(allowed_local_roots=(tmp_path,), startup_seconds=0.05)
    sup = Supervisor(db, clock, config, apps_dir=tmp_path / "apps", logs=logs, env=env,
                     runtimes={"process": runtime}, base_env={"PATH": "/bin"},
                     rng=random.Random(1))
    await sup.open()
    deployments = DeploymentService(db, clock, config, sup, env)
    w = World(tmp_path, db, logs, env, runtime, config, sup, deployments, db.bus.subscribe())
    try:
        yield w
    finally:
        await w.sup.close()
        await logs.close()
        await db.close()


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
