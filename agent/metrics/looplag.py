"""The event loop's lag, measured from inside: how late a periodic timer fires.

Periodically a task asks to wake at the next multiple of its interval (on the
shared grid of ``agent.timers``, so the sampler's timer fires in the same wake-up)
and records how much later than that it actually ran: the time the loop spent on something
else without yielding (a slow handler, a blocking call that should be in a thread). Each
measurement goes into the ``dployr_event_loop_lag_seconds`` histogram of ``/metrics``; the
difference of two scrapes gives the lag's distribution over any period (the benchmarks read
it around a burst of deployments).

The Python it runs is a few microseconds, but each wake-up of an idle loop costs about
0.5-1.5 ms of CPU on the 2-core build machine (see docs/benchmarks.md): so the watcher looks
once a second while the loop keeps up, and four times a second only while it is late.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from agent.timers import next_multiple, sleep_until

__all__ = ["BUSY_INTERVAL", "IDLE_INTERVAL", "next_interval", "watch_loop_lag"]

IDLE_INTERVAL = 1.0   # seconds between measurements while the loop keeps up
BUSY_INTERVAL = 0.25  # ... while it is late: a stall is then four times likelier to be seen
BUSY_LAG = 0.01       # a lag above this means the loop had work in hand (timers of an idle
                      # loop fire a few milliseconds late on a busy virtual machine)


async def watch_loop_lag(record: Callable[[float], None], *,
                         idle_interval: float = IDLE_INTERVAL,
                         busy_interval: float = BUSY_INTERVAL) -> None:
    """Measure the running loop's lag until cancelled; ``record`` gets each lag in seconds.

    Every ``idle_interval`` seconds, or every ``busy_interval`` while the last measurement
    was over ``BUSY_LAG``: an idle agent wakes once a second for this, a busy one is watched
    closely (its measurements are then more frequent, which the histogram reflects)."""
    loop = asyncio.get_running_loop()
    interval = idle_interval
    while True:
        expected = next_multiple(loop.time(), interval)
        await sleep_until(expected)
        lag = loop.time() - expected
        record(lag)
        interval = next_interval(lag, idle_interval=idle_interval, busy_interval=busy_interval)


def next_interval(lag: float, *, idle_interval: float = IDLE_INTERVAL,
                  busy_interval: float = BUSY_INTERVAL) -> float:
    """How long to wait before the next measurement, after one of ``lag`` seconds."""
    return busy_interval if lag > BUSY_LAG else idle_interval
