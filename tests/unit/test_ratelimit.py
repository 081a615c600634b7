"""The GCRA rate limiter: burst, refill, headers, bounded memory."""

from __future__ import annotations

import random

import pytest

from agent.ratelimit import RateLimiter
from agent.testing import FakeClock


def test_allows_the_limit_then_refuses() -> None:
    """limit requests pass at once; the next is refused with a retry delay."""
    clock = FakeClock()
    limiter = RateLimiter(60, 3600, clock)
    decisions = [limiter.charge("k") for _ in range(60)]
    assert all(d.allowed for d in decisions)
    assert [d.remaining for d in decisions[:3]] == [59, 58, 57]
    assert decisions[-1].remaining == 0
    refused = limiter.charge("k")
    assert not refused.allowed and refused.remaining == 0
    assert refused.retry_after == 60  # one request every 3600 / 60 seconds
    assert refused.headers()["Retry-After"] == "60"


def test_burst_caps_requests_at_once_and_keeps_the_pace() -> None:
    """With a burst of 5: 5 pass at once, then one every period/limit seconds; the limit
    header stays the hourly limit and remaining never exceeds the burst."""
    clock = FakeClock()
    limiter = RateLimiter(3600, 3600, clock, burst=5)
    decisions = [limiter.charge("k") for _ in range(5)]
    assert all(d.allowed for d in decisions) and decisions[0].limit == 3600
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0]
    refused = limiter.charge("k")
    assert not refused.allowed and refused.retry_after == 1
    clock.advance(1)
    assert limiter.charge("k").allowed and not limiter.charge("k").allowed
    clock.advance(3600)
    assert limiter.peek("k").remaining == 5
    assert RateLimiter(10, 100, clock, burst=50).burst == 10  # never above the limit


def test_refills_over_time() -> None:
    """After period/limit seconds one more request passes; after the period, all of them."""
    clock = FakeClock()
    limiter = RateLimiter(10, 100, clock)
    for _ in range(10):
        limiter.charge("k")
    assert not limiter.charge("k").allowed
    clock.advance(10)
    assert limiter.charge("k").allowed
    assert not limiter.charge("k").allowed
    clock.advance(100)
    assert limiter.peek("k").remaining == 10


def test_reset_header_is_when_the_allowance_is_full() -> None:
    """X-RateLimit-Reset is the epoch second when the whole allowance is back."""
    clock = FakeClock(start=1_700_000_000.0)
    limiter = RateLimiter(10, 100, clock)
    decision = limiter.charge("k")
    assert decision.reset_at == 1_700_000_010
    headers = decision.headers()
    assert headers == {"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "9",
                       "X-RateLimit-Reset": "1700000010"}


def test_refused_requests_do_not_count() -> None:
    """Hammering while refused does not push the recovery further away."""
    clock = FakeClock()
    limiter = RateLimiter(5, 50, clock)
    for _ in range(5):
        limiter.charge("k")
    for _ in range(100):
        assert not limiter.charge("k").allowed
    clock.advance(10)
    assert limiter.charge("k").allowed


def test_keys_are_independent() -> None:
    """One key's usage does not affect another's."""
    limiter = RateLimiter(1, 60, FakeClock())
    assert limiter.charge("a").allowed
    assert not limiter.charge("a").allowed
    assert limiter.charge("b").allowed


def test_memory_is_bounded_with_many_clients() -> None:
    """200,000 distinct clients never grow the table past max_keys."""
    clock = FakeClock()
    limiter = RateLimiter(60, 3600, clock, max_keys=1000)
    largest = 0
    for n in range(200_000):
        limiter.charge(f"ip:{n}")
        largest = max(largest, len(limiter))
        if n % 1000 == 0:
            clock.advance(0.001)
    assert largest <= 1001
    # A recent, still-limited client keeps its state across evictions of idle ones.
    for _ in range(60):
        limiter.charge("busy")
    clock.advance(1)
    for n in range(500):
        limiter.charge(f"late:{n}")
    assert not limiter.charge("busy").allowed


def test_idle_keys_are_dropped_first() -> None:
    """Keys whose allowance is already full again are evicted before active ones."""
    clock = FakeClock()
    limiter = RateLimiter(10, 10, clock, max_keys=100)
    for n in range(100):
        limiter.charge(f"old:{n}")
    clock.advance(20)  # every old key is back to a full allowance
    for n in range(5):
        limiter.charge(f"new:{n}")
    assert len(limiter) == 5


def test_rejects_nonsense_limits() -> None:
    """A limit below 1 or a non-positive period is a programming error."""
    with pytest.raises(ValueError):
        RateLimiter(0, 60, FakeClock())
    with pytest.raises(ValueError):
        RateLimiter(1, 0, FakeClock())


def test_charge_reports_what_peek_reports_right_after() -> None:
    """The written-out allowed path of charge gives the same remaining and reset as the
    general formula (peek at the same instant), for many limits and request patterns."""
    rng = random.Random(11)
    for _ in range(200):
        clock = FakeClock(start=rng.uniform(1e9, 2e9))
        limiter = RateLimiter(rng.randint(1, 5000), rng.choice([1, 60, 3600, 86400]), clock)
        for _ in range(rng.randint(1, 50)):
            clock.advance(rng.choice([0.0, 0.001, rng.uniform(0, 100)]))
            decision = limiter.charge("k")
            if decision.allowed:
                assert decision == limiter.peek("k")
