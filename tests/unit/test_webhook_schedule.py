"""The retry schedule and Retry-After parsing."""

from __future__ import annotations

import random
from email.utils import format_datetime

from agent.timefmt import from_epoch
from agent.webhooks.schedule import RetrySchedule, parse_retry_after


def test_default_schedule_spans_about_three_days() -> None:
    """With the defaults the 14 attempts span about 69 hours, each wait 3x the last up to 12 h."""
    schedule = RetrySchedule()
    waits = [schedule.nominal_delay(n) for n in range(1, 14)]
    assert waits[:8] == [10, 30, 90, 270, 810, 2430, 7290, 21870]
    assert waits[8:] == [43200] * 5
    assert 2.5 * 86400 < schedule.total_nominal() < 3.5 * 86400
    assert schedule.next_delay(14) is None


def test_jitter_stays_within_20_percent() -> None:
    """Every actual wait is within +-20 % of the nominal one, and they are not all equal."""
    schedule, rng = RetrySchedule(), random.Random(7)
    seen = set()
    for attempt in range(1, 14):
        for _ in range(50):
            delay = schedule.next_delay(attempt, rng=rng)
            assert delay is not None
            nominal = schedule.nominal_delay(attempt)
            assert 0.8 * nominal <= delay <= 1.2 * nominal
            seen.add(round(delay, 3))
    assert len(seen) > 100


def test_retry_after_waits_longer_but_never_past_the_cap() -> None:
    """Retry-After lengthens a wait, never shortens it, and is capped at max_delay."""
    schedule, rng = RetrySchedule(max_delay=3600), random.Random(1)
    assert schedule.next_delay(1, retry_after=600, rng=rng) == 600
    assert schedule.next_delay(1, retry_after=10**9, rng=rng) == 3600
    short = schedule.next_delay(5, retry_after=1, rng=rng)
    assert short is not None and short >= 0.8 * schedule.nominal_delay(5)


def test_parse_retry_after_forms() -> None:
    """Delta-seconds and HTTP dates are understood; junk and naive dates are ignored."""
    now = 1_700_000_000.0
    assert parse_retry_after("120", now) == 120
    assert parse_retry_after(format_datetime(from_epoch(now + 300), usegmt=True), now) == 300
    assert parse_retry_after(format_datetime(from_epoch(now - 300), usegmt=True), now) == 0
    for junk in (None, "", "soon", "-5", "1.5", "Mon, 99 Foo 2024"):
        assert parse_retry_after(junk, now) is None
