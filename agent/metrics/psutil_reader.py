"""The real ``HostReader``: ``/proc`` files read directly, statvfs, psutil for what changes
rarely, plus the agent's cgroup memory limit.

Runs in the sampler's thread. Every sample re-reads ``/proc/stat``, ``/proc/loadavg``,
``/proc/meminfo``, ``/proc/diskstats`` and ``/proc/net/dev`` through files kept open (one
``pread`` each, see ``agent.metrics.procfs``) and calls statvfs on each disk. The figures match
what psutil's wrappers computed from the same files, at a fraction of the system calls.

Less often:

- every ``count_every`` samples (default 5): the process count (a listing of ``/proc``),
  so ``process_count`` is at most that many samples old;
- every ``slow_every`` samples (default 30): the mount table, the interface addresses, the
  boot time, the list of block devices (which lines of ``/proc/diskstats`` are whole disks)
  and the agent's cgroup memory limit and files (the usage itself is read every sample).
"""

from __future__ import annotations

import dataclasses
import os
import socket

import psutil

from agent.metrics.cgroup import CgroupMemoryWatch, CgroupReader
from agent.metrics.procfs import (
    KeptFile,
    count_processes,
    parse_cpu_times,
    parse_diskstats,
    parse_loadavg,
    parse_meminfo,
    parse_net_dev,
)
from agent.metrics.readings import (
    Address,
    DiskReading,
    HostReading,
    MemoryReading,
)

__all__ = ["PsutilHostReader"]

# Real filesystems on a device that are still not "disks" a user cares about.
_SKIP_FSTYPES = frozenset({"squashfs", "iso9660", "udf"})


def _mounts() -> list[tuple[str, str, str]]:
    """(mountpoint, device, fstype) of each real disk, one mountpoint per device."""
    seen: dict[str, tuple[str, str, str]] = {}
    for part in psutil.disk_partitions(all=False):
        if part.fstype in _SKIP_FSTYPES or not part.device:
            continue
        current = seen.get(part.device)
        # bind mounts of one filesystem show the same figures: keep the shortest path
        if current is None or len(part.mountpoint) < len(current[0]):
            seen[part.device] = (part.mountpoint, part.device, part.fstype)
    if not any(mount[0] == "/" for mount in seen.values()):
        # Inside a container "/" is an overlay, which psutil does not count as a disk;
        # it is still the filesystem the apps write to.
        for part in psutil.disk_partitions(all=True):
            if part.mountpoint == "/":
                seen[part.device or "rootfs"] = ("/", part.device or "rootfs", part.fstype)
                break
    return sorted(seen.values())


def _disk(mountpoint: str, device: str, fstype: str) -> DiskReading | None:
    try:
        st = os.statvfs(mountpoint)
    except OSError:
        return None
    total = st.f_blocks * st.f_frsize
    free = st.f_bavail * st.f_frsize  # what unprivileged users can still write, as df shows
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    return DiskReading(mountpoint=mountpoint, device=device, fstype=fstype, total=total,
                       used=used, free=free, inodes_total=st.f_files, inodes_free=st.f_ffree)


def _addresses() -> tuple[Address, ...]:
    found = []
    for name, addrs in psutil.net_if_addrs().items():
        for addr in addrs:
            if addr.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = addr.address.split("%", 1)[0]
            if ip.startswith(("127.", "fe80:")) or ip == "::1":
                continue
            family = "ipv4" if addr.family == socket.AF_INET else "ipv6"
            found.append(Address(interface=name, address=ip, family=family))
    return tuple(sorted(found, key=lambda a: (a.interface, a.family, a.address)))


def _block_devices() -> frozenset[str]:
    """Whole block devices (as psutil counts them: every entry of /sys/block)."""
    try:
        return frozenset(os.listdir("/sys/block"))  # noqa: PTH208
    except OSError:
        return frozenset()


class PsutilHostReader:
    """Reads this host. Not thread-safe: one sampler thread uses it.

    ``proc_root`` is where ``/proc`` is (tests point it elsewhere only to break it).
    """

    def __init__(self, *, cgroups: CgroupReader | None = None, slow_every: int = 30,
                 count_every: int = 5, proc_root: str = "/proc") -> None:
        self._cgroups = cgroups or CgroupReader()
        self._slow_every = max(1, slow_every)
        self._count_every = max(1, count_every)
        self._proc_root = proc_root
        self._reads = 0
        self._mounts: list[tuple[str, str, str]] = []
        self._addresses: tuple[Address, ...] = ()
        self._boot_time = 0.0
        self._devices: frozenset[str] = frozenset()
        self._cgroup: CgroupMemoryWatch | None = None
        self._process_count = 0
        self._stat = KeptFile(f"{proc_root}/stat", 16384)
        self._loadavg = KeptFile(f"{proc_root}/loadavg", 256)
        self._meminfo = KeptFile(f"{proc_root}/meminfo", 8192)
        self._diskstats = KeptFile(f"{proc_root}/diskstats", 8192)
        self._net_dev = KeptFile(f"{proc_root}/net/dev", 4096)

    def _memory(self) -> MemoryReading:
        data = self._meminfo.read()
        if data is None:
            raise OSError(f"cannot read {self._meminfo.path}")
        memory = parse_meminfo(data)
        limited = self._cgroup.read() if self._cgroup is not None else None
        if limited is not None and limited.limit < memory.total:
            return dataclasses.replace(memory, cgroup_limit=limited.limit,
                                       cgroup_used=limited.used)
        return memory

    def _slow(self) -> None:
        self._mounts = _mounts()
        self._addresses = _addresses()
        self._boot_time = psutil.boot_time()
        self._devices = _block_devices()
        if self._cgroup is not None:
            self._cgroup.close()
        self._cgroup = self._cgroups.watch_memory()

    def read(self) -> HostReading:
        if self._reads % self._slow_every == 0:
            self._slow()
        if self._reads % self._count_every == 0:
            self._process_count = count_processes(self._proc_root)
        self._reads += 1
        stat, loadavg = self._stat.read(), self._loadavg.read()
        if stat is None or loadavg is None:
            raise OSError(f"cannot read {self._stat.path} or {self._loadavg.path}")
        diskstats, net_dev = self._diskstats.read(), self._net_dev.read()
        disks = tuple(d for d in (_disk(*m) for m in self._mounts) if d is not None)
        return HostReading(
            cpu=parse_cpu_times(stat),
            load=parse_loadavg(loadavg),
            memory=self._memory(),
            disks=disks,
            disk_io=parse_diskstats(diskstats, self._devices) if diskstats else None,
            nics=parse_net_dev(net_dev) if net_dev else {},
            process_count=self._process_count,
            boot_time=self._boot_time,
            addresses=self._addresses,
        )

    def close(self) -> None:
        """Close the files kept open."""
        for kept in (self._stat, self._loadavg, self._meminfo, self._diskstats, self._net_dev):
            kept.close()
        if self._cgroup is not None:
            self._cgroup.close()
