"""A service's stamped log files: rotation, and reading without reading whole files.

``app.log`` is always the active file (a fixed name, for ``tail -F`` users); rotation renames
it to ``app.log.1`` and shifts older ones up to ``app.log.<max_files>``; older files are
deleted. Every line carries its ``seq``, so a position in the log is a seq, whatever file it
is in now.

Reading goes backwards from the end for ``tail`` (a 1 GB file costs a few block reads) and by
bisection for "from seq N" or "since time T". All functions here do blocking I/O: call them
from a thread unless the amount read is small and bounded.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

from agent.logs.format import MAX_LINE, LogLine, parse_line
from agent.records import record

__all__ = ["LogFiles", "Position", "reverse_lines", "tail"]

K = TypeVar("K", int, bytes)  # a key that grows along the log: seq or timestamp
T = TypeVar("T")
_BLOCK = 64 * 1024
_RETRIES = 1000
_HEADER_MAX = 96  # a stamped line's header is far shorter


@record
class Position:
    """A byte offset in one log file (identified by inode, since files get renamed)."""

    path: Path
    inode: int
    offset: int


class LogFiles:
    """The active and rotated stamped log files of one service.

    One writer (the capture's thread) rotates; readers in other threads locate and tail.
    ``generation`` is a sequence lock: odd while a rotation renames files, bumped at its
    start and end; a reader that saw it change retries, so a file renamed under it is never
    mistaken for another and no file is skipped.
    """

    def __init__(self, directory: Path, *, max_bytes: int, max_files: int,
                 name: str = "app.log") -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.active = directory / name
        self._name = name
        self.generation = 0

    def rotated(self, index: int) -> Path:
        return self.directory / f"{self._name}.{index}"

    def newest_first(self) -> list[Path]:
        """Existing files, the active one first, then ``.1``, ``.2``, ..."""
        paths = [self.active] if self.active.exists() else []
        for index in range(1, self.max_files + 1):
            path = self.rotated(index)
            if not path.exists():
                break
            paths.append(path)
        return paths

    def rotate(self) -> None:
        """Shift ``.N`` to ``.N+1`` (dropping the last) and the active file to ``.1``."""
        self.generation += 1
        try:
            last = 0
            while last < self.max_files and self.rotated(last + 1).exists():
                last += 1
            if last == self.max_files:
                self.rotated(last).unlink()
                last -= 1
            for index in range(last, 0, -1):
                self.rotated(index).replace(self.rotated(index + 1))
            with contextlib.suppress(FileNotFoundError):
                self.active.replace(self.rotated(1))
        finally:
            self.generation += 1

    def consistent(self, read: Callable[[], T]) -> T:
        """Run ``read`` (blocking) until no rotation happened during it."""
        for _ in range(_RETRIES):
            generation = self.generation
            if generation % 2 == 0:
                try:
                    result = read()
                except FileNotFoundError:
                    result = None
                if self.generation == generation and result is not None:
                    return result
            time.sleep(0.001)
        raise OSError("the log kept rotating while it was being read")

    # -- locating a position -------------------------------------------------------------

    def locate(self, key: Callable[[LogLine], K], target: K) -> Position:
        """The position of the first line whose ``key`` is >= ``target`` (keys grow with
        the log: seq or timestamp): the end of the log when the target is past its last
        line, the start of the active file when there is no line yet."""
        return self.consistent(lambda: self._locate(key, target))

    def _locate(self, key: Callable[[LogLine], K], target: K) -> Position:
        chosen: Path | None = None
        newer: Path | None = None
        for path in self.newest_first():  # the newest file that starts at or before target
            first = _first_line(path)
            if first is None:
                newer = path  # an empty (just rotated) active file
                continue
            if key(first) <= target:
                chosen = path
                break
            chosen, newer = path, path
        if chosen is None:
            # No line anywhere yet. The start of the active file, not its end: lines may be
            # appended before the caller reads, and readers skip what precedes their target.
            start = self.end()
            return Position(start.path, start.inode, 0)
        offset = _bisect(chosen, key, target)
        size = chosen.stat().st_size
        if offset >= size and newer is not None and newer != chosen:
            # Past the end of a rotated file: the next line goes to the newer one.
            return Position(newer, newer.stat().st_ino, 0)
        return Position(chosen, chosen.stat().st_ino, offset)

    def locate_seq(self, seq: int) -> Position:
        """Where the line ``seq`` (or the first one after it) is."""
        return self.locate(lambda line: line.seq, seq)

    def locate_time(self, timestamp: bytes) -> Position:
        """Where the first line stamped at or after ``timestamp`` is."""
        return self.locate(lambda line: line.timestamp, timestamp)

    def end(self) -> Position:
        """The end of the active file (where the next line will be written)."""
        try:
            st = self.active.stat()
        except FileNotFoundError:
            return Position(self.active, 0, 0)
        return Position(self.active, st.st_ino, st.st_size)


def _first_line(path: Path) -> LogLine | None:
    try:
        with path.open("rb") as f:
            return parse_line(f.readline(MAX_LINE + _HEADER_MAX))
    except FileNotFoundError:
        return None


def _line_from(f: BinaryIO, offset: int) -> tuple[int, LogLine | None]:
    """Start offset and parse of the first whole line that starts at or after ``offset``."""
    if offset:
        f.seek(offset - 1)
        f.readline(MAX_LINE + _HEADER_MAX)  # to just after the newline at or after offset - 1
    else:
        f.seek(0)
    start = f.tell()
    raw = f.readline(MAX_LINE + _HEADER_MAX)
    return start, (parse_line(raw) if raw.endswith(b"\n") else None)


def _bisect(path: Path, key: Callable[[LogLine], K], target: K) -> int:
    """Offset of the first line in ``path`` with key >= target (or the file's end).

    Bisection keeps ``lo`` at a line whose key is below target, then a short forward scan.
    """
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        lo, hi = 0, size
        while hi - lo > _BLOCK:
            mid = (lo + hi) // 2
            start, line = _line_from(f, mid)
            if line is None or key(line) >= target:
                hi = mid
            else:
                lo = start
        f.seek(lo)
        offset = lo
        while offset < size:
            raw = f.readline(MAX_LINE + _HEADER_MAX)
            if not raw.endswith(b"\n"):
                break
            line = parse_line(raw)
            if line is not None and key(line) >= target:
                return offset
            offset += len(raw)
        return offset


def reverse_lines(path: Path) -> Iterator[bytes]:
    """The complete lines of ``path``, last first, reading blocks backwards from the end."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return
    with f:
        end = os.fstat(f.fileno()).st_size
        carry = b""
        pos = end
        first_block = True
        while pos > 0:
            size = min(_BLOCK, pos)
            pos -= size
            f.seek(pos)
            block = f.read(size) + carry
            parts = block.split(b"\n")
            carry = parts[0]
            tail_parts = parts[1:]
            if first_block:
                tail_parts = tail_parts[:-1]  # after the last newline: a line being written
                first_block = False
            yield from reversed(tail_parts)
        if carry and not first_block:
            yield carry


def tail(files: LogFiles, count: int, *, stream: str | None = None,
         since: bytes | None = None) -> list[LogLine]:
    """The last ``count`` lines (optionally of one stream, at or after ``since``), oldest first.

    Reads backwards from the end of the active file into older files as needed.
    """
    return files.consistent(lambda: _tail(files, count, stream, since))


def _tail(files: LogFiles, count: int, stream: str | None,
          since: bytes | None) -> list[LogLine]:
    found: list[LogLine] = []
    if count <= 0:
        return found
    for path in files.newest_first():
        for raw in reverse_lines(path):
            line = parse_line(raw)
            if line is None:
                continue
            if since is not None and line.timestamp < since:
                return found[::-1]
            if stream is not None and line.stream != stream:
                continue
            found.append(line)
            if len(found) >= count:
                return found[::-1]
    return found[::-1]
