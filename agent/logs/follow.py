"""Reading a service's log forward from a seq: the body of ``logs?follow=true`` (and of
non-follow reads that start at ``since`` or at a resume point).

A reader holds a file descriptor, so a rotation (a rename) does not disturb it: at the end of
its file it checks whether the active file is still the same inode; if not, it reads what is
left of the old one (lines may have landed just before the rotation), then finds the file
holding the next seq and goes on there. Lines carry their seq, so nothing is skipped or
repeated, whether the follower was fast, slow, or rotated past. App restarts change nothing:
the log of a service is one sequence.

Reads are small ``pread`` calls on the event loop (page-cache reads of a file the agent just
wrote); locating a start position is done in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

from agent.logs.files import LogFiles
from agent.logs.format import LogLine, parse_line
from agent.logs.manager import LogManager

__all__ = ["LogReader"]

_CHUNK = 256 * 1024


@dataclass
class LogReader:
    """Lines of one service with seq >= ``start_seq``, oldest first, in batches.

    ``follow=False`` stops at the current end of the log; ``follow=True`` goes on until the
    service's log is closed or the agent stops, yielding an empty batch every ``idle``
    seconds without lines (so that callers can send keep-alives or notice a gone client).
    """

    manager: LogManager
    service_id: str
    start_seq: int
    stream: str | None = None
    follow: bool = False
    idle: float = 15.0

    async def batches(self) -> AsyncIterator[list[LogLine]]:
        files = self.manager.files(self.service_id)
        next_seq = self.start_seq
        fd, offset = await asyncio.to_thread(_open_at, files, next_seq)
        buf = b""
        rotated = False
        try:
            while True:
                changed = self.manager.changed(self.service_id)
                data = os.pread(fd, _CHUNK, offset)
                if data:
                    offset += len(data)
                    buf += data
                    cut = buf.rfind(b"\n") + 1
                    if not cut:
                        continue
                    lines, buf = buf[:cut], buf[cut:]
                    batch = []
                    for raw in lines.split(b"\n")[:-1]:
                        line = parse_line(raw)
                        if line is None or line.seq < next_seq:
                            continue
                        next_seq = line.seq + 1
                        if self.stream is None or line.stream == self.stream:
                            batch.append(line)
                    if batch:
                        yield batch
                    continue
                if rotated or not _is_active(fd, files):
                    if not rotated:
                        rotated = True  # read once more: lines may have landed before the rename
                        continue
                    os.close(fd)
                    fd = -1
                    fd, offset = await asyncio.to_thread(_open_at, files, next_seq)
                    buf, rotated = b"", False
                    continue
                if not self.follow or changed is None:
                    return
                try:
                    await asyncio.wait_for(changed.wait(), self.idle)
                except TimeoutError:
                    yield []
        finally:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)


def _is_active(fd: int, files: LogFiles) -> bool:
    try:
        return os.fstat(fd).st_ino == files.active.stat().st_ino
    except FileNotFoundError:
        return True  # no active file (yet): nothing to switch to


def _open_at(files: LogFiles, seq: int) -> tuple[int, int]:
    """An open descriptor on the file holding ``seq`` (or the next line), and the offset."""
    for _ in range(10):
        pos = files.locate_seq(seq)
        try:
            fd = os.open(pos.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if files.directory.exists():
                continue  # renamed between locating and opening
            # The service is being deleted: an empty source; the reader ends on its own.
            return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC), 0
        if os.fstat(fd).st_ino == pos.inode or pos.inode == 0:
            return fd, pos.offset
        os.close(fd)  # rotated between locating and opening: locate again
    raise OSError("the log kept rotating while a reader tried to open it")
