"""History rings: validation of window/step, averages per step, bounded memory."""

from __future__ import annotations

import pytest

from agent.metrics.history import MAX_POINTS, History, HistoryPlan, format_duration
from agent.testing import FakeClock

T0 = 1_699_999_200.0  # a whole hour in epoch time, so buckets align with it


def _history(**kw: int | float) -> History:
    options = {"interval": 5.0, "recent": 900, "history": 86_400, "resolution": 60}
    options.update(kw)
    return History(**options)  # type: ignore[arg-type]


def _fill(history: History, clock: FakeClock, seconds: float, value: float | None = None,
          every: float = 5.0) -> None:
    """Append one sample every ``every`` seconds; the value is the time since T0 unless given."""
    steps = int(seconds / every)
    for _ in range(steps):
        clock.advance(every)
        history.append(clock.time(), {"cpu": value if value is not None else clock.time() - T0})


@pytest.mark.parametrize(("window", "step", "planned"), [
    (2 * 86_400, None, (86_400, 1440)),  # capped at the history kept
    (60, 120, (120, 120)),  # the step never exceeds the window: the window grows to one step
    (60, 1, (60, 5)),  # not finer than the sampling interval
    (3600, 30, (3600, 60)),  # not finer than the 1m resolution kept past 15m
    (86_400, 59, (86_400, 60)),
    (None, 2 * 86_400, (86_400, 86_400)),
])
def test_plan_brings_unanswerable_requests_into_range(window: int | None, step: int | None,
                                                      planned: tuple[int, int]) -> None:
    """Windows and steps beyond what is kept are clamped, never refused, and the plan says so."""
    plan = _history().plan(window, step)
    assert plan is not None and (plan.window, plan.step) == planned


def test_plan_bounds_the_number_of_points() -> None:
    """A step too fine for MAX_POINTS points is coarsened to fit exactly."""
    history = _history(interval=1.0, recent=3600, history=86_400, resolution=60)
    assert history.plan(86_400, 60) is not None and MAX_POINTS == 86_400 / 60
    plan = _history(interval=1.0, recent=3600).plan(3600, 2)
    assert plan is not None and plan.window / plan.step <= MAX_POINTS


def test_plan_defaults_and_ring_choice() -> None:
    """No window: no history; a window alone gets ~60 points; short windows use every sample."""
    history = _history()
    assert history.plan(None, None) is None
    assert history.plan(None, 60) == HistoryPlan(window=3600, step=60, use_recent=False)
    short = history.plan(600, None)
    assert short is not None and short.use_recent and short.step == 10
    long = history.plan(86_400, None)
    assert long is not None and not long.use_recent and long.step == 1440
    assert history.plan(300, 5) is not None


def test_recent_window_averages_each_step() -> None:
    """window=1m&step=10s gives aligned buckets each averaging its two 5 s samples."""
    clock = FakeClock(start=T0)
    history = _history()
    _fill(history, clock, 120)  # samples at T0+5 ... T0+120, value = seconds since T0
    plan = history.plan(60, 10)
    assert plan is not None
    series = history.query(plan, ["cpu"], now=clock.time())
    assert series.timestamps[0] == T0 + 60 and series.timestamps[-1] == T0 + 120
    assert series.step == 10 and series.window == 60
    # bucket [T0+60, T0+70) holds only T0+65 (T0+60 is outside the window's open start)
    assert series.values["cpu"][:4] == [65.0, 72.5, 82.5, 92.5]
    assert series.values["cpu"][-1] == 120.0  # the last bucket has just begun


def test_gaps_are_null_and_unknown_series_are_all_null() -> None:
    """A step without samples, and a series never recorded, show null values."""
    clock = FakeClock(start=T0)
    history = _history()
    _fill(history, clock, 30, value=1.0)
    clock.advance(60)  # a minute without samples
    _fill(history, clock, 30, value=3.0)
    plan = history.plan(120, 30)
    assert plan is not None
    series = history.query(plan, ["cpu", "nope"], now=clock.time())
    assert None in series.values["cpu"]
    assert {v for v in series.values["cpu"] if v is not None} == {1.0, 3.0}
    assert series.values["nope"] == [None] * len(series.timestamps)


def test_long_window_uses_minute_averages_and_the_minute_in_progress() -> None:
    """Over 15 minutes the answer comes from per-minute averages, the current minute included."""
    clock = FakeClock(start=T0)
    history = _history()
    _fill(history, clock, 3595, value=10.0)
    _fill(history, clock, 35, value=40.0)  # T0+3600 .. T0+3630: the minute still pending
    plan = history.plan(3600, 600)
    assert plan is not None and not plan.use_recent
    series = history.query(plan, ["cpu"], now=clock.time())
    assert series.values["cpu"][-1] == 40.0  # the pending minute alone in the last bucket
    assert all(v == 10.0 for v in series.values["cpu"][:-1] if v is not None)
    one_hour = history.plan(3600, 3600)
    assert one_hour is not None
    combined = history.query(one_hour, ["cpu"], now=clock.time())
    assert combined.values["cpu"][-1] is not None and 10.0 < combined.values["cpu"][-1] <= 40.0


def test_memory_is_fixed_however_long_it_runs() -> None:
    """The rings never grow: a day of samples at 1 s takes the same memory as one sample."""
    clock = FakeClock(start=T0)
    history = _history(interval=1.0)
    _fill(history, clock, 120, every=1.0)  # both rings now hold the series
    size = history.memory_bytes()
    _fill(history, clock, 86_400 + 3600, every=1.0)
    assert history.memory_bytes() == size
    # 4 bytes per point: recent (900) + long (1440) points, plus 8-byte timestamp columns
    assert size == (4 + 8) * (900 + 1440)
    plan = history.plan(86_400, 3600)
    assert plan is not None
    series = history.query(plan, ["cpu"], now=clock.time())
    assert len(series.timestamps) == 25 and series.values["cpu"][-1] is not None


def test_forget_drops_a_series_everywhere() -> None:
    """A deleted service's series disappear from both rings."""
    clock = FakeClock(start=T0)
    history = _history()
    clock.advance(5)
    history.append(clock.time(), {"cpu": 1.0, "service:svc_1:rss_bytes": 5.0})
    assert "service:svc_1:rss_bytes" in history.series_names
    history.forget(["service:svc_1:rss_bytes"])
    assert history.series_names == ["cpu"]


def test_format_duration_uses_the_largest_whole_unit() -> None:
    """Durations are shown the way they are written in queries."""
    assert [format_duration(s) for s in (30, 90, 300, 3600, 86_400, 5400)] == [
        "30s", "90s", "5m", "1h", "1d", "90m"]
