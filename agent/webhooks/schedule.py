"""When to try a failed delivery again: exponential backoff with jitter, and ``Retry-After``.

Attempt 1 is made as soon as the event is fanned out. After a failed attempt ``n`` the next
one waits ``min(max_delay, base * 3 ** (n - 1))`` seconds, multiplied by a random factor in
[0.8, 1.2] so that many deliveries failing together do not retry together. With the
defaults (base 10 s, cap 12 h, 14 attempts) the waits are 10 s, 30 s, 1.5 min, 4.5 min,
13.5 min, 40.5 min, 2 h, 6 h, then 12 h five times: the last attempt comes about 69 hours
(2.9 days) after the first.

A ``Retry-After`` header (seconds or an HTTP date) on a failed response is honoured: the next
attempt is not made before it, but never later than ``max_delay`` from now.
"""

from __future__ import annotations

import math
import random
from email.utils import parsedate_to_datetime

from agent.records import record

__all__ = ["RetrySchedule", "parse_retry_after"]

_FACTOR = 3.0
_JITTER = 0.2


@record
class RetrySchedule:
    """The backoff of one agent's deliveries (from ``[webhooks]``)."""

    max_attempts: int = 14
    base_delay: float = 10.0
    max_delay: float = 43_200.0

    def nominal_delay(self, attempt: int) -> float:
        """The wait after failed attempt number ``attempt`` (1-based), before jitter."""
        exponent = min(attempt - 1, 64)
        return min(self.max_delay, self.base_delay * _FACTOR ** exponent)

    def next_delay(self, attempt: int, *, retry_after: float | None = None,
                   rng: random.Random | None = None) -> float | None:
        """Seconds to wait after failed attempt ``attempt``, or None when it was the last."""
        if attempt >= self.max_attempts:
            return None
        factor = 1.0 + (rng or random).uniform(-_JITTER, _JITTER)
        delay = self.nominal_delay(attempt) * factor
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_delay))
        return delay

    def total_nominal(self) -> float:
        """Seconds from the first attempt to the last, before jitter."""
        return sum(self.nominal_delay(n) for n in range(1, self.max_attempts))


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date), or None
    when absent or malformed. A date in the past means 0."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(min(int(value), 10**9))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    seconds = when.timestamp() - now
    return max(0.0, seconds) if math.isfinite(seconds) else None
