"""Per-service resource use, summed over each service's whole process tree.

One pass over ``/proc`` per sample maps every pid to its parent and start time; each
service's tree is walked from its root pid in that map, so a grandchild that a shell or a
process manager spawned is counted. Each process is read through a cached
``psutil.Process``, keyed by (pid, start time) so a reused pid is never mistaken for the
old process; CPU percent is the CPU time each process used since the previous sample over
the wall time between samples, so it works across samples like ``top``.

Docker services are measured the same way over the pids in the container's cgroup, unless
a ``ContainerUsageSource`` (Docker's stats) answers for the container.

Runs in the sampler's thread; not thread-safe.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from agent.metrics.cgroup import CgroupReader
from agent.metrics.compute import finite
from agent.metrics.snapshot import ServiceSample
from agent.metrics.sources import ContainerUsageSource, ServiceProcess, ServiceUsage

__all__ = ["ProcessTreeSampler", "scan_processes"]

ProcessTable = dict[int, tuple[int, int]]  # pid -> (parent pid, start time in clock ticks)


def scan_processes(proc_root: Path = Path("/proc")) -> ProcessTable:
    """Every process's parent pid and start time, from ``/proc/<pid>/stat``."""
    table: ProcessTable = {}
    with os.scandir(proc_root) as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                with open(f"{proc_root}/{entry.name}/stat", "rb") as f:
                    data = f.read()
            except OSError:
                continue  # exited while we looked
            # The command name is in parentheses and may hold spaces or ')'.
            fields = data[data.rfind(b")") + 2:].split()
            if len(fields) > 19:
                table[int(entry.name)] = (int(fields[1]), int(fields[19]))
    return table


@dataclass(slots=True)
class _Tracked:
    proc: psutil.Process
    cpu_seconds: float


@dataclass(slots=True)
class _Reading:
    cpu_delta: float = 0.0
    rss: int = 0
    threads: int = 0
    fds: int = 0
    processes: int = 0


class ProcessTreeSampler:
    """Measures services' process trees; keeps psutil objects between samples."""

    def __init__(self, *, proc_root: Path = Path("/proc"), cgroups: CgroupReader | None = None,
                 containers: ContainerUsageSource | None = None) -> None:
        self._proc_root = proc_root
        self._cgroups = cgroups or CgroupReader()
        self._containers = containers
        self._tracked: dict[tuple[int, int], _Tracked] = {}
        self._last_monotonic: float | None = None
        self._last_wall: float | None = None

    @property
    def tracked_processes(self) -> int:
        """How many process objects are cached (for tests and the bench)."""
        return len(self._tracked)

    def sample(self, services: Sequence[ServiceProcess], *, monotonic: float,
               wall: float) -> tuple[ServiceSample, ...]:
        """Measure every service now. Services that do not run get ``usage=None``."""
        elapsed = monotonic - self._last_monotonic if self._last_monotonic is not None else 0.0
        needs_scan = any(s.pid is not None or s.container_id is not None for s in services)
        table = scan_processes(self._proc_root) if needs_scan else {}
        children: dict[int, list[int]] | None = None
        seen: set[tuple[int, int]] = set()
        samples = []
        for service in services:
            pids: Iterable[int] | None = None
            note = None
            if service.runtime == "docker" and service.container_id:
                if self._containers is not None:
                    usage = self._containers.container_usage(service.container_id)
                    if usage is not None:
                        samples.append(ServiceSample(service, usage))
                        continue
                pids = self._cgroups.container_pids(service.container_id)
                note = "container not found" if pids is None else None
            if pids is None and service.pid is not None:
                if service.pid in table:
                    if children is None:
                        children = _children(table)
                    pids = _tree(service.pid, children)
                else:
                    note = "process not found"
            elif pids is None and note is None:
                note = "not running"
            if pids is None:
                samples.append(ServiceSample(service, None, note))
                continue
            samples.append(ServiceSample(service, self._measure(pids, table, elapsed, seen)))
        for key in self._tracked.keys() - seen:
            del self._tracked[key]
        self._last_monotonic, self._last_wall = monotonic, wall
        return tuple(samples)

    def _measure(self, pids: Iterable[int], table: ProcessTable, elapsed: float,
                 seen: set[tuple[int, int]]) -> ServiceUsage:
        total = _Reading()
        for pid in pids:
            start = table.get(pid, (0, -1))[1]
            if start < 0:
                continue  # not in this sample's process table: exited or not ours to see
            key = (pid, start)
            seen.add(key)
            try:
                self._read_one(key, total)
            except psutil.Error:
                self._tracked.pop(key, None)  # exited between the scan and the read
        cpu = finite(total.cpu_delta / elapsed * 100.0) if elapsed > 0 else 0.0
        return ServiceUsage(cpu_percent=round(max(0.0, cpu), 2), rss_bytes=total.rss,
                            threads=total.threads, open_files=total.fds,
                            processes=total.processes)

    def _read_one(self, key: tuple[int, int], total: _Reading) -> None:
        tracked = self._tracked.get(key)
        proc = tracked.proc if tracked is not None else psutil.Process(key[0])
        with proc.oneshot():
            times = proc.cpu_times()
            rss = proc.memory_info().rss
            threads = proc.num_threads()
            try:
                fds = proc.num_fds()
            except psutil.AccessDenied:
                fds = 0  # another user's process; the agent runs without CAP_SYS_PTRACE
        cpu_seconds = times.user + times.system
        if tracked is not None:
            total.cpu_delta += max(0.0, cpu_seconds - tracked.cpu_seconds)
            tracked.cpu_seconds = cpu_seconds
        else:
            # A process born since the previous sample used all its CPU time within the
            # interval; one that existed before (first sight of a tree) has no baseline yet.
            if self._last_wall is not None and proc.create_time() >= self._last_wall:
                total.cpu_delta += cpu_seconds
            self._tracked[key] = _Tracked(proc, cpu_seconds)
        total.rss += rss
        total.threads += threads
        total.fds += fds
        total.processes += 1


def _children(table: ProcessTable) -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
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
