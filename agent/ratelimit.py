"""Rate limiting with GCRA (the generic cell rate algorithm): pure, with an injectable clock.

A limit of ``limit`` requests per ``period`` seconds allows a burst of ``limit`` and then one
request every ``period / limit`` seconds. Each key costs one float (its theoretical arrival
time). A key whose time has passed is indistinguishable from a new one, so it is dropped when
the table grows past ``max_keys``; if every key is still active the oldest are dropped, which
at worst hands them a fresh allowance. Memory stays bounded whatever the number of clients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from agent.clock import Clock

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
    """``limit`` requests per ``period`` seconds per key."""

    def __init__(self, limit: int, period: float, clock: Clock, *, max_keys: int = 100_000) -> None:
        if limit < 1 or period <= 0:
            raise ValueError("limit must be >= 1 and period > 0")
        self.limit = limit
        self.period = period
        self._interval = period / limit
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
        allow_at = new_tat - self.period
        if allow_at > now + 1e-9:
            return self._decision(False, now, tat, retry_after=allow_at - now)
        tats[key] = new_tat
        if len(tats) > self._max_keys:
            self._evict(now)
        used = new_tat - now
        remaining = int((self.period - used) / self._interval + 1e-9)  # >= 0 here: floor
        limit = self.limit
        return Decision(True, limit, remaining if remaining < limit else limit,
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
        remaining = max(0, math.floor((self.period - used) / self._interval + 1e-9))
        reset_at = math.ceil(self._clock.time() + used)
        return Decision(allowed=allowed, limit=self.limit, remaining=min(remaining, self.limit),
                        reset_at=reset_at, retry_after=max(1, math.ceil(retry_after)) if not allowed else 0)

    def _evict(self, now: float) -> None:
        self._tat = {k: t for k, t in self._tat.items() if t > now}
        excess = len(self._tat) - int(self._max_keys * 0.9)
        if excess > 0:
            for key in list(self._tat)[:excess]:
                del self._tat[key]


@dataclass(frozen=True, slots=True)
class RateLimits:
    """The two request limits of the API: per principal and per client address."""

    enabled: bool
    authenticated: RateLimiter
    unauthenticated: RateLimiter

    @classmethod
    def per_hour(cls, *, enabled: bool, authenticated: int, unauthenticated: int, clock: Clock,
                 max_keys: int) -> RateLimits:
        """Limits of so many requests per hour."""
        return cls(enabled=enabled,
                   authenticated=RateLimiter(authenticated, 3600, clock, max_keys=max_keys),
                   unauthenticated=RateLimiter(unauthenticated, 3600, clock, max_keys=max_keys))
