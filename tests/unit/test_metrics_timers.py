"""Periodic timers on a shared grid: the sampler's and the lag watcher's fire together."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

from agent.timers import next_multiple, sleep_until


def test_next_multiple_is_strictly_after_now() -> None:
    """The next tick is the first multiple of the interval after now, even on a multiple."""
    assert next_multiple(10.1, 0.25) == 10.25
    assert next_multiple(10.0, 0.25) == 10.25
    assert next_multiple(10.3, 1.0) == 11.0
    assert next_multiple(7.0, 5.0) == 10.0


def test_timers_of_dividing_intervals_target_the_same_instant() -> None:
    """A 1 s and a 0.25 s timer set during the last quarter second aim at the same time."""
    for now in (99.76, 99.9, 99.999):
        assert next_multiple(now, 1.0) == next_multiple(now, 0.25) == 100.0


async def test_sleep_until_wakes_at_the_instant_and_not_before() -> None:
    """Tasks sleeping until one instant all wake in the same loop iteration, not before it."""
    loop = asyncio.get_running_loop()
    when = loop.time() + 0.05
    iteration = [0]

    def count() -> None:  # runs once per loop iteration
        iteration[0] += 1
        handle[0] = loop.call_soon(count)

    handle = [loop.call_soon(count)]
    woke: list[tuple[float, int]] = []

    async def sleeper() -> None:
        await sleep_until(when)
        woke.append((loop.time(), iteration[0]))

    try:
        await asyncio.gather(*(sleeper() for _ in range(3)))
    finally:
        handle[0].cancel()
    assert len(woke) == 3 and min(t for t, _ in woke) >= when
    assert len({i for _, i in woke}) == 1
    await sleep_until(loop.time() - 1)  # a past instant returns at once



def test_the_lag_watcher_looks_as_often_as_the_loop_works() -> None:
    """Every 0.25 s after a late measurement; every second while the loop's thread works;
    every 5 s (the sampler's grid) while it sleeps."""
    from agent.metrics.looplag import next_interval

    assert next_interval(0.026, 0.0) == next_interval(2.0, 0.5) == 0.25
    assert next_interval(0.005, 0.05) == next_interval(0.0, 0.9) == 1.0
    assert next_interval(0.0, 0.0) == next_interval(0.02, 0.03) == 5.0


async def test_the_lag_watcher_slows_down_when_the_loop_is_quiet() -> None:
    """Driven by a CPU clock of its own: measurements 1 s apart while the clock runs (a
    working loop), then 5 s apart once it stops, and 1 s apart again when it resumes."""
    from agent.metrics.looplag import watch_loop_lag

    loop = asyncio.get_running_loop()
    clock = _VirtualTime(loop)
    cpu = [0.0]
    working = [True]
    seen: list[float] = []

    def cpu_clock() -> float:
        if working[0]:
            cpu[0] += 0.5  # half of any interval: a working loop
        return cpu[0]

    def record(lag: float) -> None:
        seen.append(clock.now)
        if len(seen) == 3:
            working[0] = False
        if len(seen) == 6:
            working[0] = True

    task = loop.create_task(watch_loop_lag(record, cpu_clock=cpu_clock))
    try:
        await clock.run_until(lambda: len(seen) >= 8)
    finally:
        task.cancel()
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(seen)]
    # Working: 1 s apart. The 3rd measurement ends a period without CPU: the next ones are on
    # the 5 s grid (the first of them 2 s later, at 1005), until the 6th sees CPU again.
    assert gaps == [1.0, 1.0, 2.0, 5.0, 5.0, 1.0, 1.0]


class _VirtualTime:
    """Moves the running loop's clock forward at once to its next timer (so a test of
    periodic timers runs in milliseconds): patches ``loop.time`` for the test's duration."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.now = 1000.0

    async def run_until(self, done: Callable[[], bool]) -> None:
        loop: Any = self.loop
        real_time = loop.time
        loop.time = lambda: self.now
        try:
            for _ in range(1000):
                if done():
                    return
                timers = [t for t in loop._scheduled if not t.cancelled()]
                if timers:
                    self.now = max(self.now, min(t.when() for t in timers))
                await asyncio.sleep(0)
            raise AssertionError("the condition never held")
        finally:
            loop.time = real_time
