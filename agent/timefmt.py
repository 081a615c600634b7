"""Timestamps: stored as epoch seconds (REAL), shown to clients as UTC ``datetime``s."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["from_epoch", "to_epoch"]


def from_epoch(ts: float) -> datetime:
    """The UTC datetime of an epoch timestamp."""
    return datetime.fromtimestamp(ts, tz=UTC)


def to_epoch(value: datetime) -> float:
    """Epoch seconds of an aware datetime (naive ones are taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()
