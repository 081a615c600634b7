"""The event loop's lag, measured from inside: how late a periodic timer fires.

Every ``interval`` seconds a task asks to wake at the next multiple of ``interval`` (on the
shared grid of ``agent.timers``, so the sampler's timer fires in the same wake-up)
and records how much later than that it actually ran: the time the loop spent on something
else without yielding (a slow handler, a blocking call that should be in a thread). Each
measurement goes into the ``dployr_event_loop_lag_seconds`` histogram of ``/metrics``; the
difference of two scrapes gives the lag's distribution over any period (the benchmarks read
it around a burst of deployments).

The Python it runs is a few microseconds, but each wake-up of an idle loop costs about
0.5-1 ms of CPU on the 2-core build machine: at 4 per second this watcher is most of an
idle agent's CPU there (see docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from agent.timers import next_multiple, sleep_until

__all__ = ["DEFAULT_INTERVAL", "watch_loop_lag"]

DEFAULT_INTERVAL = 0.25


async def watch_loop_lag(record: Callable[[float], None], *,
                         interval: float = DEFAULT_INTERVAL) -> None:
    """Measure the running loop's lag every ``interval`` seconds until cancelled; ``record``
    gets each lag in seconds."""
    loop = asyncio.get_running_loop()
    while True:
        expected = next_multiple(loop.time(), interval)
        await sleep_until(expected)
        record(loop.time() - expected)
