"""Periodic timers on a shared grid: the sampler's and the lag watcher's fire together."""

from __future__ import annotations

import asyncio

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



def test_the_lag_watcher_looks_closer_while_the_loop_is_late() -> None:
    """Once a second while the loop keeps up; every 0.25 s after a late measurement."""
    from agent.metrics.looplag import next_interval

    assert next_interval(0.0) == next_interval(0.005) == 1.0
    assert next_interval(0.011) == next_interval(2.0) == 0.25
