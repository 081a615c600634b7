"""Running a deployment's ``build_cmd``: once, logged, bounded in time, stoppable."""

from __future__ import annotations

import asyncio

from agent.supervisor.runtime import ExitStatus, RunSpec, Runtime

__all__ = ["run_build"]


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
