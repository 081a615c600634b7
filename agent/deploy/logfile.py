"""The deployment log: every line of a deploy (stages, git, toolchain, build output), timestamped.

One file per deployment, appended to by each run, lines shaped
``2024-05-01T12:00:00.123Z [build] npm warn deprecated ...``. The API serves it with tail and
follow like a service's log. Lines are written as they arrive (no buffering), so a follower sees
a build as it runs. A secret handed to ``DeployLog(secrets=...)`` never reaches the file.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

from agent.clock import Clock
from agent.deploy.errors import scrub

__all__ = ["DeployLog", "LineSink", "format_line"]

LineSink = Callable[[str], Awaitable[None]]
"""An async callable taking one line of progress text."""

MAX_LINE = 16 * 1024


def format_line(ts: float, source: str, text: str) -> str:
    """One log line (with its newline): ISO-8601 UTC time to the millisecond, source, text."""
    stamp = datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    text = text.rstrip("\r\n").replace("\r", "")
    if len(text) > MAX_LINE:
        text = text[:MAX_LINE] + " [line truncated]"
    return f"{stamp} [{source}] {text}\n"


class DeployLog:
    """Appends timestamped lines to ``path`` (created 0600 with its parent dirs 0700)."""

    def __init__(self, path: Path, clock: Clock, *, secrets: Iterable[str] = ()) -> None:
        self.path = path
        self._clock = clock
        self._secrets = tuple(s for s in secrets if s)

    def write(self, lines: Iterable[str], source: str = "deploy") -> None:
        """Append ``lines``, all stamped with the current time. Small writes: safe on the loop."""
        now = self._clock.time()
        data = "".join(format_line(now, source, scrub(line, self._secrets)) for line in lines)
        if not data:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data.encode("utf-8", errors="replace"))
        finally:
            os.close(fd)

    async def line(self, text: str) -> None:
        """Append one ``[deploy]`` line; usable as a ``LineSink``."""
        self.write([text], "deploy")

    def sink(self, source: str) -> LineSink:
        """A ``LineSink`` writing lines tagged ``source``."""

        async def _sink(text: str) -> None:
            self.write([text], source)

        return _sink

    def read_text(self) -> str:
        """The whole log (tests and small logs only)."""
        try:
            return self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
