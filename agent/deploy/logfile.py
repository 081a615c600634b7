"""The deployment log: every line of a deploy (stages, git, toolchain, build output), stamped.

One file per deployment, appended to by each run, in the same stamped-line shape as service
logs (``<seq> <timestamp> <stream> <text>``) so the same tail/follow/SSE readers serve it::

    17 2024-05-01T12:00:00.123456Z build npm warn deprecated ...

``seq`` counts the file's lines from 1 and continues across runs (it is read back from the
last line when a run starts; runs of one service never overlap, the queue sees to that).
With ``max_bytes`` the file is rotated once it would grow past it: it becomes ``<name>.1``
(one older file is kept) and the numbering goes on in a new file.
``timestamp`` is UTC with microseconds, fixed width. ``stream`` says where a line comes from:
``deploy`` (the pipeline's own notes), ``git``, ``toolchain`` or ``build``. Lines are written as
they arrive, so a follower sees a build as it runs. A secret handed to
``DeployLog(secrets=...)`` never reaches the file. ``on_write`` is called (on the event loop)
after each write, so that followers of the log wake up at once.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

from agent.clock import Clock
from agent.deploy.errors import scrub

__all__ = ["DeployLog", "LineSink", "format_line", "format_timestamp"]

LineSink = Callable[[str], Awaitable[None]]
"""An async callable taking one line of progress text."""

MAX_LINE = 16 * 1024  # characters; service logs split at 64 KiB, so a line always fits


def format_timestamp(ts: float) -> str:
    """``2024-05-01T12:00:00.123456Z``: UTC, microseconds, fixed width (sortable as text)."""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_line(seq: int, ts: float, source: str, text: str) -> str:
    """One log line, newline included; long lines are cut at ``MAX_LINE`` characters."""
    text = text.rstrip("\r\n").replace("\r", "").replace("\n", " ")
    if len(text) > MAX_LINE:
        text = text[:MAX_LINE] + " [line truncated]"
    return f"{seq} {format_timestamp(ts)} {source} {text}\n"


def _last_seq(path: Path) -> int:
    """The seq of the last complete line of ``path`` (0 when empty or absent)."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - 2 * MAX_LINE - 256))
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return 0
    for line in reversed(lines):
        head = line.split(b" ", 1)[0]
        if head.isdigit():
            return int(head)
    return 0


class DeployLog:
    """Appends stamped lines to ``path`` (created 0600 with its parent dirs 0700)."""

    def __init__(self, path: Path, clock: Clock, *, secrets: Iterable[str] = (),
                 on_write: Callable[[Path], None] | None = None,
                 max_bytes: int | None = None) -> None:
        self.path = path
        self._clock = clock
        self._secrets = tuple(s for s in secrets if s)
        self._seq: int | None = None
        self._on_write = on_write
        self._max_bytes = max_bytes

    def write(self, lines: Iterable[str], source: str = "deploy") -> None:
        """Append ``lines``, all stamped with the current time. Small writes: safe on the loop."""
        items = list(lines)
        if not items:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self._seq is None:
            self._seq = _last_seq(self.path)
        now = self._clock.time()
        parts = []
        for line in items:
            self._seq += 1
            parts.append(format_line(self._seq, now, source, scrub(line, self._secrets)))
        data = "".join(parts)
        if self._max_bytes is not None:
            self._rotate(len(data))
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data.encode("utf-8", errors="replace"))
        finally:
            os.close(fd)
        if self._on_write is not None:
            self._on_write(self.path)

    def _rotate(self, adding: int) -> None:
        """Past ``max_bytes``, the file becomes ``<name>.1`` (replacing an older one); seq goes
        on in the new file, so readers find every line by its seq across the rotation."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size and size + adding > (self._max_bytes or 0):
            self.path.replace(self.path.with_name(self.path.name + ".1"))

    async def line(self, text: str) -> None:
        """Append one ``deploy`` line; usable as a ``LineSink``."""
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
