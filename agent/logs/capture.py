"""Capture: from the app's raw output files to the service's stamped, rotated log. No loss.

The app writes to two raw files it holds open ``O_APPEND`` (``run/stdout.raw``,
``run/stderr.raw``); the agent never writes to them and never truncates them while the app
may write. A pump step:

1. reads each raw file from its offset (``pread``), up to the last complete line;
2. stamps the lines (seq, time, stream) and appends them to ``logs/app.log``, rotating when
   the next line would pass ``max_bytes`` (state is saved before each rotation);
3. saves the offsets and the last seq in ``run/capture.json`` (write to a temp file, then
   ``os.replace``);
4. frees the consumed part of each raw file with ``fallocate(PUNCH_HOLE | KEEP_SIZE)``: the
   file keeps its size for the writer but takes no disk.

Exactly once, across agent crashes: the offsets move only after the lines are written, and
on open the active file is cut back to the last line whose seq was saved (a crash between
2 and 3 re-reads those lines from the raw files instead of duplicating them).

Where hole punching is not supported (rare filesystems), a raw file that has been read to
its end is truncated instead: a line written between the size check and the truncation is
lost. That fallback is the only lossy path and is logged once (``log_hole_punch_unsupported``).

Not thread-safe: the LogManager runs every method of one capture on its single log thread.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from agent.logs.files import LogFiles, reverse_lines
from agent.logs.format import MAX_LINE, encode_line, format_timestamp, parse_line
from agent.supervisor.runtime import LogPaths

__all__ = ["LogCapture", "punch_hole"]

log = structlog.get_logger("agent.logs")

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_READ_LIMIT = 1 << 20          # bytes read per raw file per step
_HOLE_ALIGN = 4096
_TRUNCATE_AFTER = 1 << 20      # copy-truncate fallback: truncate once this much was read
STDERR_TAIL = 20
_TAIL_SCAN = 256 * 1024       # bytes of log scanned back for the stderr tail at open

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Free ``length`` bytes at ``offset`` of the file, keeping its size; raises OSError."""
    if _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@dataclass
class _Raw:
    """One raw output file and how far it has been consumed."""

    stream: str
    path: Path
    fd: int = -1
    offset: int = 0
    freed: int = 0

    def open(self) -> None:
        if self.fd < 0:
            # Read-write only because fallocate needs it; the agent never writes here.
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass(slots=True)
class _Batch:
    """Complete lines read from one raw file in one step."""

    raw: _Raw
    lines: list[bytes]
    sizes: list[int] | None  # raw bytes each line consumed; None: len(line) + 1 for every line
    end: int                 # raw offset after the last line

    def offset_after(self, count: int) -> int:
        """The raw offset just after the first ``count`` lines."""
        if count == len(self.lines):
            return self.end
        if self.sizes is None:
            return self.raw.offset + sum(map(len, self.lines[:count])) + count
        return self.raw.offset + sum(self.sizes[:count])


def _split(raw: _Raw, data: bytes, *, final: bool) -> _Batch:
    """The complete lines of ``data`` (read at ``raw.offset``). Lines longer than MAX_LINE are
    cut; so is a partial line that has reached MAX_LINE; ``final`` also takes the partial line
    at the end (the run is over, no newline will come)."""
    end = data.rfind(b"\n") + 1
    lines = data[:end - 1].split(b"\n") if end else []
    rest = data[end:]
    if rest and not final:
        rest = rest[:len(rest) - len(rest) % MAX_LINE]
    if not rest and (not lines or max(map(len, lines)) <= MAX_LINE):
        return _Batch(raw, lines, None, raw.offset + end)  # the fast, common case
    texts: list[bytes] = []
    sizes: list[int] = []
    for index, piece in enumerate([*lines, rest] if rest else lines):
        newline = index < len(lines)
        if not piece:
            texts.append(b"")
            sizes.append(1)
            continue
        for start in range(0, len(piece), MAX_LINE):
            chunk = piece[start:start + MAX_LINE]
            texts.append(chunk)
            last = start + MAX_LINE >= len(piece)
            sizes.append(len(chunk) + (1 if newline and last else 0))
    return _Batch(raw, texts, sizes, raw.offset + sum(sizes))


def _after_last_newline(path: Path, size: int) -> int:
    """The offset just after the file's last newline (0 when it has none)."""
    with path.open("rb") as f:
        pos = size
        while pos > 0:
            start = max(0, pos - _HOLE_ALIGN)
            f.seek(start)
            block = f.read(pos - start)
            index = block.rfind(b"\n")
            if index >= 0:
                return start + index + 1
            pos = start
    return 0


def _fitting(encoded: list[bytes], start: int, room: int, *, empty: bool) -> int:
    """How many lines from ``start`` fit in ``room`` bytes (at least one into an empty file)."""
    if sum(map(len, encoded[start:])) <= room:
        return len(encoded) - start
    total = 0
    for index in range(start, len(encoded)):
        total += len(encoded[index])
        if total > room:
            count = index - start
            return max(count, 1) if empty else count
    return len(encoded) - start


class LogCapture:
    """Moves one service's raw output into its stamped log. See the module docstring."""

    def __init__(self, app_dir: Path, *, max_bytes: int, max_files: int,
                 now: Callable[[], float]) -> None:
        self.app_dir = app_dir
        self.run_dir = app_dir / "run"
        self.files = LogFiles(app_dir / "logs", max_bytes=max_bytes, max_files=max_files)
        self.raw_paths = LogPaths(stdout=self.run_dir / "stdout.raw",
                                  stderr=self.run_dir / "stderr.raw")
        self._raws = (_Raw("stdout", self.raw_paths.stdout), _Raw("stderr", self.raw_paths.stderr))
        self._state_path = self.run_dir / "capture.json"
        self._now = now
        self._out_fd = -1
        self._out_size = 0
        self.seq = 0
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
        self._punch = True

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> None:
        """Create the directories and files, load the saved state, repair the active file."""
        for directory in (self.app_dir, self.run_dir, self.files.directory):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        state = self._load_state()
        self.seq = int(state.get("seq", 0))
        for raw in self._raws:
            raw.open()
            raw.offset = int(state.get(raw.stream, 0))
            if raw.offset > os.fstat(raw.fd).st_size:
                raw.offset = 0  # truncated behind our back: start over
        self._repair_active()
        self._open_out()
        self._load_stderr_tail()

    def close(self) -> None:
        """Release the files (the state is saved after every step already)."""
        for raw in self._raws:
            raw.close()
        if self._out_fd >= 0:
            os.close(self._out_fd)
            self._out_fd = -1

    def _load_state(self) -> dict[str, int]:
        try:
            data = json.loads(self._state_path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save_state(self) -> None:
        tmp = self._state_path.with_suffix(".tmp")
        data = {raw.stream: raw.offset for raw in self._raws}
        data["seq"] = self.seq
        tmp.write_text(json.dumps(data))
        tmp.replace(self._state_path)

    def _repair_active(self) -> None:
        """Cut the active file back to its last complete line with seq <= the saved seq."""
        path = self.files.active
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return
        keep = _after_last_newline(path, size)  # drops a torn last line
        for raw in reverse_lines(path):
            line = parse_line(raw)
            if line is not None and line.seq <= self.seq:
                break
            keep -= len(raw) + 1
        if keep < size:
            os.truncate(path, max(0, keep))
            log.info("log_capture_repaired", path=str(path), dropped_bytes=size - keep)

    def _open_out(self) -> None:
        self._out_fd = os.open(self.files.active, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                               | os.O_CLOEXEC, 0o600)
        self._out_size = os.fstat(self._out_fd).st_size

    def _load_stderr_tail(self) -> None:
        self.stderr_tail.clear()
        scanned = 0
        found: list[str] = []
        for raw in reverse_lines(self.files.active):
            scanned += len(raw)
            line = parse_line(raw)
            if line is not None and line.stream == "stderr":
                found.append(line.text.decode(errors="replace"))
                if len(found) >= STDERR_TAIL:
                    break
            if scanned > _TAIL_SCAN:
                break
        self.stderr_tail.extend(reversed(found))

    # -- pumping -----------------------------------------------------------------------------

    def pending(self) -> bool:
        """Whether a raw file has bytes not yet consumed."""
        return any(raw.fd >= 0 and os.fstat(raw.fd).st_size > raw.offset for raw in self._raws)

    def pump(self, *, final: bool = False) -> int:
        """Move every complete line from the raw files to the log; return how many.

        ``final`` (the run has ended, nothing writes any more) also takes a last line that
        has no newline.
        """
        total = 0
        while True:
            batches: list[_Batch] = []
            more = False
            for raw in self._raws:
                if raw.fd < 0:
                    continue
                data = os.pread(raw.fd, _READ_LIMIT, raw.offset)
                if len(data) == _READ_LIMIT:
                    more = True
                batch = _split(raw, data, final=final and len(data) < _READ_LIMIT)
                if batch.lines:
                    batches.append(batch)
            if batches:
                stamp = format_timestamp(self._now())
                for batch in batches:
                    self._write(batch, stamp)
                    total += len(batch.lines)
                self._save_state()
            self._free()
            if not more:
                return total

    def _write(self, batch: _Batch, stamp: bytes) -> None:
        """Append the batch's lines, rotating (state saved first) when the file is full."""
        prefix = b" %s %s " % (stamp, batch.raw.stream.encode())
        first = self.seq + 1
        encoded = [b"%d%s%s\n" % (first + i, prefix, text) for i, text in enumerate(batch.lines)]
        done = 0
        while done < len(encoded):
            room = self.files.max_bytes - self._out_size
            count = _fitting(encoded, done, room, empty=self._out_size == 0)
            if count == 0:
                self._rotate()
                continue
            self._append(encoded[done:done + count])
            done += count
            self.seq = first + done - 1
            batch.raw.offset = batch.offset_after(done)
            if done < len(encoded):
                self._save_state()
                self._rotate()
        if batch.raw.stream == "stderr":
            self.stderr_tail.extend(t.decode(errors="replace") for t in batch.lines[-STDERR_TAIL:])

    def _append(self, encoded: list[bytes]) -> None:
        buf = memoryview(b"".join(encoded))
        self._out_size += len(buf)
        while buf:
            written = os.write(self._out_fd, buf)
            buf = buf[written:]

    def _rotate(self) -> None:
        os.close(self._out_fd)
        self.files.rotate()
        self._open_out()

    def _free(self) -> None:
        for raw in self._raws:
            if raw.fd < 0:
                continue
            if self._punch:
                upto = raw.offset - raw.offset % _HOLE_ALIGN
                if upto > raw.freed:
                    try:
                        punch_hole(raw.fd, raw.freed, upto - raw.freed)
                        raw.freed = upto
                    except OSError as exc:
                        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                            raise
                        self._punch = False
                        log.warning("log_hole_punch_unsupported", path=str(raw.path))
            elif raw.offset >= _TRUNCATE_AFTER and os.fstat(raw.fd).st_size == raw.offset:
                os.ftruncate(raw.fd, 0)  # lossy: a write landing right now is lost
                raw.offset = raw.freed = 0
                self._save_state()

    # -- between runs ------------------------------------------------------------------------

    def reset_raw(self) -> None:
        """When a run has ended (no writer left): take everything, including a last line
        without a newline, then empty the raw files. Cheap when they are already empty."""
        if all(raw.fd < 0 or (raw.offset == 0 and os.fstat(raw.fd).st_size == 0)
               for raw in self._raws):
            return
        self.pump(final=True)
        for raw in self._raws:
            if raw.fd >= 0:
                os.ftruncate(raw.fd, 0)
                raw.offset = raw.freed = 0
        self._save_state()

    def note(self, text: str) -> None:
        """Append a line of the agent's own (stream ``agent``) to the log."""
        line = encode_line(self.seq + 1, format_timestamp(self._now()), "agent",
                           text.encode(errors="replace")[:MAX_LINE])
        if self._out_size and self._out_size + len(line) > self.files.max_bytes:
            self._save_state()
            self._rotate()
        self._append([line])
        self.seq += 1  # only once written: readers take seq as "everything up to here is in"
        with contextlib.suppress(OSError):
            self._save_state()
