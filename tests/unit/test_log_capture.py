"""The capture from raw files to stamped, rotated logs, and reading it back (no processes)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from agent.logs.capture import LogCapture
from agent.logs.files import tail
from agent.logs.format import MAX_LINE, format_timestamp, parse_line, parse_since
from agent.testing import FakeClock


def _capture(app_dir: Path, clock: FakeClock, *, max_bytes: int = 4096,
             max_files: int = 1000) -> LogCapture:
    capture = LogCapture(app_dir, max_bytes=max_bytes, max_files=max_files, now=clock.time)
    capture.open()
    return capture


def _all_lines(capture: LogCapture) -> list[tuple[int, str, bytes]]:
    out = []
    for path in reversed(capture.files.newest_first()):
        for raw in path.read_bytes().split(b"\n")[:-1]:
            line = parse_line(raw)
            assert line is not None, raw
            out.append((line.seq, line.stream, line.text))
    return out


def _writer(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND)


def test_numbered_lines_survive_many_rotations_in_order(tmp_path: Path, clock: FakeClock) -> None:
    """Every line of both streams arrives once, seqs are contiguous, files stay under the cap."""
    capture = _capture(tmp_path, clock)
    out, err = _writer(capture.raw_paths.stdout), _writer(capture.raw_paths.stderr)
    for i in range(1, 3001):
        os.write(out, b"line %d\n" % i)
        if i % 10 == 0:
            os.write(err, b"err %d\n" % i)
        if i % 37 == 0:
            capture.pump()
    capture.pump()
    lines = _all_lines(capture)
    assert [seq for seq, _, _ in lines] == list(range(1, len(lines) + 1))
    assert [int(t[5:]) for _, s, t in lines if s == "stdout"] == list(range(1, 3001))
    assert [int(t[4:]) for _, s, t in lines if s == "stderr"] == list(range(10, 3001, 10))
    files = capture.files.newest_first()
    assert len(files) > 20
    assert all(p.stat().st_size <= 4096 for p in files)
    assert list(capture.stderr_tail)[-1] == "err 3000" and len(capture.stderr_tail) == 20


def test_consumed_raw_output_is_freed_with_holes(tmp_path: Path, clock: FakeClock) -> None:
    """The raw file keeps its size for the writer but no longer takes the disk it used."""
    capture = _capture(tmp_path, clock, max_bytes=1 << 20)
    out = _writer(capture.raw_paths.stdout)
    for i in range(20_000):
        os.write(out, b"some output line number %d\n" % i)
    capture.pump()
    st = os.stat(capture.raw_paths.stdout)
    assert st.st_size > 500_000
    assert st.st_blocks * 512 <= 8192


def test_partial_lines_wait_for_their_newline_and_long_lines_are_split(
        tmp_path: Path, clock: FakeClock) -> None:
    """A line is taken only once complete (or at the end of the run); huge lines are cut."""
    capture = _capture(tmp_path, clock, max_bytes=1 << 22)
    out = _writer(capture.raw_paths.stdout)
    os.write(out, b"hello wor")
    assert capture.pump() == 0
    os.write(out, b"ld\n" + b"x" * (MAX_LINE * 2 + 10) + b"\nlast without newline")
    capture.pump()
    texts = [t for _, _, t in _all_lines(capture)]
    assert texts[0] == b"hello world"
    assert [len(t) for t in texts[1:]] == [MAX_LINE, MAX_LINE, 10]
    capture.pump(final=True)
    assert _all_lines(capture)[-1][2] == b"last without newline"
    os.write(out, b"next run\n")
    capture.pump()
    assert _all_lines(capture)[-1][2] == b"next run"


def test_a_crash_between_writing_and_saving_neither_loses_nor_repeats(
        tmp_path: Path, clock: FakeClock) -> None:
    """Lines written after the last saved seq are cut on open and read again from the raw file."""
    capture = _capture(tmp_path, clock, max_bytes=1 << 20)
    out = _writer(capture.raw_paths.stdout)
    for i in range(1, 101):
        os.write(out, b"n %d\n" % i)
    capture.pump()
    state = (capture.run_dir / "capture.json").read_text()
    for i in range(101, 151):
        os.write(out, b"n %d\n" % i)
    capture.pump()
    # Simulate a crash after the append but before the state was saved, plus a torn line.
    (capture.run_dir / "capture.json").write_text(state)
    with capture.files.active.open("ab") as f:
        f.write(b"999 2024-01-01T00:00:00.00")
    capture.close()
    again = _capture(tmp_path, clock, max_bytes=1 << 20)
    again.pump()
    numbers = [int(t[2:]) for _, _, t in _all_lines(again)]
    assert numbers == list(range(1, 151))


def test_tail_reads_backwards_across_files_with_filters(tmp_path: Path, clock: FakeClock) -> None:
    """tail returns the last N lines oldest first, of one stream, since a time."""
    capture = _capture(tmp_path, clock, max_bytes=2048)
    out, err = _writer(capture.raw_paths.stdout), _writer(capture.raw_paths.stderr)
    for i in range(1, 301):
        os.write(out if i % 3 else err, b"l %d\n" % i)
        if i == 150:
            capture.pump()
            clock.advance(60)
    capture.pump()
    last = tail(capture.files, 5)
    assert [ln.text for ln in last][-1] in (b"l 299", b"l 300")
    assert len(last) == 5 and [ln.seq for ln in last] == sorted(ln.seq for ln in last)
    errs = tail(capture.files, 1000, stream="stderr")
    assert [int(ln.text[2:]) for ln in errs] == list(range(3, 301, 3))
    recent = tail(capture.files, 1000, since=format_timestamp(clock.time() - 30))
    assert [int(ln.text[2:]) for ln in recent] == sorted(range(151, 301), key=lambda n: (n % 3 == 0, n))


def test_locate_finds_a_seq_in_rotated_files(tmp_path: Path, clock: FakeClock) -> None:
    """A seq is found by bisection whatever file it was rotated into."""
    capture = _capture(tmp_path, clock, max_bytes=100_000)
    out = _writer(capture.raw_paths.stdout)
    for i in range(1, 20_001):
        os.write(out, b"row %d\n" % i)
    capture.pump()
    for seq in (1, 777, 12_345, 20_000):
        pos = capture.files.locate_seq(seq)
        with pos.path.open("rb") as f:
            f.seek(pos.offset)
            line = parse_line(f.readline())
        assert line is not None and line.seq == seq
    assert capture.files.locate_seq(99_999) == capture.files.end()


@pytest.mark.parametrize("value", ["15m", "2h", "1d", "30s", "2024-05-01T12:00:00Z",
                                   "2024-05-01T12:00:00.5+02:00", "2024-05-01T12:00:00"])
def test_since_accepts_times_and_durations(value: str) -> None:
    """since is an RFC 3339 time or a duration back from now, as a comparable stamp."""
    stamp = parse_since(value, 1_714_564_800.0)
    assert len(stamp) == 27 and stamp.endswith(b"Z")


def test_since_rejects_garbage() -> None:
    """Anything else is a ValueError (a 400 at the API)."""
    with pytest.raises(ValueError):
        parse_since("yesterday", 0)


async def test_a_follower_never_skips_lines_while_files_rotate_under_it(tmp_path: Path) -> None:
    """Rotations every ~90 lines, 10,000 lines, three rounds: the follower sees them all."""
    for round_ in range(3):
        await _follow_while_rotating(tmp_path / f"r{round_}", total=10_000)


async def _follow_while_rotating(app_dir: Path, total: int) -> None:
    from agent.clock import SystemClock
    from agent.logs import LogManager, LogReader

    manager = LogManager(max_bytes=4096, max_files=1000, clock=SystemClock())
    await manager.open()
    raw = await manager.attach("svc", app_dir)
    manager.set_live("svc", True)

    async def write() -> None:
        fd = os.open(raw.stdout, os.O_WRONLY | os.O_APPEND)
        for i in range(total):
            os.write(fd, b"%d\n" % i)
            if i % 200 == 0:
                await asyncio.sleep(0.001)
        os.close(fd)

    got: list[int] = []

    async def follow() -> None:
        reader = LogReader(manager, "svc", 1, stream="stdout", follow=True, idle=1)
        async for batch in reader.batches():
            got.extend(int(line.text) for line in batch)
            if len(got) >= total:
                return

    writer = asyncio.create_task(write())
    await asyncio.wait_for(follow(), 20)
    await writer
    assert got == list(range(total))
    assert len(manager.files("svc").newest_first()) > 100
    await manager.close()


async def test_without_inotify_the_poll_captures_every_live_service(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the kernel refuses inotify, the poll pumps the live services (all of them in one
    step of the capture thread): every line of every service reaches its log."""
    import errno

    from agent.clock import SystemClock
    from agent.logs import LogManager, LogReader
    from agent.logs import manager as manager_module

    def refuse(_: object) -> None:
        raise manager_module.InotifyUnavailable(errno.EMFILE, "too many inotify instances")

    monkeypatch.setattr(manager_module, "Inotify", refuse)
    manager = LogManager(max_bytes=1 << 20, max_files=3, clock=SystemClock())
    await manager.open()
    services = [f"svc{i}" for i in range(5)]
    for service_id in services:
        raw = await manager.attach(service_id, tmp_path / service_id)
        manager.set_live(service_id, True)
        with open(raw.stdout, "ab") as out:
            out.write(b"".join(b"%s line %d\n" % (service_id.encode(), n) for n in range(100)))

    async def captured(service_id: str) -> list[bytes]:
        reader = LogReader(manager, service_id, 1, stream="stdout", follow=False)
        return [line.text async for batch in reader.batches() for line in batch]

    async def all_captured() -> bool:
        for service_id in services:
            if len(await captured(service_id)) < 100:
                return False
        return True

    deadline = asyncio.get_running_loop().time() + 10
    while not await all_captured():
        assert asyncio.get_running_loop().time() < deadline, "the poll did not capture"
        await asyncio.sleep(0.05)
    for service_id in services:
        assert await captured(service_id) == [b"%s line %d" % (service_id.encode(), n)
                                              for n in range(100)]
    await manager.close()
