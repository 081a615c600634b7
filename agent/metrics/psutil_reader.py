"""The real ``HostReader``: psutil and statvfs, plus the agent's cgroup memory limit.

Runs in the sampler's thread. The mount table and interface addresses change rarely, so
they are re-read every ``slow_every`` samples; the counters are read every time.
"""

from __future__ import annotations

import os
import socket

import psutil

from agent.metrics.cgroup import CgroupReader
from agent.metrics.readings import (
    Address,
    CpuTimes,
    DiskReading,
    HostReading,
    IoCounters,
    MemoryReading,
    NicCounters,
)

__all__ = ["PsutilHostReader"]

# Real filesystems on a device that are still not "disks" a user cares about.
_SKIP_FSTYPES = frozenset({"squashfs", "iso9660", "udf"})


def _cpu_times() -> tuple[CpuTimes, ...]:
    cores = []
    for t in psutil.cpu_times(percpu=True):
        total = sum(t)
        # guest time is already counted in user/nice on Linux
        total -= getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0)
        idle = t.idle + getattr(t, "iowait", 0.0)
        cores.append(CpuTimes(busy=max(0.0, total - idle), total=total))
    return tuple(cores)


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


def _nics() -> dict[str, NicCounters]:
    nics = {}
    for name, c in psutil.net_io_counters(pernic=True, nowrap=True).items():
        if name == "lo":
            continue
        nics[name] = NicCounters(bytes_recv=c.bytes_recv, bytes_sent=c.bytes_sent,
                                 packets_recv=c.packets_recv, packets_sent=c.packets_sent,
                                 errin=c.errin, errout=c.errout, dropin=c.dropin,
                                 dropout=c.dropout)
    return nics


def _disk_io() -> IoCounters | None:
    try:
        c = psutil.disk_io_counters(perdisk=False, nowrap=True)
    except (OSError, RuntimeError):
        return None
    if c is None:
        return None
    return IoCounters(read_bytes=c.read_bytes, write_bytes=c.write_bytes,
                      read_count=c.read_count, write_count=c.write_count)


class PsutilHostReader:
    """Reads this host with psutil. Not thread-safe: one sampler thread uses it."""

    def __init__(self, *, cgroups: CgroupReader | None = None, slow_every: int = 30) -> None:
        self._cgroups = cgroups or CgroupReader()
        self._slow_every = max(1, slow_every)
        self._reads = 0
        self._mounts: list[tuple[str, str, str]] = []
        self._addresses: tuple[Address, ...] = ()
        self._boot_time = 0.0

    def _memory(self) -> MemoryReading:
        vm = psutil.virtual_memory()
        sw = psutil.swap_memory()
        reading = MemoryReading(total=vm.total, available=vm.available, used=vm.used,
                                swap_total=sw.total, swap_used=sw.used, swap_free=sw.free)
        limited = self._cgroups.memory()
        if limited is not None and limited.limit < vm.total:
            reading = MemoryReading(total=vm.total, available=vm.available, used=vm.used,
                                    swap_total=sw.total, swap_used=sw.used, swap_free=sw.free,
                                    cgroup_limit=limited.limit, cgroup_used=limited.used)
        return reading

    def read(self) -> HostReading:
        if self._reads % self._slow_every == 0:
            self._mounts = _mounts()
            self._addresses = _addresses()
            self._boot_time = psutil.boot_time()
        self._reads += 1
        disks = tuple(d for d in (_disk(*m) for m in self._mounts) if d is not None)
        return HostReading(
            cpu=_cpu_times(),
            load=psutil.getloadavg(),
            memory=self._memory(),
            disks=disks,
            disk_io=_disk_io(),
            nics=_nics(),
            process_count=len(psutil.pids()),
            boot_time=self._boot_time,
            addresses=self._addresses,
        )
