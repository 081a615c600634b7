"""Per-service resource use, summed over each service's whole process tree.

One pass over ``/proc/<pid>/stat`` per sample gives every process's parent, start time,
CPU time, thread count and resident size. Each service's tree is walked from its root
pid in that table, so a grandchild that a shell or a process manager spawned is counted;
open descriptors are counted from ``/proc/<pid>/fd`` for the tree's processes only.

CPU percent is the CPU time each process used since the previous sample over the wall
time between samples (like ``top``), so the previous CPU time of every tracked process
is kept between samples, keyed by (pid, start time): a reused pid is never mistaken for
the old process. Reading the one stat file we must read anyway for the tree, instead of
four files per process through ``psutil.Process``, is what keeps a 1 s sampler of 100
services under 1% of a core (see docs/benchmarks.md).

Docker services are measured the same way over the pids in the container's cgroup, unless
a ``ContainerUsageSource`` (Docker's stats) answers for the container.

Linux only (so is the agent). Runs in the sampler's thread; not thread-safe.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import psutil

from agent.metrics.cgroup import CgroupReader
from agent.metrics.compute import finite
from agent.metrics.snapshot import ServiceSample
from agent.metrics.sources import ContainerUsageSource, ServiceProcess, ServiceUsage

__all__ = ["ProcStat", "ProcessTreeSampler", "scan_processes"]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class ProcStat(NamedTuple):
    """What ``/proc/<pid>/stat`` says of one process (times in clock ticks)."""

    ppid: int
    start: int
    fields: list[bytes]  # the fields after the command name, parsed only when needed

    @property
    def cpu_ticks(self) -> int:
        """User plus system time."""
        return int(self.fields[11]) + int(self.fields[12])

    @property
    def threads(self) -> int:
        return int(self.fields[17])

    @property
    def rss_pages(self) -> int:
        return int(self.fields[21])


def scan_processes(proc_root: Path = Path("/proc")) -> dict[int, ProcStat]:
    """Every process's stat line, by pid."""
    table: dict[int, ProcStat] = {}
    root = str(proc_root)
    with os.scandir(root) as entries:
        for entry in entries:
            name = entry.name
            if not name.isdigit():
                continue
            try:
                with open(f"{root}/{name}/stat", "rb") as f:
                    data = f.read()
            except OSError:
                continue  # exited while we looked
            # The command name is in parentheses and may hold spaces or ')'.
            fields = data[data.rfind(b")") + 2:].split()
            if len(fields) >= 22:
                table[int(name)] = ProcStat(int(fields[1]), int(fields[19]), fields)
    return table


def _read_stat(root: str, pid: int) -> ProcStat | None:
    try:
        with open(f"{root}/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2:].split()
    return ProcStat(int(fields[1]), int(fields[19]), fields) if len(fields) >= 22 else None


class ProcessTreeSampler:
    """Measures services' process trees; remembers CPU times and tree members between samples.

    The whole process table is scanned when a service or its root pid is new, and at
    least every ``rescan`` seconds; in between, only the known members of each tree are
    read, so a process spawned since the last scan is counted from the next one.
    """

    def __init__(self, *, proc_root: Path = Path("/proc"), cgroups: CgroupReader | None = None,
                 containers: ContainerUsageSource | None = None, rescan: float = 5.0) -> None:
        self._proc_root = str(proc_root)
        self._cgroups = cgroups or CgroupReader()
        self._containers = containers
        self._rescan = rescan
        self._cpu: dict[tuple[int, int], int] = {}  # (pid, start) -> cpu ticks last sample
        self._members: dict[str, tuple[int, list[tuple[int, int]]]] = {}  # id -> root, (pid, start)
        self._last_scan: float | None = None
        self._last_monotonic: float | None = None
        self._last_start_ticks: float | None = None  # the previous sample, in ticks since boot
        self._boot_time = psutil.boot_time()

    def set_container_usage(self, source: ContainerUsageSource | None) -> None:
        """Where Docker services' figures come from (None: their cgroup and processes)."""
        self._containers = source

    @property
    def tracked_processes(self) -> int:
        """How many processes have a CPU baseline (for tests and the bench)."""
        return len(self._cpu)

    def _needs_scan(self, services: Sequence[ServiceProcess], monotonic: float) -> bool:
        if self._last_scan is None or monotonic - self._last_scan >= self._rescan:
            return True
        for service in services:
            if service.pid is not None and service.container_id is None:
                known = self._members.get(service.service_id)
                if known is None or known[0] != service.pid:
                    return True
        return False

    def _tree_members(self, service: ServiceProcess, table: dict[int, ProcStat] | None,
                      children: dict[int, list[int]] | None) -> list[tuple[int, int]] | None:
        """The (pid, start) of the service's tree: from a fresh scan, or as last known."""
        assert service.pid is not None
        if table is not None and children is not None:
            if service.pid not in table:
                # Remembered as empty, so a dead pid does not force a scan every sample.
                self._members[service.service_id] = (service.pid, [])
                return None
            members = [(pid, table[pid].start) for pid in _tree(service.pid, children)]
            self._members[service.service_id] = (service.pid, members)
            return members
        known = self._members.get(service.service_id)
        return known[1] if known is not None and known[1] else None

    def sample(self, services: Sequence[ServiceProcess], *, monotonic: float,
               wall: float) -> tuple[ServiceSample, ...]:
        """Measure every service now. Services that do not run get ``usage=None``."""
        elapsed = monotonic - self._last_monotonic if self._last_monotonic is not None else 0.0
        table: dict[int, ProcStat] | None = None
        children: dict[int, list[int]] | None = None
        if any(s.pid is not None for s in services) and self._needs_scan(services, monotonic):
            table = scan_processes(Path(self._proc_root))
            children = _children(table)
            self._last_scan = monotonic
            self._members = {}
        seen: dict[tuple[int, int], int] = {}
        samples = []
        for service in services:
            members: list[tuple[int, int]] | None = None
            note = None
            if service.runtime == "docker" and service.container_id:
                if self._containers is not None:
                    usage = self._containers.container_usage(service.container_id)
                    if usage is not None:
                        samples.append(ServiceSample(service, usage))
                        continue
                pids = self._cgroups.container_pids(service.container_id)
                if pids is not None:
                    members = [(pid, -1) for pid in pids]  # start checked when read
                else:
                    note = "container not found"
            if members is None and service.pid is not None:
                members = self._tree_members(service, table, children)
                note = "process not found" if members is None else None
            elif members is None and note is None:
                note = "not running"
            if members is None:
                samples.append(ServiceSample(service, None, note))
                continue
            usage, first_alive = self._measure(members, table, elapsed, seen)
            if service.container_id is None and not first_alive:
                # The root (first member) exited: the service is down, even if an orphan
                # of it lives on until the next scan drops it from the tree.
                samples.append(ServiceSample(service, None, "process not found"))
            elif usage.processes == 0:
                samples.append(ServiceSample(service, None, "no process in the container"))
            else:
                samples.append(ServiceSample(service, usage))
        self._cpu = seen
        self._last_monotonic = monotonic
        self._last_start_ticks = (wall - self._boot_time) * _CLOCK_TICKS
        return tuple(samples)

    def _measure(self, members: Sequence[tuple[int, int]], table: dict[int, ProcStat] | None,
                 elapsed: float, seen: dict[tuple[int, int], int]) -> tuple[ServiceUsage, bool]:
        """The members' summed usage, and whether the first member (the root) is alive."""
        cpu_ticks = rss_pages = threads = fds = processes = 0
        first_alive = False
        for index, (pid, start) in enumerate(members):
            stat = table.get(pid) if table is not None else _read_stat(self._proc_root, pid)
            if stat is None or (start >= 0 and stat.start != start):
                continue  # exited (or its pid was reused) since the tree was scanned
            fields = stat.fields
            if fields[0] == b"Z":
                continue  # a zombie holds nothing but its exit status
            first_alive = first_alive or index == 0
            key = (pid, stat.start)
            used = int(fields[11]) + int(fields[12])  # user + system ticks
            previous = self._cpu.get(key)
            if previous is not None:
                cpu_ticks += max(0, used - previous)
            elif self._last_start_ticks is not None and stat.start >= self._last_start_ticks:
                # Born since the previous sample: all its CPU time falls in the interval.
                # (One seen for the first time but older has no baseline yet.)
                cpu_ticks += used
            seen[key] = used
            rss_pages += int(fields[21])
            threads += int(fields[17])
            fds += self._fds(pid)
            processes += 1
        cpu = finite(cpu_ticks / _CLOCK_TICKS / elapsed * 100.0) if elapsed > 0 else 0.0
        return ServiceUsage(cpu_percent=round(max(0.0, cpu), 2),
                            rss_bytes=rss_pages * _PAGE_SIZE, threads=threads,
                            open_files=fds, processes=processes), first_alive

    def _fds(self, pid: int) -> int:
        # Plain os calls on strings: this runs for every process of every service each
        # sample, and pathlib objects cost more than the syscalls.
        path = f"{self._proc_root}/{pid}/fd"
        try:
            # Linux 6.2+ reports the number of open descriptors as the directory's size.
            size = os.stat(path).st_size  # noqa: PTH116
            return size if size > 0 else len(os.listdir(path))  # noqa: PTH208
        except OSError:
            return 0  # exited, or another user's process and no CAP_SYS_PTRACE


def _children(table: dict[int, ProcStat]) -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for pid, stat in table.items():
        children.setdefault(stat.ppid, []).append(pid)
    return children


def _tree(root: int, children: dict[int, list[int]]) -> list[int]:
    """``root`` and all its descendants."""
    found, stack, seen = [], [root], {root}
    while stack:
        pid = stack.pop()
        found.append(pid)
        for child in children.get(pid, ()):
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return found
