"""Periodic timers on a shared grid, so that the agent's timers wake the event loop together.

On a small virtual machine a wake-up of an idle thread costs far more CPU than the few
microseconds of Python it runs (measured on the 2-core build machine: about 0.5-1 ms of CPU
per wake-up; see docs/benchmarks.md), so an idle agent's CPU follows how often its threads
wake. A periodic task that sleeps until the next multiple of its interval (in the loop's
clock) fires at the same instant as every other such task whose interval divides or is a
multiple of its own: the sampler (1 s, 5 s...) and the loop-lag watcher (0.25 s) share one
wake-up instead of two.
"""

from __future__ import annotations

import asyncio
import math

__all__ = ["next_multiple", "sleep_interval", "sleep_until"]


def next_multiple(now: float, interval: float) -> float:
    """The first multiple of ``interval`` strictly after ``now``."""
    return (math.floor(now / interval) + 1) * interval


def _wake(loop: asyncio.AbstractEventLoop, future: asyncio.Future[float]) -> None:
    if not future.done():
        future.set_result(loop.time())


async def sleep_until(when: float) -> float:
    """Sleep until the running loop's clock reads ``when`` (at once if it is past); return
    the loop's time when the timer's callback ran.

    Unlike ``asyncio.sleep(when - loop.time())`` the timer is set for exactly ``when``, so
    timers set for the same instant by different tasks fire in one loop iteration. The time
    returned is taken in the timer's callback, before the tasks that the same instant wakes
    run: how late the loop was, without the work that instant brings (the lag watcher's
    measure).
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[float] = loop.create_future()
    handle = loop.call_at(when, _wake, loop, future)
    try:
        return await future
    finally:
        handle.cancel()


async def sleep_interval(interval: float) -> None:
    """Sleep until the next multiple of ``interval`` on the loop's clock: the body of a
    periodic task (at most ``interval`` seconds, sharing wake-ups with the other tasks)."""
    await sleep_until(next_multiple(asyncio.get_running_loop().time(), interval))
