"""In-memory history of every series, in two bounded rings, and its downsampling.

- The *recent* ring keeps every sample (one per sampler interval) for the ``recent``
  window (default 15 minutes).
- The *long* ring keeps one average per ``history_resolution`` (default 1 minute) for the
  ``history`` window (default 24 hours). The minute being filled is kept aside and shown
  as the newest point.

Each ring stores one timestamp column (float64) and one ``array('f')`` (float32, about
seven significant digits: plenty for a chart) per series, allocated at its full size when
the series first appears, so memory is fixed and known: 4 bytes x (recent points +
history points) per series (about 6.5 KB at the defaults, 9.4 KB with a 1 s interval).
A missing value (a stopped service) is stored as NaN and never shown: it becomes ``null``.

Queries average the samples of each ``step``-long bucket; buckets are aligned to
multiples of the step in epoch time, so the same query gives the same buckets on every
call. Used on the event loop only.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["MAX_POINTS", "History", "HistoryPlan", "Series", "format_duration"]

MAX_POINTS = 1440  # window / step at most: one day at one-minute steps
_NAN = math.nan


def format_duration(seconds: float) -> str:
    """``90`` -> ``90s``, ``300`` -> ``5m``: the largest unit that divides evenly."""
    whole = int(seconds)
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if whole >= size and whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


class _Ring:
    """A fixed-capacity ring of rows sharing one timestamp column."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.times = array("d", [_NAN]) * capacity
        self.columns: dict[str, array[float]] = {}
        self.head = 0
        self.count = 0

    def append(self, timestamp: float, values: Mapping[str, float]) -> None:
        slot = self.head
        self.times[slot] = timestamp
        columns = self.columns
        for name, column in columns.items():
            column[slot] = values.get(name, _NAN)
        for name in values.keys() - columns.keys():
            column = array("f", [_NAN]) * self.capacity
            column[slot] = values[name]
            columns[name] = column
        self.head = (slot + 1) % self.capacity
        self.count = min(self.count + 1, self.capacity)

    def slots(self) -> Iterable[int]:
        """Slot indices from oldest to newest."""
        start = (self.head - self.count) % self.capacity
        return ((start + i) % self.capacity for i in range(self.count))

    def drop(self, names: Iterable[str]) -> None:
        for name in names:
            self.columns.pop(name, None)


class _RowView(Mapping[str, float]):
    """One slot of a ring, read as a mapping from series name to value."""

    __slots__ = ("_ring", "_slot")

    def __init__(self, ring: _Ring, slot: int) -> None:
        self._ring = ring
        self._slot = slot

    def __getitem__(self, name: str) -> float:
        return self._ring.columns[name][self._slot]

    def get(self, name: str, default: float | None = None) -> float:  # type: ignore[override]
        column = self._ring.columns.get(name)
        return column[self._slot] if column is not None else _NAN

    def __iter__(self) -> Iterator[str]:
        return iter(self._ring.columns)

    def __len__(self) -> int:
        return len(self._ring.columns)


@dataclass(frozen=True, slots=True)
class HistoryPlan:
    """A validated history request: the window, the step, and which ring answers it."""

    window: int
    step: int
    use_recent: bool


@dataclass(frozen=True, slots=True)
class Series:
    """The answer to a history query: bucket start times and one value list per series
    (``None`` where a bucket holds no sample)."""

    window: int
    step: int
    timestamps: list[float]
    values: dict[str, list[float | None]]


class History:
    """Every series' recent samples and long-term averages."""

    def __init__(self, *, interval: float, recent: int, history: int, resolution: int) -> None:
        self.interval = interval
        self.recent_span = recent
        self.history_span = history
        self.resolution = resolution
        self._recent = _Ring(max(1, math.ceil(recent / interval)))
        self._long = _Ring(max(1, math.ceil(history / resolution)))
        self._bucket: float | None = None
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    @property
    def series_names(self) -> list[str]:
        return sorted(self._recent.columns.keys() | self._long.columns.keys())

    def memory_bytes(self) -> int:
        """Bytes held by the value and timestamp columns."""
        rings = (self._recent, self._long)
        return sum(r.capacity * (8 + 4 * len(r.columns)) for r in rings)

    def append(self, timestamp: float, values: Mapping[str, float]) -> None:
        """Record one sample of every series (a series absent from ``values`` gets a gap)."""
        self._recent.append(timestamp, values)
        bucket = math.floor(timestamp / self.resolution) * self.resolution
        if self._bucket is not None and bucket != self._bucket:
            self._flush()
        self._bucket = bucket
        for name, value in values.items():
            if math.isfinite(value):
                self._sums[name] = self._sums.get(name, 0.0) + value
                self._counts[name] = self._counts.get(name, 0) + 1

    def _pending(self) -> dict[str, float]:
        return {name: self._sums[name] / count for name, count in self._counts.items()}

    def _flush(self) -> None:
        if self._bucket is not None:
            self._long.append(self._bucket, self._pending())
        self._sums.clear()
        self._counts.clear()

    def forget(self, names: Iterable[str]) -> None:
        """Drop series (a deleted service's)."""
        names = list(names)
        self._recent.drop(names)
        self._long.drop(names)
        for name in names:
            self._sums.pop(name, None)
            self._counts.pop(name, None)

    def plan(self, window: int | None, step: int | None) -> HistoryPlan | None:
        """The window and step (seconds) a query gets; None when no history was asked.

        Well-formed requests are never refused: like Prometheus' range queries, what cannot be
        answered is brought into range and the response states the window and step used. The
        window is capped at the history kept; the step is at least the resolution kept for that
        window, at most the window, and coarse enough for at most MAX_POINTS points. Without a
        step, about 60 points are returned; a step without a window covers 60 steps.
        """
        if window is None:
            if step is None:
                return None
            window = step * 60
        window = min(window, self.history_span)
        use_recent = window <= self.recent_span
        resolution = math.ceil(self.interval) if use_recent else self.resolution
        if step is None:
            step = math.ceil(window / 60)
        step = max(min(step, self.history_span), resolution, math.ceil(window / MAX_POINTS))
        window = max(window, step)
        return HistoryPlan(window=window, step=step, use_recent=use_recent)

    def query(self, plan: HistoryPlan, names: Sequence[str], *, now: float) -> Series:
        """The series ``names`` over ``(now - window, now]``, averaged per step."""
        step = plan.step
        start = now - plan.window
        first = math.floor(start / step) * step
        count = int((now - first) // step) + 1
        sums = {name: [0.0] * count for name in names}
        counts = {name: [0] * count for name in names}

        def add(timestamp: float, row: Mapping[str, float]) -> None:
            # A row stamped before the window (a long-ring average that straddles its
            # start) counts in the first bucket.
            k = int((max(timestamp, start) - first) // step)
            if k >= count:
                return
            for name in names:
                value = row.get(name, _NAN)
                if value == value:  # not NaN
                    sums[name][k] += value
                    counts[name][k] += 1

        ring = self._recent if plan.use_recent else self._long
        # A recent row is one instant; a long row averages [t, t + resolution).
        span = 0.0 if plan.use_recent else float(self.resolution)
        times = ring.times
        for slot in ring.slots():
            timestamp = times[slot]
            if start < timestamp + span and timestamp <= now:
                add(timestamp, _RowView(ring, slot))
        if not plan.use_recent and self._bucket is not None and self._bucket <= now:
            add(self._bucket, self._pending())

        values: dict[str, list[float | None]] = {}
        for name in names:
            values[name] = [round(s / c, 6) if c else None
                            for s, c in zip(sums[name], counts[name], strict=True)]
        return Series(window=plan.window, step=step,
                      timestamps=[first + k * step for k in range(count)], values=values)
