"""The event loop's lag, measured from inside: how late a periodic timer fires.

Every ``interval`` seconds a task asks to wake ``interval`` later and records how much later
than that it actually ran: the time the loop spent on something else without yielding (a
slow handler, a blocking call that should be in a thread). Each measurement goes into the
``dployr_event_loop_lag_seconds`` histogram of ``/metrics``; the difference of two scrapes
gives the lag's distribution over any period (the benchmarks read it around a burst of
deployments). A timer costs a few microseconds: at 4 per second it is noise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["DEFAULT_INTERVAL", "watch_loop_lag"]

DEFAULT_INTERVAL = 0.25


async def watch_loop_lag(record: Callable[[float], None], *,
                         interval: float = DEFAULT_INTERVAL) -> None:
    """Measure the running loop's lag every ``interval`` seconds until cancelled; ``record``
    gets each lag in seconds."""
    loop = asyncio.get_running_loop()
    while True:
        expected = loop.time() + interval
        await asyncio.sleep(interval)
        record(loop.time() - expected)
