"""The event loop's lag, measured from inside: how late a periodic timer fires.

Periodically a task asks to wake at the next multiple of its interval (on the
shared grid of ``agent.timers``, so the sampler's timer fires in the same wake-up)
and records how much later than that it actually ran: the time the loop spent on something
else without yielding (a slow handler, a blocking call that should be in a thread). Each
measurement goes into the ``dployr_event_loop_lag_seconds`` histogram of ``/metrics``; the
difference of two scrapes gives the lag's distribution over any period (the benchmarks read
it around a burst of deployments).

The Python it runs is a few microseconds, but each wake-up of an idle loop costs about
0.5-1.5 ms of CPU on the 2-core build machine (see docs/benchmarks.md), which on a quiet
agent is most of its CPU. So how often it looks follows what the loop is doing:

- ``BUSY_INTERVAL`` (0.25 s) after a measurement more than ``BUSY_LAG`` late: a stall is
  then four times likelier to be seen;
- ``ACTIVE_INTERVAL`` (1 s) while the loop's thread used at least ``ACTIVE_SHARE`` of the
  last interval in CPU (requests, deployments: the loop is awake anyway, so looking is
  nearly free, and a stall of a second or more is always seen);
- ``QUIET_INTERVAL`` (5 s) otherwise: on the sampler's default grid, so a quiet agent wakes
  for nothing else. A stall in a quiet loop is rare (nothing runs), and one that uses the
  CPU makes the next interval an active one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from agent.timers import next_multiple, sleep_until

__all__ = ["ACTIVE_INTERVAL", "ACTIVE_SHARE", "BUSY_INTERVAL", "BUSY_LAG", "QUIET_INTERVAL",
           "next_interval", "watch_loop_lag"]

BUSY_INTERVAL = 0.25  # seconds between measurements while the loop is late
ACTIVE_INTERVAL = 1.0  # ... while it works
QUIET_INTERVAL = 5.0   # ... while it sleeps
BUSY_LAG = 0.025      # a lag above this means the loop had work in hand (timers of an idle
                      # loop fire late on a virtual machine: on the build machine 2-5 ms
                      # after a 1 s sleep, up to 16 ms after a 5 s one)
ACTIVE_SHARE = 0.05   # CPU of the loop's thread over an interval, as a share of it, from
                      # which the loop counts as working. Above what a quiet agent uses (with
                      # 200 services, under 1% on the build machine) and what the watcher's
                      # own wake-up costs there (up to ~15 ms: a just-woken virtual CPU runs
                      # slowly), or it would keep itself in the active tier.


async def watch_loop_lag(record: Callable[[float], None], *,
                         cpu_clock: Callable[[], float] = time.thread_time) -> None:
    """Measure the running loop's lag until cancelled; ``record`` gets each lag in seconds.

    ``cpu_clock`` is the CPU time of the loop's thread (this task runs on it), read once per
    measurement to tell a working loop from a quiet one (see ``next_interval``)."""
    loop = asyncio.get_running_loop()
    interval = ACTIVE_INTERVAL
    cpu = cpu_clock()
    while True:
        expected = next_multiple(loop.time(), interval)
        started = loop.time()
        # How late the timer's callback ran, not this task: the periodic work that the same
        # instant of the shared grid wakes is not counted as lag of the loop.
        lag = await sleep_until(expected) - expected
        record(lag)
        now = loop.time()
        cpu, used = cpu_clock(), cpu
        interval = next_interval(lag, (cpu - used) / max(now - started, 1e-3))


def next_interval(lag: float, cpu_share: float) -> float:
    """How long to wait before the next measurement, after one of ``lag`` seconds that ended
    a period in which the loop's thread used ``cpu_share`` of the time in CPU."""
    if lag > BUSY_LAG:
        return BUSY_INTERVAL
    return ACTIVE_INTERVAL if cpu_share >= ACTIVE_SHARE else QUIET_INTERVAL

