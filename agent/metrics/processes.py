"""Per-service resource use, summed over each service's whole process tree.

Each service's tree is walked from its root pid in a table of every process's parent, so a
grandchild that a shell or a process manager spawned is counted. The table comes from a
scan of ``/proc`` when a service or its root pid is new; every ``rescan`` seconds when a
process was created since the last scan (the last pid the kernel handed out, from
``/proc/loadavg``, moved); and every ``full_rescan`` seconds anyway (a process whose parent
exited changes parent without any process being created). In between only the known
members of each tree are read, so a process spawned since the last scan is counted from the
next one. On a quiet host nothing is created and the scan, the largest part of a sample's
cost, is skipped. A scan reads the stat file of processes it has not seen before only: a
process keeps its ``/proc/<pid>`` inode for life, and a process's parent only changes when
that parent exits (then it is read again).

Every sample reads each member's ``/proc/<pid>/stat`` (CPU time, threads, resident size)
through a file kept open (one ``pread``; see ``agent.metrics.procfs``), up to a budget of
open files (a quarter of the descriptor limit, at most 1024; past it the file is opened for
each read). A member whose stat text did not change since the last sample (an idle process)
is not parsed again. Open descriptors are counted from ``/proc/<pid>/fd`` when a process is
first seen and then every ``files_every`` samples (default 5), so ``open_files`` is at most
that many samples old; everything else is from the sample itself.

CPU percent is the CPU time each process used since the previous sample over the wall
time between samples (like ``top``), so the previous CPU time of every tracked process
is kept between samples, with its start time: a reused pid is never mistaken for the
old process (and a kept file of an exited process fails rather than read the new one).

Docker services are measured the same way over the pids in the container's cgroup, unless
a ``ContainerUsageSource`` (Docker's stats) answers for the container.

Linux only (so is the agent). Runs in the sampler's thread; not thread-safe.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import psutil

from agent.metrics.cgroup import CgroupReader
from agent.metrics.compute import finite
from agent.metrics.procfs import KeptFile, StatLine, parse_stat, read_file
from agent.metrics.snapshot import ServiceSample
from agent.metrics.sources import ContainerUsageSource, ServiceProcess, ServiceUsage

__all__ = ["LastPid", "ProcStat", "ProcessTreeSampler", "scan_processes"]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_STAT_SIZE = 4096  # a stat line is a few hundred bytes


class ProcStat(NamedTuple):
    """What ``/proc/<pid>/stat`` said of one process when a scan first saw it (times in
    clock ticks), and the inode of its ``/proc/<pid>`` directory then."""

    ppid: int
    start: int
    fields: list[bytes]  # the fields after the command name, parsed only when needed
    inode: int = 0

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


def _stat_of(root: str, pid: int, inode: int) -> ProcStat | None:
    data = read_file(f"{root}/{pid}/stat")
    if data is None:
        return None  # exited while we looked
    # The command name is in parentheses and may hold spaces or ')'.
    fields = data[data.rfind(b")") + 2:].split()
    if len(fields) < 22:
        return None
    return ProcStat(int(fields[1]), int(fields[19]), fields, inode)


def scan_processes(proc_root: Path = Path("/proc"),
                   previous: dict[int, ProcStat] | None = None) -> dict[int, ProcStat]:
    """Every process's parent and start time, by pid.

    With ``previous`` (the last scan's table), a process listed with the same inode is
    taken from it instead of read again; one whose parent is no longer listed is read again
    (it was re-parented when its parent exited).
    """
    table: dict[int, ProcStat] = {}
    root = str(proc_root)
    known = previous or {}
    with os.scandir(root) as entries:
        for entry in entries:
            name = entry.name
            if not name.isdigit():
                continue
            pid, inode = int(name), entry.inode()
            old = known.get(pid)
            stat = old if old is not None and old.inode == inode else _stat_of(root, pid, inode)
            if stat is not None:
                table[pid] = stat
    if previous:
        for pid, stat in list(table.items()):
            if stat.ppid != 0 and stat.ppid not in table and stat is known.get(pid):
                fresh = _stat_of(root, pid, stat.inode)
                if fresh is None:
                    del table[pid]
                else:
                    table[pid] = fresh
    return table


class LastPid:
    """The last pid the kernel handed out in this pid namespace (``/proc/loadavg``'s last
    field): it moves whenever a process or thread is created. None when unreadable."""

    def __init__(self, proc_root: str = "/proc") -> None:
        self._file = KeptFile(f"{proc_root}/loadavg", 128)

    def __call__(self) -> int | None:
        data = self._file.read()
        try:
            return int(data.split()[4]) if data else None
        except (IndexError, ValueError):
            return None

    def close(self) -> None:
        self._file.close()


def _fd_budget() -> int:
    try:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (OSError, ValueError):
        return 0
    if soft == resource.RLIM_INFINITY:
        return 1024
    return max(0, min(1024, soft // 4))


class _Proc:
    """One tracked process: its stat file (a descriptor kept open, or -1 to open it for
    each read), the last text read and what it said, the CPU time at the previous sample,
    and its open descriptors as last counted."""

    __slots__ = ("cpu", "cpu_delta", "data", "fd", "files", "files_seq", "line", "path",
                 "pid", "seq")

    def __init__(self, pid: int, path: str, fd: int) -> None:
        self.pid = pid
        self.path = path
        self.fd = fd
        self.data = b""
        self.line: StatLine | None = None
        self.cpu: int | None = None  # CPU ticks at the previous sample (None: no baseline)
        self.cpu_delta = 0
        self.files = 0
        self.files_seq = -1
        self.seq = -1  # the sample that last measured it

    def fetch(self) -> bytes | None:
        """The stat text now, or None if the process is gone (or the read failed)."""
        if self.fd < 0:
            return read_file(self.path, _STAT_SIZE)
        try:
            data = os.pread(self.fd, _STAT_SIZE, 0)
        except OSError:
            return None
        if len(data) < _STAT_SIZE:
            return data or None
        return read_file(self.path, _STAT_SIZE)  # longer than any stat line seen: read it all

    def update(self, data: bytes) -> StatLine | None:
        """Parse ``data`` (a text that differs from the last one)."""
        line = parse_stat(data)
        if line is None:
            return None
        if self.line is not None and line.start != self.line.start:
            self.cpu, self.files_seq = None, -1  # a new process under the old pid
        self.data, self.line = data, line
        return line

    def close(self) -> None:
        if self.fd >= 0:
            try:
                os.close(self.fd)
            finally:
                self.fd = -1


class ProcessTreeSampler:
    """Measures services' process trees; remembers CPU times and tree members between samples.

    The whole process table is scanned when a service or its root pid is new, every
    ``rescan`` seconds while processes are being created (``last_pid`` moved: see the module's
    docstring), and every ``full_rescan`` seconds anyway; in between, only the known members
    of each tree are read, so a process spawned since the last scan is counted from the next
    one. Open descriptors are counted every ``files_every`` samples; at most
    ``max_open_files`` stat files are kept open (default: a quarter of the descriptor limit,
    at most 1024).
    """

    def __init__(self, *, proc_root: Path = Path("/proc"), cgroups: CgroupReader | None = None,
                 containers: ContainerUsageSource | None = None, rescan: float = 5.0,
                 full_rescan: float = 60.0, last_pid: Callable[[], int | None] | None = None,
                 files_every: int = 5, max_open_files: int | None = None) -> None:
        self._proc_root = str(proc_root)
        self._full_rescan = max(rescan, full_rescan)
        self._last_pid = last_pid or LastPid(self._proc_root)
        self._last_pid_at_scan: int | None = None
        self._cgroups = cgroups or CgroupReader()
        self._containers = containers
        self._rescan = rescan
        self._files_every = max(1, files_every)
        self._procs: dict[int, _Proc] = {}  # pid -> the process measured at the last sample
        self._kept = 0  # how many of them keep their stat file open
        self._budget = _fd_budget() if max_open_files is None else max_open_files
        self._table: dict[int, ProcStat] | None = None
        self._members: dict[str, tuple[int, list[tuple[int, int]]]] = {}  # id -> root, (pid, start)
        self._last: dict[str, ServiceSample] = {}  # id -> the last sample (reused when equal)
        self._seq = 0
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
        return len(self._procs)

    def close(self) -> None:
        """Close the files kept open."""
        for proc in self._procs.values():
            self._forget(proc)
        self._procs = {}
        if isinstance(self._last_pid, LastPid):
            self._last_pid.close()

    def _needs_scan(self, services: Sequence[ServiceProcess], monotonic: float,
                    last_pid: int | None) -> bool:
        if self._last_scan is None or monotonic - self._last_scan >= self._full_rescan:
            return True
        if monotonic - self._last_scan >= self._rescan and (
                last_pid is None or last_pid != self._last_pid_at_scan):
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
        # Read before a scan: a process created during it moves the pid for the next one.
        last_pid = self._last_pid()
        if any(s.pid is not None for s in services) and self._needs_scan(services, monotonic,
                                                                        last_pid):
            self._last_pid_at_scan = last_pid
            table = scan_processes(Path(self._proc_root), self._table)
            self._table = table
            children = _children(table)
            self._last_scan = monotonic
            self._members = {}
        self._seq += 1
        measured: dict[int, _Proc] = {}
        samples = []
        last: dict[str, ServiceSample] = {}
        for service in services:
            previous = self._last.get(service.service_id)
            sample = self._sample_one(service, table, children, elapsed, measured, previous)
            if sample is not previous and previous is not None and previous == sample:
                sample = previous  # unchanged: keep the same objects
            last[service.service_id] = sample
            samples.append(sample)
        for pid, proc in self._procs.items():
            if measured.get(pid) is not proc:
                self._forget(proc)
        self._procs = measured
        self._last = last
        self._last_monotonic = monotonic
        self._last_start_ticks = (wall - self._boot_time) * _CLOCK_TICKS
        return tuple(samples)

    def _sample_one(self, service: ServiceProcess, table: dict[int, ProcStat] | None,
                    children: dict[int, list[int]] | None, elapsed: float,
                    measured: dict[int, _Proc], previous: ServiceSample | None
                    ) -> ServiceSample:
        members: list[tuple[int, int]] | None = None
        note = None
        if service.runtime == "docker" and service.container_id:
            if self._containers is not None:
                usage = self._containers.container_usage(service.container_id)
                if usage is not None:
                    return ServiceSample(service, usage)
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
            return ServiceSample(service, None, note)
        last_usage = previous.usage if previous is not None else None
        usage, first_alive = self._measure(members, elapsed, measured, last_usage)
        if usage is last_usage and previous is not None and previous.service == service:
            return previous
        if service.container_id is None and not first_alive:
            # The root (first member) exited: the service is down, even if an orphan
            # of it lives on until the next scan drops it from the tree.
            return ServiceSample(service, None, "process not found")
        if usage.processes == 0:
            return ServiceSample(service, None, "no process in the container")
        return ServiceSample(service, usage)

    def _proc(self, pid: int) -> _Proc:
        path = f"{self._proc_root}/{pid}/stat"
        fd = -1
        if self._kept < self._budget:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                self._kept += 1
            except OSError:
                fd = -1
        return _Proc(pid, path, fd)

    def _forget(self, proc: _Proc) -> None:
        if proc.fd >= 0:
            self._kept -= 1
            proc.close()

    def _measure(self, members: Sequence[tuple[int, int]], elapsed: float,
                 measured: dict[int, _Proc], previous: ServiceUsage | None
                 ) -> tuple[ServiceUsage, bool]:
        """The members' summed usage, and whether the first member (the root) is alive.

        ``previous`` (the service's usage at the last sample) is returned as it is when no
        member changed at all since then (an idle service: nothing to parse or build).
        """
        cpu_ticks = rss_pages = threads = fds = processes = 0
        first_alive = False
        seq = self._seq
        changed = previous is None
        procs = self._procs
        for index, (pid, start) in enumerate(members):
            proc = measured.get(pid) or procs.get(pid) or self._proc(pid)
            if proc.seq == seq:  # already measured in this sample (in another tree)
                line = proc.line
                changed = True
            else:
                data = proc.fetch()
                if data is None:
                    if measured.get(pid) is not proc:
                        self._forget(proc)  # exited
                    changed = True
                    continue
                if data == proc.data and proc.seq == seq - 1:
                    line = proc.line  # the same text as at the last sample: idle
                else:
                    line = proc.update(data)
                    changed = True
                    if line is None:
                        continue
            assert line is not None
            if (start >= 0 and line.start != start) or line.state == b"Z":
                # Its pid was reused since the tree was scanned, or it is a zombie (which
                # holds nothing but its exit status).
                changed = True
                continue
            if proc.seq != seq:
                proc.seq = seq
                used = line.cpu_ticks
                if proc.cpu is not None:
                    proc.cpu_delta = used - proc.cpu if used > proc.cpu else 0
                elif self._last_start_ticks is not None and line.start >= self._last_start_ticks:
                    # Born since the previous sample: all its CPU time falls in the interval.
                    # (One seen for the first time but older has no baseline yet.)
                    proc.cpu_delta = used
                else:
                    proc.cpu_delta = 0
                proc.cpu = used
                if proc.files_seq < 0 or seq - proc.files_seq >= self._files_every:
                    files = self._fds(pid)
                    if files != proc.files or proc.files_seq < 0:
                        changed = True
                    proc.files, proc.files_seq = files, seq
            measured[pid] = proc
            first_alive = first_alive or index == 0
            cpu_ticks += proc.cpu_delta
            rss_pages += line.rss_pages
            threads += line.threads
            fds += proc.files
            processes += 1
        if (not changed and cpu_ticks == 0 and previous is not None
                and previous.cpu_percent == 0.0 and previous.processes == processes):
            return previous, first_alive
        cpu = finite(cpu_ticks / _CLOCK_TICKS / elapsed * 100.0) if elapsed > 0 else 0.0
        return ServiceUsage(cpu_percent=round(max(0.0, cpu), 2),
                            rss_bytes=rss_pages * _PAGE_SIZE, threads=threads,
                            open_files=fds, processes=processes), first_alive

    def _fds(self, pid: int) -> int:
        # Plain os calls on strings: pathlib objects cost more than the system calls.
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
