"""The log forwarder's exactly-once logic, against a fake engine that serves a container's
messages the way Docker does (timestamped frames, ``since`` in seconds)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from agent.docker.logs import LogForwarder, parse_timestamp

BASE = 1_764_403_139_000_000_000  # ns


def _stamp(ns: int) -> bytes:
    seconds, fraction = divmod(ns, 1_000_000_000)
    text = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{fraction:09d}Z".encode()


class _Stream:
    def __init__(self, frames: list[bytes]) -> None:
        self._frames = iter(frames)

    def __iter__(self) -> Iterator[bytes]:
        return self._frames

    def close(self) -> None:
        return None


class FakeEngine:
    """Messages of one container's stdout; ``logs`` answers like the engine."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, bytes]] = []
        self.asked_since: list[float | None] = []
        self.api = self

    def add(self, ns: int, text: bytes) -> None:
        self.messages.append((ns, text))

    def logs(self, container: str, *, stdout: bool, stderr: bool, stream: bool, follow: bool,
             timestamps: bool, since: float | None) -> _Stream:
        assert stdout and not stderr and stream and timestamps
        self.asked_since.append(since)
        floor = int(since * 1e9) if since is not None else 0
        return _Stream([_stamp(ns) + b" " + text for ns, text in self.messages if ns >= floor])


def _forwarder(engine: FakeEngine, tmp_path: Path) -> LogForwarder:
    return LogForwarder(lambda: engine, "c1", "stdout", tmp_path / "stdout.raw",  # type: ignore[arg-type,return-value]
                        tmp_path / "state.json")


def _lines(tmp_path: Path) -> list[bytes]:
    return (tmp_path / "stdout.raw").read_bytes().splitlines(keepends=True)


def test_parse_timestamp_reads_nanoseconds() -> None:
    """Docker's RFC 3339 timestamps become nanoseconds since the epoch, fraction or not."""
    assert parse_timestamp(b"2025-11-29T08:01:16.129756174Z") == 1_764_403_276_129_756_174
    assert parse_timestamp(b"2025-11-29T08:01:16.1Z") == 1_764_403_276_100_000_000
    assert parse_timestamp(b"2025-11-29T08:01:16Z") == 1_764_403_276_000_000_000
    assert parse_timestamp(_stamp(BASE + 7)) == BASE + 7


def test_runs_copy_each_message_once(tmp_path: Path) -> None:
    """A second run copies only what came since the first, asking Docker from just before
    the last copied message; a partial last line stays partial."""
    engine = FakeEngine()
    LogForwarder.begin("c1", tmp_path / "stdout.raw", tmp_path / "state.json")
    for i in range(3):
        engine.add(BASE + i * 1000, f"line {i}\n".encode())
    assert _forwarder(engine, tmp_path).run(follow=False) == "ended"
    engine.add(BASE + 5000, b"line 3\n")
    engine.add(BASE + 6000, b"no newline yet")
    _forwarder(engine, tmp_path).run(follow=False)
    _forwarder(engine, tmp_path).run(follow=False)
    assert _lines(tmp_path) == [b"line 0\n", b"line 1\n", b"line 2\n", b"line 3\n",
                                b"no newline yet"]
    assert engine.asked_since[0] is None
    assert engine.asked_since[1] is not None and engine.asked_since[1] * 1e9 < BASE + 2000


def test_a_crash_after_writing_but_before_saving_neither_loses_nor_doubles(
        tmp_path: Path) -> None:
    """Messages written after the last saved position (the agent died before saving it) are
    recognised by the raw file's size and skipped: byte for byte, even a half-written one."""
    engine = FakeEngine()
    raw = tmp_path / "stdout.raw"
    LogForwarder.begin("c1", raw, tmp_path / "state.json")
    for i in range(3):
        engine.add(BASE + i, f"line {i}\n".encode())
    _forwarder(engine, tmp_path).run(follow=False)
    shutil.copy(tmp_path / "state.json", tmp_path / "saved.json")
    for i in range(3, 6):
        engine.add(BASE + i, f"line {i}\n".encode())
    _forwarder(engine, tmp_path).run(follow=False)
    # The agent "died" after writing lines 3-5 and half of nothing more, with the old position.
    shutil.copy(tmp_path / "saved.json", tmp_path / "state.json")
    with raw.open("r+b") as handle:
        handle.truncate(raw.stat().st_size - 3)  # line 5 only half written: "line 5\n"[:-3]
    for i in range(6, 8):
        engine.add(BASE + i, f"line {i}\n".encode())
    _forwarder(engine, tmp_path).run(follow=False)
    assert _lines(tmp_path) == [f"line {i}\n".encode() for i in range(8)]


def test_messages_sharing_a_timestamp_are_counted(tmp_path: Path) -> None:
    """Several messages with the very same timestamp: the position counts them, so a resume
    at that timestamp skips exactly those already copied."""
    engine = FakeEngine()
    LogForwarder.begin("c1", tmp_path / "stdout.raw", tmp_path / "state.json")
    engine.add(BASE, b"a\n")
    engine.add(BASE + 10, b"b\n")
    engine.add(BASE + 10, b"c\n")
    _forwarder(engine, tmp_path).run(follow=False)
    engine.add(BASE + 10, b"d\n")
    engine.add(BASE + 20, b"e\n")
    _forwarder(engine, tmp_path).run(follow=False)
    assert _lines(tmp_path) == [b"a\n", b"b\n", b"c\n", b"d\n", b"e\n"]


def test_a_new_container_starts_from_the_raw_file_as_it_is(tmp_path: Path) -> None:
    """The position of a new container records the raw file's current size: what an earlier
    run left there is never taken as this container's output."""
    raw = tmp_path / "stdout.raw"
    raw.write_bytes(b"older run\n")
    engine = FakeEngine()
    engine.add(BASE, b"new run\n")
    LogForwarder.begin("c1", raw, tmp_path / "state.json")
    _forwarder(engine, tmp_path).run(follow=False)
    assert _lines(tmp_path) == [b"older run\n", b"new run\n"]


def test_a_closed_forwarder_copies_nothing(tmp_path: Path) -> None:
    """Closing before the run starts ends it at once."""
    engine = FakeEngine()
    engine.add(BASE, b"x\n")
    forwarder = _forwarder(engine, tmp_path)
    forwarder.close()
    assert forwarder.run(follow=True) == "closed"
    assert (tmp_path / "stdout.raw").read_bytes() == b""
