"""Rate limiting with GCRA (the generic cell rate algorithm): pure, with an injectable clock.

A limit of ``limit`` requests per ``period`` seconds allows a burst of ``burst`` requests
(default: ``limit``) and then one request every ``period / limit`` seconds. Each key costs one
float (its theoretical arrival time). A key whose time has passed is indistinguishable from a
new one, so it is dropped when the table grows past ``max_keys``; if every key is still active
the oldest are dropped, which at worst hands them a fresh allowance. Memory stays bounded
whatever the number of clients.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from agent.clock import Clock
from agent.records import record

__all__ = ["Decision", "RateLimiter", "RateLimits"]


class Decision(NamedTuple):
    """The outcome of one charge, with what the X-RateLimit-* headers report.

    A named tuple (immutable, and several times cheaper to make than a frozen dataclass):
    one is made for every API request.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_at: int  # epoch seconds when the full allowance is back
    retry_after: int  # seconds to wait before the next request is allowed (0 if allowed)

    def headers(self) -> dict[str, str]:
        """The X-RateLimit-* headers (and Retry-After when refused)."""
        headers = {"X-RateLimit-Limit": str(self.limit),
                   "X-RateLimit-Remaining": str(self.remaining),
                   "X-RateLimit-Reset": str(self.reset_at)}
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after)
        return headers


class RateLimiter:
    """``limit`` requests per ``period`` seconds per key, at most ``burst`` at once (default
    and at most: ``limit``)."""

    def __init__(self, limit: int, period: float, clock: Clock, *, burst: int | None = None,
                 max_keys: int = 100_000) -> None:
        if limit < 1 or period <= 0 or (burst is not None and burst < 1):
            raise ValueError("limit and burst must be >= 1 and period > 0")
        self.limit = limit
        self.period = period
        self.burst = limit if burst is None else min(burst, limit)
        self._interval = period / limit
        self._tolerance = self._interval * self.burst  # how far ahead a key's time may run
        self._clock = clock
        self._max_keys = max_keys
        self._tat: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._tat)

    def charge(self, key: str, cost: int = 1) -> Decision:
        """Count ``cost`` requests for ``key`` if the allowance covers them."""
        # Runs for every API request: written out (no helper calls on the allowed path).
        now = self._clock.monotonic()
        tats = self._tat
        tat = tats.get(key, now)
        if tat < now:
            tat = now
        new_tat = tat + self._interval * cost
        allow_at = new_tat - self._tolerance
        if allow_at > now + 1e-9:
            return self._decision(False, now, tat, retry_after=allow_at - now)
        tats[key] = new_tat
        if len(tats) > self._max_keys:
            self._evict(now)
        used = new_tat - now
        remaining = int((self._tolerance - used) / self._interval + 1e-9)  # >= 0 here: floor
        burst = self.burst
        return Decision(True, self.limit, remaining if remaining < burst else burst,
                        math.ceil(self._clock.time() + used), 0)

    def peek(self, key: str) -> Decision:
        """The current state for ``key`` without counting a request."""
        now = self._clock.monotonic()
        return self._decision(True, now, max(self._tat.get(key, now), now), retry_after=0.0)

    def reset(self, key: str) -> None:
        """Forget ``key``: its full allowance is back."""
        self._tat.pop(key, None)

    def _decision(self, allowed: bool, now: float, tat: float, *, retry_after: float) -> Decision:
        used = tat - now
        remaining = max(0, math.floor((self._tolerance - used) / self._interval + 1e-9))
        reset_at = math.ceil(self._clock.time() + used)
        return Decision(allowed=allowed, limit=self.limit, remaining=min(remaining, self.burst),
                        reset_at=reset_at, retry_after=max(1, math.ceil(retry_after)) if not allowed else 0)

    def _evict(self, now: float) -> None:
        self._tat = {k: t for k, t in self._tat.items() if t > now}
        excess = len(self._tat) - int(self._max_keys * 0.9)
        if excess > 0:
            for key in list(self._tat)[:excess]:
                del self._tat[key]


@record
class RateLimits:
    """The two request limits of the API: per principal and per client address."""

    enabled: bool
    authenticated: RateLimiter
    unauthenticated: RateLimiter

    @classmethod
    def per_hour(cls, *, enabled: bool, authenticated: int, unauthenticated: int, clock: Clock,
                 max_keys: int, burst: int | None = None) -> RateLimits:
        """Limits of so many requests per hour, at most ``burst`` at once (default: the
        hour's whole allowance)."""
        return cls(enabled=enabled,
                   authenticated=RateLimiter(authenticated, 3600, clock, burst=burst,
                                             max_keys=max_keys),
                   unauthenticated=RateLimiter(unauthenticated, 3600, clock, burst=burst,
                                               max_keys=max_keys))
