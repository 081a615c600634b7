"""Recovery after an agent start: adopt live runs, settle runs that ended while the agent
was away, kill strays, resume backoffs, start again what a reboot stopped.

Package-internal: works on a ServiceUnit's state under its lock, through the same private
steps the unit uses for its own commands.
"""

from __future__ import annotations

from typing import Any

import structlog

from agent.supervisor import procfs
from agent.supervisor.runtime import Handle
from agent.supervisor.states import ACTIVE_STATES, DesiredState
from agent.supervisor.states import ServiceState as S
from agent.supervisor.unit import ServiceUnit

__all__ = ["recover"]

log = structlog.get_logger("agent.supervisor")


async def recover(unit: ServiceUnit, strays: list[Handle]) -> None:
    """Re-adopt the unit's persisted run (same pid, no restart) or settle what happened while
    the agent was away. ``strays`` are other live runs of this service found on the host:
    they are killed (one run per service)."""
    async with unit._lock:
        await _recover(unit, strays)
    unit._notify()


async def _recover(unit: ServiceUnit, strays: list[Handle]) -> None:
    r = unit.r
    runtime = unit._ctx.runtime
    spec = unit._spec()
    if r.pending_run:
        await _end_pending(unit, r.pending_run)
    for stray in strays:
        if r.handle is None or stray.pid != r.handle.pid:
            log.warning("service_stray_run_killed", service_id=r.id, pid=stray.pid)
            if (await runtime.adopt(stray, spec)).alive:
                await runtime.stop(stray, r.stop_signal, 0)
    rebooted = r.boot_id is not None and r.boot_id != procfs.boot_id()
    if r.handle is not None:
        adopted = await runtime.adopt(r.handle, spec)
        if adopted.alive:
            _adopted(unit)
            return
        await unit._ctx.logs.reset_raw(r.id)
        if not rebooted and r.state in (S.STARTING, S.RUNNING, S.UNHEALTHY):
            # It ended while the agent was away: that is an exit like any other.
            await unit._note(f"ended while the agent was away: {adopted.status.describe()}")
            await unit._after_run(adopted.status, "exited")
            return
        exit = await unit._exit_record(adopted.status, "stopped" if r.state is S.STOPPING
                                       else "lost")
        await unit._commit(S.STOPPED if r.state in ACTIVE_STATES else None, exit=exit,
                           handle=None)
    if unit.r.handle is None and unit.r.state in (S.STARTING, S.STOPPING):
        # Cut short by the agent's end with no run left: a build (starting), or a stop or
        # restart after its run had ended (stopping). Either way nothing runs: stopped, and
        # started again below if it is meant to run.
        await unit._commit(S.STOPPED)
    if unit.r.desired is not DesiredState.RUNNING:
        return
    state = unit.r.state
    if state is S.BACKOFF and not rebooted:
        delay = max(0.0, (unit.r.next_restart_at or 0) - unit._ctx.clock.time())
        unit._timer = unit._spawn(unit._backoff(unit._gen, delay))
        return
    if unit.r.state is S.STOPPED or (rebooted and unit.r.state in (S.BACKOFF, S.CRASHED,
                                                                    S.FAILED)):
        unit._spawn(unit._command(unit._start))

async def _end_pending(unit: ServiceUnit, pending: dict[str, Any]) -> None:
    """A switch was interrupted by the agent's end: stop its candidate (the deploy failed;
    the recorded run keeps serving) or the old run it was retiring (the switch was done)."""
    r = unit.r
    for key in ("handle", "retiring"):
        text = pending.get(key)
        if not text:
            continue
        handle = Handle.from_json(text)
        if (await unit._ctx.runtime.adopt(handle, unit._spec())).alive:
            log.info("service_switch_leftover_stopped", service_id=r.id, pid=handle.pid, role=key)
            await unit._ctx.runtime.stop(handle, r.stop_signal, r.stop_timeout)
            what = "new release" if key == "handle" else "replaced release"
            await unit._note(f"the agent restarted during a switch: stopped the {what} "
                             f"(pid {handle.pid})")
    if r.state is S.STARTING and r.handle is None:
        # A switch without a run to keep (a first deploy, a service that had crashed): there
        # is nothing left of it; whether to start the recorded release is up to desired state.
        await unit._commit(S.STOPPED, pending_run=None)
    else:
        await unit._commit(pending_run=None)


def _adopted(unit: ServiceUnit) -> None:
    """The persisted run is alive: watch it again, or finish what was being done."""
    r = unit.r
    assert r.handle is not None
    unit._gen += 1
    unit._ctx.logs.set_live(r.id, True)
    log.info("service_adopted", service_id=r.id, pid=r.pid, state=r.state.value)
    if r.desired is DesiredState.STOPPED:
        unit._spawn(unit._command(unit._stop))
    elif r.state is S.STOPPING:  # a restart was in progress
        unit._spawn(unit._command(unit._restart))
    else:
        unit._watch_run(unit._gen, r.handle)
