"""Running a local deployment's ``build_cmd``: once, logged, bounded in time, stoppable.

``build_local`` is package-internal (like ``recovery``): it runs under the unit's lock as the
first step of a start. The time limit is ``[deploy] build_timeout``, the same as for builds of
the deploy pipeline.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING

from agent.supervisor.runtime import ExitStatus, RunSpec, Runtime, RuntimeFailure
from agent.supervisor.states import DesiredState
from agent.supervisor.states import ServiceState as S
from agent.supervisor.store import ExitRecord

if TYPE_CHECKING:
    from agent.supervisor.unit import Begun, ServiceUnit

__all__ = ["build_local", "run_build"]


async def run_build(runtime: Runtime, spec: RunSpec, *, limit: float, halt: asyncio.Event,
                    stop_signal: int, stop_timeout: float) -> tuple[ExitStatus, str]:
    """Run the build and wait for it (at most ``limit`` seconds); return how it ended and the
    reason to record (``build_failed`` for any end of its own, ``build_timeout``,
    ``build_stopped`` when ``halt`` was set by a stop or a delete). Raises RuntimeFailure
    when it cannot start."""
    handle = await runtime.start(spec)
    ended = asyncio.ensure_future(runtime.wait(handle))
    halted = asyncio.ensure_future(halt.wait())
    try:
        await asyncio.wait({ended, halted}, timeout=limit,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        halted.cancel()
    reason = "build_failed"
    if not ended.done():
        reason = "build_stopped" if halt.is_set() else "build_timeout"
        await runtime.stop(handle, stop_signal, stop_timeout)
    return await ended, reason


async def build_local(unit: ServiceUnit, begun: Begun | None) -> bool:
    """Run the unit's build_cmd once (lock held); True when it succeeded."""
    r = unit.r
    ctx = unit._ctx
    if r.state is not S.STARTING:
        await unit._commit(S.STARTING, desired=DesiredState.RUNNING, handle=None,
                           deployment=("building", None, None))
    if begun is not None and not begun.done():
        begun.set_result(None)
    await ctx.logs.reset_raw(r.id)
    await unit._note(f"build: {r.build_cmd}")
    spec = dataclasses.replace(unit._spec(kind="build", command=r.build_cmd),
                               env={**ctx.base_env, **ctx.env.mapping(r.id)})
    started = ctx.clock.time()
    ctx.logs.set_live(r.id, True)
    try:
        status, reason = await run_build(
            ctx.runtime, spec, limit=ctx.build_timeout,
            halt=unit._halt, stop_signal=r.stop_signal, stop_timeout=r.stop_timeout)
    except RuntimeFailure as exc:
        status, reason = ExitStatus(), "build_failed"
        await unit._note(f"build could not start: {exc}")
    ctx.logs.set_live(r.id, False)
    await ctx.logs.reset_raw(r.id)
    if status.success:
        await unit._commit(needs_build=False)
        await unit._note("build succeeded")
        return True
    exit = ExitRecord(exited_at=ctx.clock.time(), status=status, reason=reason,
                      started_at=started, stderr_tail=tuple(ctx.logs.stderr_tail(r.id)))
    detail = {"build_failed": f"build {status.describe()}", "build_timeout": "build timed out",
              "build_stopped": "build stopped"}[reason]
    await unit._commit(S.FAILED, event="service.crashed",
                       data={**exit.event_data(), "restarting": False}, exit=exit,
                       deployment=unit._deployment_failed(detail))
    await unit._note(f"build failed: {status.describe()}")
    return False
