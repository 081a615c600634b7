"""Fakes for unit tests of logic, implementing the same Protocols as the real parts.

Integration tests use the real parts; these are for logic that depends on time or on a
runtime and must be tested deterministically.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from agent.deploy.errors import StartFailed
from agent.deploy.pipeline import StartRequest
from agent.metrics.readings import (
    Address,
    CpuTimes,
    DiskReading,
    HostReading,
    IoCounters,
    MemoryReading,
    NicCounters,
)
from agent.metrics.sources import ServiceProcess

__all__ = ["FakeClock", "FakeStarter", "ScriptedHostReader", "StaticServices", "host_reading"]

from agent.proxy.locator import Target

__all__ = ["FakeClock", "MemoryServiceLocator"]
import signal
from collections.abc import Mapping
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


class FakeStarter:
    """A ``ReleaseStarter`` that starts nothing: it records each request, and can be told to
    fail (``fail_with``) or to hold a service in ``starting`` until ``unblock(service)``.

    ``active``/``max_active`` count starts in progress, to check the queue's concurrency.
    """

    def __init__(self) -> None:
        self.requests: list[StartRequest] = []
        self.fail_with: StartFailed | None = None
        self.active = 0
        self.max_active = 0
        self._gates: dict[str, asyncio.Event] = {}

    def block(self, service: str) -> None:
        """Hold the next starts of ``service`` until ``unblock``."""
        self._gates[service] = asyncio.Event()

    def unblock(self, service: str) -> None:
        gate = self._gates.pop(service, None)
        if gate is not None:
            gate.set()

    async def start(self, request: StartRequest) -> None:
        self.requests.append(request)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            gate = self._gates.get(request.service)
            if gate is not None:
                await gate.wait()
            if self.fail_with is not None:
                raise self.fail_with
        finally:
            self.active -= 1

class StaticServices:
    """An in-memory ``ServiceSource``: tests add, change and remove services by hand."""

    def __init__(self, services: Iterable[ServiceProcess] = ()) -> None:
        self._services: dict[str, ServiceProcess] = {s.service_id: s for s in services}

    def services(self) -> Sequence[ServiceProcess]:
        return tuple(self._services.values())

    def put(self, service: ServiceProcess) -> None:
        """Add the service, or replace the one with its id."""
        self._services[service.service_id] = service

    def remove(self, service_id: str) -> None:
        self._services.pop(service_id, None)


def host_reading(**changes: Any) -> HostReading:
    """A plausible ``HostReading`` (2 cores, 8 GiB, one disk, one NIC) with ``changes``."""
    base = HostReading(
        cpu=(CpuTimes(busy=100.0, total=1000.0), CpuTimes(busy=200.0, total=1000.0)),
        load=(0.5, 0.4, 0.3),
        memory=MemoryReading(total=8 << 30, available=6 << 30, used=2 << 30,
                             swap_total=1 << 30, swap_used=0, swap_free=1 << 30),
        disks=(DiskReading(mountpoint="/", device="/dev/sda1", fstype="ext4",
                           total=100 << 30, used=40 << 30, free=60 << 30,
                           inodes_total=1000, inodes_free=900),),
        disk_io=IoCounters(read_bytes=0, write_bytes=0, read_count=0, write_count=0),
        nics={"eth0": NicCounters(bytes_recv=0, bytes_sent=0, packets_recv=0, packets_sent=0)},
        process_count=100,
        boot_time=1_699_990_000.0,
        addresses=(Address(interface="eth0", address="192.0.2.10", family="ipv4"),),
    )
    return replace(base, **changes)


class ScriptedHostReader:
    """A ``HostReader`` that returns readings a test queued, then repeats the last one."""

    def __init__(self, *readings: HostReading) -> None:
        self._queue: deque[HostReading] = deque(readings or (host_reading(),))
        self._last = self._queue[0]
        self.reads = 0

    def push(self, reading: HostReading) -> None:
        """Queue the reading for a later sample."""
        self._queue.append(reading)

    def read(self) -> HostReading:
        self.reads += 1
        if self._queue:
            self._last = self._queue.popleft()
        return self._last

class MemoryServiceLocator:
    """An in-memory ``agent.proxy.ServiceLocator``: services and their targets set by hand.

    Used by the proxy tests and, until the supervisor provides the real locator, by
    ``create_app`` (where it starts empty, so no route can be created yet).
    """

    def __init__(self) -> None:
        self._targets: dict[str, dict[int | None, Target | None]] = {}

    def add(self, service_id: str, target: Target | None = None, *,
            port: int | None = None) -> None:
        """Declare a service, optionally with the target of one of its ports (None = any)."""
        self._targets.setdefault(service_id, {})[port] = target

    def set_target(self, service_id: str, target: Target | None, *,
                   port: int | None = None) -> None:
        """Point the service (or one of its ports) somewhere else: a redeploy, a stop."""
        if service_id not in self._targets:
            raise KeyError(service_id)
        self._targets[service_id][port] = target

    def remove(self, service_id: str) -> None:
        self._targets.pop(service_id, None)

    def exists(self, service_id: str) -> bool:
        return service_id in self._targets

    def target(self, service_id: str, port: int | None) -> Target | None:
        ports = self._targets.get(service_id)
        if ports is None:
            return None
        if port in ports:
            return ports[port]
        return ports.get(None)
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
