"""Child processes of the deploy pipeline: own process group, output through a pipe we own.

asyncio's ``Process.wait()`` for a child started with ``stdout=PIPE`` waits for the pipe to
close too, so a grandchild that keeps the pipe open (``cmd &`` in a build) would make it wait
forever. Here the pipe is made with ``os.pipe()`` and its read end is read on the event loop
(``add_reader``): ``wait()`` follows only the child itself, and the caller kills the group and
stops reading. This module owns the read end and closes it exactly once. (It once went
through ``loop.connect_read_pipe`` with a file object: on uvloop the transport closes the
descriptor and then the file object closes the same number again, and in a threaded agent
that second close can hit a descriptor another thread has just opened: a deploy failed with
EBADF in ``shutil.rmtree``, found by the kill -9 chaos test.)

Unlike an app, a deploy step must not outlive the agent: the child asks the kernel for SIGKILL
when the agent dies (``PR_SET_PDEATHSIG``), so after a kill -9 no orphaned clone or build goes
on writing into a release draft that the next agent start removes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["GroupedProcess", "signal_group", "spawn_grouped", "terminate_group"]


@dataclass
class GroupedProcess:
    """A child leading its own process group, and the read end of its merged stdout/stderr."""

    process: asyncio.subprocess.Process
    output: asyncio.StreamReader
    read_fd: int

    @property
    def pid(self) -> int:
        return self.process.pid

    def close(self) -> None:
        """Stop reading the output and close the pipe's read end (once; later calls do
        nothing)."""
        if self.read_fd < 0:
            return
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self.read_fd)
        os.close(self.read_fd)
        self.read_fd = -1
        if not self.output.at_eof():
            self.output.feed_eof()


def _read_into(loop: asyncio.AbstractEventLoop, fd: int, reader: asyncio.StreamReader) -> None:
    """Feed what arrives on ``fd`` to ``reader`` until the writers are gone (EOF)."""
    os.set_blocking(fd, False)

    def readable() -> None:
        try:
            data = os.read(fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            reader.feed_data(data)
        else:
            loop.remove_reader(fd)
            reader.feed_eof()

    loop.add_reader(fd, readable)


_PR_SET_PDEATHSIG = 1


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's prctl (looked up once), or None where there is none (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _pdeathsig_setter() -> Callable[[], None] | None:
    """A function for the child, between fork and exec: SIGKILL it when its parent dies.
    None where prctl is not available."""
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def die_with_parent() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the agent died before the request took effect
            os._exit(1)

    return die_with_parent


async def spawn_grouped(argv: Sequence[str], *, env: Mapping[str, str],
                        cwd: Path | None = None) -> GroupedProcess:
    """Start ``argv`` in a new session with stdin from /dev/null and stdout+stderr to one pipe."""
    loop = asyncio.get_running_loop()
    read_fd, write_fd = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, env=dict(env), stdin=asyncio.subprocess.DEVNULL,
            stdout=write_fd, stderr=write_fd, start_new_session=True,
            preexec_fn=_pdeathsig_setter())
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    reader = asyncio.StreamReader(limit=1 << 20)
    _read_into(loop, read_fd, reader)
    return GroupedProcess(proc, reader, read_fd)


def signal_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to the process group ``pgid``; a group that is gone is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def terminate_group(proc: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM the group, wait up to ``grace`` seconds for the leader, then SIGKILL the group."""
    signal_group(proc.pid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), grace)
    signal_group(proc.pid, signal.SIGKILL)
    await proc.wait()
