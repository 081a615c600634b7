"""Timestamps: stored as epoch seconds (REAL), shown to clients as UTC ``datetime``s."""

from __future__ import annotations

import time
from datetime import UTC, datetime

__all__ = ["from_epoch", "json_time", "to_epoch"]

# pydantic reads a number above this as milliseconds; json_time only handles plain seconds.
_SECONDS_LIMIT = 2e10


def from_epoch(ts: float) -> datetime:
    """The UTC datetime of an epoch timestamp."""
    return datetime.fromtimestamp(ts, tz=UTC)


def to_epoch(value: datetime) -> float:
    """Epoch seconds of an aware datetime (naive ones are taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def json_time(ts: float) -> str:
    """The text pydantic writes for a ``datetime`` field validated from the epoch float ``ts``.

    Byte for byte, including pydantic's rounding of the microseconds (half away from zero,
    where ``datetime.fromtimestamp`` rounds half to even), so responses serialized from
    rows directly are identical to responses built through the models. Used on list
    endpoints, where validating every row into a model just to serialize it again is most of
    the cost.
    """
    if not 0 <= ts < _SECONDS_LIMIT:
        return _pydantic_json_time(ts)
    seconds = int(ts)
    scaled = (ts - seconds) * 1_000_000.0
    micros = int(scaled)
    if scaled - micros >= 0.5:
        micros += 1
        if micros == 1_000_000:
            seconds, micros = seconds + 1, 0
    t = time.gmtime(seconds)
    text = (f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"
            f"T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}")
    return f"{text}Z" if micros == 0 else f"{text}.{micros:06d}Z"


def _pydantic_json_time(ts: float) -> str:
    from pydantic import TypeAdapter  # rare: negative or out-of-range timestamps

    return TypeAdapter(datetime).dump_json(TypeAdapter(datetime).validate_python(ts)).decode()[1:-1]
