"""Fakes for unit tests of logic, implementing the same Protocols as the real parts.

Integration tests use the real parts; these are for logic that depends on time or on a
runtime and must be tested deterministically.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from agent.supervisor.runtime import (
    Adopted,
    ExitStatus,
    Handle,
    RunSpec,
    RuntimeFailure,
    TreeStats,
)

__all__ = ["FakeClock", "FakeRun", "FakeRuntime"]


class FakeClock:
    """A clock that moves only when told to. Implements ``agent.clock.Clock``."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._wall = start
        self._mono = 1000.0

    def time(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        """Move both clocks forward."""
        if seconds < 0:
            raise ValueError("time does not go back")
        self._wall += seconds
        self._mono += seconds


@dataclass
class FakeRun:
    """One run of a FakeRuntime: its spec, the signals it got, and how it ends."""

    spec: RunSpec
    handle: Handle
    exited: asyncio.Future[ExitStatus]
    signals: list[int] = field(default_factory=list)


class FakeRuntime:
    """A runtime whose runs end only when a test says so. Implements ``Runtime``.

    ``end(pid, status)`` makes a run exit; ``stop`` ends it with ``stop_status`` (or, with
    ``ignore_stop``, only after the grace period, as SIGKILL); ``fail_next`` makes the next
    ``start`` raise RuntimeFailure.
    """

    def __init__(self, kind: str = "process") -> None:
        self.kind = kind
        self.runs: dict[int, FakeRun] = {}
        self.started: list[RunSpec] = []
        self.fail_next: str | None = None
        self.stop_status = ExitStatus(signal=15)
        self.ignore_stop = False
        self._next_pid = 1000

    async def start(self, spec: RunSpec) -> Handle:
        if self.fail_next is not None:
            message, self.fail_next = self.fail_next, None
            raise RuntimeFailure(message)
        self._next_pid += 1
        handle = Handle(self.kind, {"pid": self._next_pid, "start_ticks": self._next_pid,
                                    "boot_id": "fake", "status_file": ""})
        self.runs[self._next_pid] = FakeRun(spec, handle,
                                            asyncio.get_running_loop().create_future())
        self.started.append(spec)
        return handle

    def end(self, pid: int, status: ExitStatus) -> None:
        """Make the run ``pid`` exit with ``status``."""
        run = self.runs[pid]
        if not run.exited.done():
            run.exited.set_result(status)

    def alive(self, pid: int) -> bool:
        return pid in self.runs and not self.runs[pid].exited.done()

    async def adopt(self, handle: Handle, spec: RunSpec) -> Adopted:
        pid = handle.pid or 0
        if self.alive(pid):
            return Adopted(alive=True)
        run = self.runs.get(pid)
        return Adopted(alive=False, status=run.exited.result() if run else ExitStatus())

    async def wait(self, handle: Handle) -> ExitStatus:
        return await asyncio.shield(self.runs[handle.pid or 0].exited)

    async def signal(self, handle: Handle, sig: int) -> bool:
        run = self.runs[handle.pid or 0]
        run.signals.append(sig)
        return not run.exited.done()

    async def stop(self, handle: Handle, sig: int, grace: float) -> ExitStatus:
        run = self.runs[handle.pid or 0]
        run.signals.append(sig)
        if self.ignore_stop:
            await asyncio.sleep(grace)
            run.signals.append(int(signal.SIGKILL))
            self.end(handle.pid or 0, ExitStatus(signal=int(signal.SIGKILL)))
        self.end(handle.pid or 0, self.stop_status)
        return run.exited.result()

    async def stats(self, handles: Sequence[Handle]) -> Mapping[str, TreeStats]:
        return {h.to_json(): TreeStats(cpu_seconds=1.0, memory_bytes=1 << 20, processes=1)
                for h in handles if self.alive(h.pid or 0)}

    def release(self, handle: Handle) -> None:
        pass
