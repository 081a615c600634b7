"""Replacing a service's run (the deploy switch) with a fake runtime whose runs listen on PORT.

The store, the log capture and the health probes are real; a run "listens" while the test
keeps a socket open on the PORT it was given, so the health gate passes or fails on demand.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.supervisor.health import HealthCheck
from agent.supervisor.runtime import ExitStatus, Handle, RunSpec
from agent.supervisor.states import (
    REPLACE_PLANS,
    IllegalTransition,
    ReplacePlan,
    ServiceState,
    replace_plan,
)
from agent.supervisor.switch import Replacement, SwitchFailed
from agent.testing import FakeRuntime
from tests.support.agent import eventually, free_port
from tests.support.units import World, open_world


class ListeningRuntime(FakeRuntime):
    """A FakeRuntime whose runs listen on their PORT unless ``mute`` is set at start."""

    def __init__(self) -> None:
        super().__init__()
        self.mute = False
        self.sockets: dict[int, socket.socket] = {}

    async def start(self, spec: RunSpec) -> Handle:
        handle = await super().start(spec)
        if not self.mute and "PORT" in spec.env:
            sock = socket.socket()
            sock.bind(("127.0.0.1", int(spec.env["PORT"])))
            sock.listen()
            self.sockets[handle.pid or 0] = sock
        return handle

    def end(self, pid: int, status: ExitStatus) -> None:
        sock = self.sockets.pop(pid, None)
        if sock is not None:
            sock.close()
        super().end(pid, status)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with open_world(tmp_path, ListeningRuntime()) as w:
        yield w
        for sock in w.runtime.sockets.values():  # type: ignore[attr-defined]
            sock.close()


def release(world: World, name: str = "rel_b", **kw: object) -> Replacement:
    directory = world.tmp / name
    directory.mkdir(exist_ok=True)
    return Replacement(**{"release_id": name, "cwd": directory, "command": f"run {name}",  # type: ignore[arg-type]
                          "env": {"V": name}, "run_env": {"path_dirs": ["/opt/tc/bin"]},
                          "start_timeout": 5.0, **kw})


async def running(world: World, **kw: object) -> str:
    sid = await world.create(**kw)  # type: ignore[arg-type]
    await world.until(sid, "running")
    world.drain_events()
    return sid


def test_replace_plans_cover_every_state_but_stopping() -> None:
    """Runs that serve or start are replaced beside; states without a process start fresh."""
    assert set(REPLACE_PLANS) == set(ServiceState) - {ServiceState.STOPPING}
    assert replace_plan(ServiceState.RUNNING, has_run=True) is ReplacePlan.BESIDE
    assert replace_plan(ServiceState.STARTING, has_run=False) is ReplacePlan.FRESH
    assert replace_plan(ServiceState.CRASHED, has_run=False) is ReplacePlan.FRESH
    with pytest.raises(IllegalTransition):
        replace_plan(ServiceState.STOPPING, has_run=True)


async def test_candidate_starts_beside_takes_over_then_the_old_run_stops(world: World) -> None:
    """The new run gets a fresh PORT and the release's env; on_switch runs while the old one still runs."""
    sid = await running(world)
    old = world.pid(sid)
    seen: list[tuple[int | None, bool]] = []

    async def on_switch() -> None:
        seen.append((world.sup.get(sid).pid, world.runtime.alive(old)))

    result = await world.sup.replace(sid, release(world, on_switch=on_switch))
    info = world.sup.get(sid)
    assert (info.state.value, info.release_id, info.pid) == ("running", "rel_b", result.pid)
    assert seen == [(result.pid, True)] and not world.runtime.alive(old)
    assert world.runtime.runs[old].signals == [15] and result.replaced_pid == old
    spec = world.runtime.started[-1]
    assert spec.command == "run rel_b" and spec.cwd == world.tmp / "rel_b"
    assert spec.env["V"] == "rel_b" and spec.env["PATH"].startswith("/opt/tc/bin:")
    assert spec.env["PORT"] == str(info.listen_port) and spec.run_name == "app-next"
    assert world.drain_events() == ["service.started"]
    status = await world.sup.status(sid)
    assert status.last_exit is not None and status.last_exit.reason == "replaced"
    # A crash of the new run restarts the new release, with its env.
    world.runtime.end(result.pid or 0, ExitStatus(code=1))
    await eventually(lambda: _is(world.sup.get(sid).pid not in (None, result.pid)),
                     message="a restart")
    restarted = world.runtime.started[-1]
    assert (restarted.command, restarted.cwd) == ("run rel_b", world.tmp / "rel_b")
    assert restarted.env["PATH"].startswith("/opt/tc/bin:") and restarted.run_name == ""


async def _is(value: bool) -> bool:
    return value


async def test_a_candidate_that_never_listens_is_stopped_and_the_old_run_stays(
        world: World) -> None:
    """No TCP answer within start_timeout: SwitchFailed naming PORT; same pid, nothing changed."""
    sid = await running(world)
    old = world.pid(sid)
    world.runtime.mute = True  # type: ignore[attr-defined]
    with pytest.raises(SwitchFailed) as failed:
        await world.sup.replace(sid, release(world, start_timeout=0.3))
    assert "did not accept connections on PORT=" in failed.value.reason
    assert "previous release keeps serving" in failed.value.reason
    info = world.sup.get(sid)
    assert (info.state.value, info.pid, info.release_id) == ("running", old, None)
    candidate = world.runtime.started[-1]
    assert not any(world.runtime.alive(pid) for pid, run in world.runtime.runs.items()
                   if run.spec is candidate)
    assert world.drain_events() == []


async def test_a_candidate_that_exits_fails_with_its_exit_code(world: World) -> None:
    """The candidate ending during the gate fails the switch at once with its code."""
    sid = await running(world, health_check=HealthCheck(type="tcp", start_timeout=30))
    world.runtime.mute = True  # type: ignore[attr-defined]
    task = asyncio.create_task(world.sup.replace(sid, release(world)))
    await eventually(lambda: _is(len(world.runtime.started) == 2), message="the candidate")
    world.runtime.end(max(world.runtime.runs), ExitStatus(code=3))
    with pytest.raises(SwitchFailed) as failed:
        await task
    assert failed.value.exit_code == 3 and "exited (exit code 3)" in failed.value.reason
    assert world.sup.get(sid).state.value == "running"


async def test_a_stop_during_the_gate_abandons_the_candidate(world: World) -> None:
    """A user's stop is not held up by a deploy: the switch fails and the service stops."""
    sid = await running(world)
    world.runtime.mute = True  # type: ignore[attr-defined]
    task = asyncio.create_task(world.sup.replace(sid, release(world, start_timeout=30)))
    await eventually(lambda: _is(len(world.runtime.started) == 2), message="the candidate")
    await world.sup.stop(sid)
    with pytest.raises(SwitchFailed, match="stopped during the deploy"):
        await task
    await world.until(sid, "stopped")
    assert not any(world.runtime.alive(pid) for pid in world.runtime.runs)


async def test_fresh_start_of_a_stopped_service_and_its_failure(world: World) -> None:
    """Without a run the candidate is an ordinary start; a failed gate leaves the service failed."""
    sid = await running(world)
    await world.sup.stop(sid, wait=5)
    world.drain_events()
    result = await world.sup.replace(sid, release(world))
    info = world.sup.get(sid)
    assert (info.state.value, info.desired_state.value, info.pid) == ("running", "running",
                                                                      result.pid)
    assert result.replaced_pid is None and world.drain_events() == ["service.started"]
    await world.sup.stop(sid, wait=5)
    world.runtime.mute = True  # type: ignore[attr-defined]
    with pytest.raises(SwitchFailed) as failed:
        await world.sup.replace(sid, release(world, "rel_c", start_timeout=0.2))
    assert "previous release keeps serving" not in failed.value.reason
    status = await world.sup.status(sid)
    assert status.info.state.value == "failed" and status.info.release_id == "rel_b"
    assert status.last_exit is not None and status.last_exit.reason == "gate_failed"


async def test_fixed_port_stops_first_and_restarts_the_old_release_on_failure(
        world: World) -> None:
    """With fixed_port the old run stops before the candidate starts; a failed candidate brings it back."""
    port = free_port()
    sid = await running(world, port=port, fixed_port=True)
    old = world.pid(sid)
    order: list[str] = []

    async def on_switch() -> None:
        order.append(f"switch old_alive={world.runtime.alive(old)}")

    result = await world.sup.replace(sid, release(world, on_switch=on_switch))
    assert order == ["switch old_alive=False"] and world.sup.get(sid).listen_port == port
    world.runtime.mute = True  # type: ignore[attr-defined]
    with pytest.raises(SwitchFailed):
        await world.sup.replace(sid, release(world, "rel_c", start_timeout=0.2))
    world.runtime.mute = False  # type: ignore[attr-defined]
    await world.until(sid, "running")
    info = world.sup.get(sid)
    assert info.release_id == "rel_b" and info.pid not in (old, result.pid)
    assert world.runtime.started[-1].command == "run rel_b"


async def test_an_agent_restart_mid_switch_stops_the_recorded_candidate(world: World) -> None:
    """A candidate (or a retiring run) left in pending_run by a killed agent is stopped at the next start."""
    sid = await running(world)
    old = world.pid(sid)
    unit = world.sup._unit(sid)
    candidate = await world.runtime.start(unit._spec())
    retiring = await world.runtime.start(unit._spec())
    await unit._commit(pending_run={"release_id": "rel_b", "port": 1, "run_name": "app-next",
                                    "handle": candidate.to_json(),
                                    "retiring": retiring.to_json()})
    await world.sup.close()
    await world.reopen()
    assert world.sup.get(sid).pid == old and world.runtime.alive(old)
    assert not world.runtime.alive(candidate.pid or 0) and not world.runtime.alive(retiring.pid or 0)
    assert world.sup._unit(sid).r.pending_run is None


async def test_a_first_deploy_cut_short_by_the_agent_leaves_the_service_stopped(
        world: World) -> None:
    """starting without a run (a first deploy's gate) and a recorded candidate: stopped after a restart."""
    sid = await running(world)
    await world.sup.stop(sid, wait=5)
    unit = world.sup._unit(sid)
    candidate = await world.runtime.start(unit._spec())
    await unit._commit(ServiceState.STARTING, handle=None,
                       pending_run={"release_id": "rel_b", "port": 1, "run_name": "app",
                                    "handle": candidate.to_json()})
    await world.sup.close()
    await world.reopen()
    assert world.state(sid) == "stopped" and not world.runtime.alive(candidate.pid or 0)
    assert len([pid for pid in world.runtime.runs if world.runtime.alive(pid)]) == 0


async def test_a_cancel_after_the_switch_still_stops_the_old_run(world: World) -> None:
    """After the switch a cancellation (delete, shutdown) waits for the old run to stop and is absorbed."""
    sid = await running(world)
    old = world.pid(sid)
    hold = asyncio.Event()

    async def on_switch() -> None:
        await hold.wait()

    task = asyncio.create_task(world.sup.replace(sid, release(world, on_switch=on_switch)))
    await eventually(lambda: _is(world.sup.get(sid).pid != old), message="the switch")
    task.cancel()
    await asyncio.sleep(0)
    assert not task.done() and world.runtime.alive(old)
    hold.set()
    result = await task  # too late to go back: the switch completes and says so
    assert result.replaced_pid == old and world.sup.get(sid).pid == result.pid
    assert not world.runtime.alive(old) and world.state(sid) == "running"
    assert world.sup._unit(sid).r.pending_run is None


async def test_cancelling_during_the_gate_stops_the_candidate(world: World) -> None:
    """A deploy cancelled (agent stopping) during the gate: the candidate stops, the old run stays."""
    sid = await running(world)
    old = world.pid(sid)
    world.runtime.mute = True  # type: ignore[attr-defined]
    task = asyncio.create_task(world.sup.replace(sid, release(world, start_timeout=30)))
    await eventually(lambda: _is(len(world.runtime.started) == 2), message="the candidate")
    candidate = max(world.runtime.runs)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not world.runtime.alive(candidate) and world.runtime.alive(old)
    assert world.sup.get(sid).pid == old and world.sup._unit(sid).r.pending_run is None
