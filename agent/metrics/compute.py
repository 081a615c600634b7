"""Pure arithmetic from two raw readings to the figures users see.

The rules that make every number safe to serve:

- a rate is ``(current - previous) / elapsed``; when a counter went down (a reset, a wrap,
  a device that vanished and came back) or no time elapsed, the rate for that interval
  is 0, never negative;
- anything not finite (NaN, infinity) becomes 0;
- percentages are clamped to 0-100.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from agent.metrics.readings import CpuTimes, HostReading, IoCounters, NicCounters
from agent.metrics.snapshot import (
    CpuSample,
    DiskIoSample,
    DiskSample,
    HostSample,
    MemorySample,
    NetworkSample,
    SwapSample,
)

__all__ = ["compute_host", "cpu_percent", "finite", "percent", "rate"]


def finite(value: float) -> float:
    """``value`` if it is a finite number, else 0."""
    return value if math.isfinite(value) else 0.0


def rate(previous: float, current: float, elapsed: float) -> float:
    """Per-second rate of a cumulative counter; 0 across a reset or with no elapsed time."""
    if not (elapsed > 0 and math.isfinite(elapsed)) or current < previous:
        return 0.0
    return max(0.0, finite((current - previous) / elapsed))


def percent(part: float, whole: float) -> float:
    """``part`` as a percentage of ``whole``, clamped to 0-100 (0 when whole is 0)."""
    if whole <= 0:
        return 0.0
    return min(100.0, max(0.0, finite(part / whole * 100.0)))


def cpu_percent(previous: CpuTimes | None, current: CpuTimes) -> float:
    """Busy percentage of one core (or of a sum of cores) between two readings."""
    if previous is None:
        return 0.0
    busy = current.busy - previous.busy
    total = current.total - previous.total
    if total <= 0 or busy < 0:
        return 0.0
    return percent(busy, total)


def _cpu(prev: HostReading | None, cur: HostReading) -> CpuSample:
    prev_cores = prev.cpu if prev is not None else ()
    per_core = tuple(
        cpu_percent(prev_cores[i] if i < len(prev_cores) else None, core)
        for i, core in enumerate(cur.cpu))
    total = CpuTimes(busy=sum(c.busy for c in cur.cpu), total=sum(c.total for c in cur.cpu))
    prev_total = None
    if prev is not None and len(prev.cpu) == len(cur.cpu):
        prev_total = CpuTimes(busy=sum(c.busy for c in prev.cpu),
                              total=sum(c.total for c in prev.cpu))
    load = tuple(max(0.0, finite(x)) for x in cur.load)
    return CpuSample(percent=cpu_percent(prev_total, total), per_core=per_core,
                     load_1m=load[0], load_5m=load[1], load_15m=load[2])


def _memory(cur: HostReading) -> tuple[MemorySample, SwapSample]:
    m = cur.memory
    if m.cgroup_limit is not None and m.cgroup_used is not None and m.cgroup_limit < m.total:
        used = min(m.cgroup_used, m.cgroup_limit)
        memory = MemorySample(total=m.cgroup_limit, available=m.cgroup_limit - used, used=used,
                              percent=percent(used, m.cgroup_limit), source="cgroup",
                              host_total=m.total)
    else:
        memory = MemorySample(total=m.total, available=m.available, used=m.used,
                              percent=percent(m.total - m.available, m.total), source="host",
                              host_total=m.total)
    swap = SwapSample(total=m.swap_total, used=m.swap_used, free=m.swap_free,
                      percent=percent(m.swap_used, m.swap_total))
    return memory, swap


def _disks(cur: HostReading) -> tuple[DiskSample, ...]:
    disks = []
    for d in cur.disks:
        inodes_used = max(0, d.inodes_total - d.inodes_free)
        disks.append(DiskSample(
            mountpoint=d.mountpoint, device=d.device, fstype=d.fstype, total=d.total,
            used=d.used, free=d.free,
            # as df: used out of what users can fill (used + available to them)
            percent=percent(d.used, d.used + d.free),
            inodes_total=d.inodes_total, inodes_used=inodes_used, inodes_free=d.inodes_free,
            inodes_percent=percent(inodes_used, d.inodes_total)))
    return tuple(disks)


def _disk_io(prev: IoCounters | None, cur: IoCounters | None, elapsed: float) -> DiskIoSample:
    if prev is None or cur is None:
        return DiskIoSample(0.0, 0.0, 0.0, 0.0)
    return DiskIoSample(
        read_bytes_per_second=rate(prev.read_bytes, cur.read_bytes, elapsed),
        write_bytes_per_second=rate(prev.write_bytes, cur.write_bytes, elapsed),
        read_ops_per_second=rate(prev.read_count, cur.read_count, elapsed),
        write_ops_per_second=rate(prev.write_count, cur.write_count, elapsed))


def _nic(name: str, prev: NicCounters | None, cur: NicCounters, elapsed: float) -> NetworkSample:
    if prev is None:
        return NetworkSample(name, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    return NetworkSample(
        interface=name,
        rx_bytes_per_second=rate(prev.bytes_recv, cur.bytes_recv, elapsed),
        tx_bytes_per_second=rate(prev.bytes_sent, cur.bytes_sent, elapsed),
        rx_packets_per_second=rate(prev.packets_recv, cur.packets_recv, elapsed),
        tx_packets_per_second=rate(prev.packets_sent, cur.packets_sent, elapsed),
        errors_per_second=(rate(prev.errin, cur.errin, elapsed)
                           + rate(prev.errout, cur.errout, elapsed)),
        drops_per_second=(rate(prev.dropin, cur.dropin, elapsed)
                          + rate(prev.dropout, cur.dropout, elapsed)))


def _network(prev: Mapping[str, NicCounters], cur: Mapping[str, NicCounters],
             elapsed: float) -> tuple[NetworkSample, tuple[NetworkSample, ...]]:
    # The total is the sum of per-interface rates, so one interface's reset cannot make
    # the total drop (as a difference of summed counters would).
    interfaces = tuple(_nic(name, prev.get(name), counters, elapsed)
                       for name, counters in sorted(cur.items()))
    total = NetworkSample(
        interface="total",
        rx_bytes_per_second=sum(n.rx_bytes_per_second for n in interfaces),
        tx_bytes_per_second=sum(n.tx_bytes_per_second for n in interfaces),
        rx_packets_per_second=sum(n.rx_packets_per_second for n in interfaces),
        tx_packets_per_second=sum(n.tx_packets_per_second for n in interfaces),
        errors_per_second=sum(n.errors_per_second for n in interfaces),
        drops_per_second=sum(n.drops_per_second for n in interfaces))
    return total, interfaces


def compute_host(prev: HostReading | None, cur: HostReading, *, elapsed: float,
                 timestamp: float) -> HostSample:
    """The host's figures at ``timestamp`` from the reading ``elapsed`` seconds before.

    ``prev`` is None for the first sample: rates and CPU percentages are then 0.
    """
    if prev is None or not (elapsed > 0 and math.isfinite(elapsed)):
        prev, elapsed = None, 0.0
    memory, swap = _memory(cur)
    network, interfaces = _network(prev.nics if prev else {}, cur.nics, elapsed)
    boot_time = finite(cur.boot_time)
    return HostSample(
        timestamp=timestamp,
        elapsed=elapsed,
        cpu=_cpu(prev, cur),
        memory=memory,
        swap=swap,
        disks=_disks(cur),
        disk_io=_disk_io(prev.disk_io if prev else None, cur.disk_io, elapsed),
        network=network,
        interfaces=interfaces,
        process_count=max(0, cur.process_count),
        uptime_seconds=max(0.0, finite(timestamp - boot_time)) if boot_time > 0 else 0.0,
        boot_time=boot_time,
        addresses=cur.addresses,
    )
