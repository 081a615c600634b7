"""The stamped log line: how the agent writes each captured line and how readers parse it.

One line per captured line, in the service's ``logs/app.log``::

    <seq> <timestamp> <stream> <text>\\n
    1042 2024-05-01T12:00:00.123456Z stderr something went wrong

- ``seq`` counts every line of the service from 1, across rotations, app restarts and agent
  restarts: it is the SSE event id and the resume point (``Last-Event-ID``).
- ``timestamp`` is UTC with microseconds and fixed width, so timestamps compare as bytes.
  It is the time the agent captured the line (within milliseconds of the write while the
  agent runs; lines written while the agent was down are stamped when it comes back).
- ``stream`` is ``stdout``, ``stderr`` or ``agent`` (notes of the supervisor itself).
- ``text`` is the raw bytes the app wrote, without the newline; it may be invalid UTF-8.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.records import record

__all__ = [
    "MAX_LINE",
    "STREAMS",
    "LogLine",
    "encode_line",
    "format_timestamp",
    "parse_line",
    "parse_since",
]

#: Longer lines are split into several stamped lines of at most this many bytes.
MAX_LINE = 64 * 1024
STREAMS = ("stdout", "stderr", "agent")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


_MAX_EPOCH = 253_402_300_799.0  # 9999-12-31T23:59:59Z


def format_timestamp(epoch: float) -> bytes:
    """``2024-05-01T12:00:00.123456Z`` (fixed width, sortable as bytes; clamped to years
    1970-9999)."""
    epoch = min(max(epoch, 0.0), _MAX_EPOCH)
    secs = int(epoch)
    micros = round((epoch - secs) * 1_000_000)
    if micros >= 1_000_000:
        secs, micros = secs + 1, micros - 1_000_000
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{micros:06d}Z").encode()


def encode_line(seq: int, timestamp: bytes, stream: str, text: bytes) -> bytes:
    """One stamped line, newline included."""
    return b"%d %s %s %s\n" % (seq, timestamp, stream.encode(), text)


@record
class LogLine:
    """One parsed stamped line."""

    seq: int
    timestamp: bytes
    stream: str
    text: bytes

    def as_text(self) -> bytes:
        """The line for ``text/plain`` readers: ``<timestamp> <stream> <text>\\n``."""
        return b"%s %s %s\n" % (self.timestamp, self.stream.encode(), self.text)

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "timestamp": self.timestamp.decode(), "stream": self.stream,
                "line": self.text.decode(errors="replace")}

    def as_json(self) -> bytes:
        return json.dumps(self.as_dict(), ensure_ascii=False, separators=(",", ":")).encode()


def parse_line(raw: bytes) -> LogLine | None:
    """Parse one stamped line (with or without its newline); None when malformed."""
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    parts = raw.split(b" ", 3)
    if len(parts) < 3 or not parts[0].isdigit() or len(parts[1]) != 27:
        return None
    stream = parts[2].decode(errors="replace")
    return LogLine(seq=int(parts[0]), timestamp=parts[1], stream=stream,
                   text=parts[3] if len(parts) == 4 else b"")


def parse_since(value: str, now: float) -> bytes:
    """``since`` as a timestamp to compare stamped lines with.

    Accepts an RFC 3339 time (``2024-05-01T12:00:00Z``, with or without fraction or offset)
    or a duration back from now (``30s``, ``15m``, ``2h``, ``1d``). Raises ValueError.
    """
    value = value.strip()
    match = _DURATION.match(value)
    if match:
        seconds = float(match[1]) * _UNITS[match[2]]
        return format_timestamp(now - min(seconds, now))
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError("expected an RFC 3339 time or a duration such as 15m") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    epoch = (moment - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(seconds=1)
    return format_timestamp(max(0.0, epoch))
