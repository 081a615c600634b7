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
from collections.abc import Iterable, Mapping, Sequence

from agent.records import record

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
    """The timestamp column of a fixed-capacity ring, and where the next row goes."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.times = array("d", [_NAN]) * capacity
        self.head = 0
        self.count = 0

    def advance(self, timestamp: float) -> int:
        """Stamp the next slot with ``timestamp`` and return it (the oldest row goes)."""
        slot = self.head
        self.times[slot] = timestamp
        self.head = (slot + 1) % self.capacity
        self.count = min(self.count + 1, self.capacity)
        return slot

    def slots(self) -> Iterable[int]:
        """Slot indices from oldest to newest."""
        start = (self.head - self.count) % self.capacity
        return ((start + i) % self.capacity for i in range(self.count))


class _Column:
    """One series: its recent samples, its long-term averages (allocated with its first
    average), and the sum and count of the period being averaged."""

    __slots__ = ("count", "long", "recent", "sum")

    def __init__(self, recent: int) -> None:
        self.recent = array("f", [_NAN]) * recent
        self.long: array[float] | None = None
        self.sum = 0.0
        self.count = 0


@record
class HistoryPlan:
    """A validated history request: the window, the step, and which ring answers it."""

    window: int
    step: int
    use_recent: bool


@record
class Series:
    """The answer to a history query: bucket start times and one value list per series
    (``None`` where a bucket holds no sample)."""

    window: int
    step: int
    timestamps: list[float]
    values: dict[str, list[float | None]]


class History:
    """Every series' recent samples and long-term averages.

    ``append_row`` is the sampler's path: the series names come as a tuple the caller
    reuses while the set of series stays the same, so a sample is one pass over its values
    with no dictionary built or searched.
    """

    def __init__(self, *, interval: float, recent: int, history: int, resolution: int) -> None:
        self.interval = interval
        self.recent_span = recent
        self.history_span = history
        self.resolution = resolution
        self._recent = _Ring(max(1, math.ceil(recent / interval)))
        self._long = _Ring(max(1, math.ceil(history / resolution)))
        self._columns: dict[str, _Column] = {}
        self._bucket: float | None = None
        # The columns of the last row's names, in order, and the other columns (a gap).
        self._names: tuple[str, ...] | None = None
        self._layout: list[_Column] = []
        self._absent: list[_Column] = []

    @property
    def series_names(self) -> list[str]:
        return sorted(self._columns)

    def memory_bytes(self) -> int:
        """Bytes held by the value and timestamp columns."""
        longs = sum(1 for c in self._columns.values() if c.long is not None)
        return (self._recent.capacity * (8 + 4 * len(self._columns))
                + self._long.capacity * (8 + 4 * longs))

    def append(self, timestamp: float, values: Mapping[str, float]) -> None:
        """Record one sample of every series (a series absent from ``values`` gets a gap)."""
        self.append_row(timestamp, tuple(values), tuple(values.values()))

    def append_row(self, timestamp: float, names: tuple[str, ...],
                   values: Sequence[float]) -> None:
        """Record one sample: ``values[i]`` of series ``names[i]`` (names unique); every
        other series gets a gap. Pass the same ``names`` tuple while the series do not
        change: it is then recognised at once."""
        if names is not self._names and names != self._names:
            self._bind(names)
        bucket = math.floor(timestamp / self.resolution) * self.resolution
        if self._bucket is not None and bucket != self._bucket:
            self._flush()
        self._bucket = bucket
        slot = self._recent.advance(timestamp)
        for column, value in zip(self._layout, values, strict=True):
            column.recent[slot] = value
            if value - value == 0.0:  # finite: neither NaN nor infinite
                column.sum += value
                column.count += 1
        for column in self._absent:
            column.recent[slot] = _NAN

    def _bind(self, names: tuple[str, ...]) -> None:
        capacity = self._recent.capacity
        layout = []
        for name in names:
            column = self._columns.get(name)
            if column is None:
                column = self._columns[name] = _Column(capacity)
            layout.append(column)
        wanted = set(names)
        self._names = names
        self._layout = layout
        self._absent = [c for name, c in self._columns.items() if name not in wanted]

    def _flush(self) -> None:
        """Close the period being averaged: one row of the long ring."""
        if self._bucket is None:
            return
        capacity = self._long.capacity
        slot = self._long.advance(self._bucket)
        for column in self._columns.values():
            if column.count:
                if column.long is None:
                    column.long = array("f", [_NAN]) * capacity
                column.long[slot] = column.sum / column.count
            elif column.long is not None:
                column.long[slot] = _NAN
            column.sum = 0.0
            column.count = 0

    def forget(self, names: Iterable[str]) -> None:
        """Drop series (a deleted service's)."""
        for name in names:
            if self._columns.pop(name, None) is not None:
                self._names = None  # rebind on the next row

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

        def bucket_of(timestamp: float) -> int:
            # A row stamped before the window (a long-ring average that straddles its
            # start) counts in the first bucket.
            return int((max(timestamp, start) - first) // step)

        ring = self._recent if plan.use_recent else self._long
        # A recent row is one instant; a long row averages [t, t + resolution).
        span = 0.0 if plan.use_recent else float(self.resolution)
        times = ring.times
        picks = []  # (bucket, slot) of each row in the window, oldest first
        for slot in ring.slots():
            timestamp = times[slot]
            if start < timestamp + span and timestamp <= now:
                k = bucket_of(timestamp)
                if k < count:
                    picks.append((k, slot))
        pending = -1  # the bucket of the period still being averaged, if shown
        if not plan.use_recent and self._bucket is not None and self._bucket <= now:
            k = bucket_of(self._bucket)
            pending = k if k < count else -1

        values: dict[str, list[float | None]] = {}
        for name in names:
            sums = [0.0] * count
            counts = [0] * count
            column = self._columns.get(name)
            if column is not None:
                data = column.recent if plan.use_recent else column.long
                if data is not None:
                    for k, slot in picks:
                        value = data[slot]
                        if value == value:  # not NaN
                            sums[k] += value
                            counts[k] += 1
                if pending >= 0 and column.count:
                    sums[pending] += column.sum / column.count
                    counts[pending] += 1
            values[name] = [round(s / c, 6) if c else None
                            for s, c in zip(sums, counts, strict=True)]
        return Series(window=plan.window, step=step,
                      timestamps=[first + k * step for k in range(count)], values=values)
