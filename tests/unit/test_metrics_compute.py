"""Rates, percentages and finiteness of the figures derived from raw host readings."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from agent.metrics.compute import compute_host, cpu_percent, percent, rate
from agent.metrics.readings import CpuTimes, IoCounters, MemoryReading, NicCounters
from agent.testing import host_reading


def _numbers(value: Any) -> list[float]:
    """Every number inside a (nested) dataclass or tuple."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [n for f in dataclasses.fields(value) for n in _numbers(getattr(value, f.name))]
    if isinstance(value, tuple | list):
        return [n for item in value for n in _numbers(item)]
    return []


def _nic(rx: int, tx: int = 0) -> NicCounters:
    return NicCounters(bytes_recv=rx, bytes_sent=tx, packets_recv=rx // 100, packets_sent=tx // 100)


def test_rate_is_difference_over_elapsed() -> None:
    """A counter that grew by 5000 in 5 s runs at 1000/s."""
    assert rate(1000, 6000, 5.0) == 1000.0


@pytest.mark.parametrize(("previous", "current", "elapsed"), [
    (6000, 1000, 5.0),          # reset / wrap: the counter went down
    (1000, 6000, 0.0),          # no time elapsed
    (1000, 6000, -1.0),         # clock went back
    (math.nan, 6000, 5.0),
    (1000, math.inf, 5.0),
    (1000, 6000, math.nan),
])
def test_rate_is_zero_when_it_cannot_be_right(previous: float, current: float, elapsed: float) -> None:
    """Resets, wraps, non-finite inputs and non-positive intervals give a rate of 0."""
    assert rate(previous, current, elapsed) == 0.0


def test_percent_is_clamped_and_finite() -> None:
    """Percentages stay within 0-100 and a zero whole gives 0."""
    assert percent(50, 200) == 25.0
    assert percent(300, 200) == 100.0
    assert percent(-1, 200) == 0.0
    assert percent(1, 0) == 0.0
    assert percent(math.nan, 1) == 0.0


def test_cpu_percent_from_busy_and_total_times() -> None:
    """A core busy 30 s out of 40 s is 75% busy; no baseline or a reset gives 0."""
    assert cpu_percent(CpuTimes(10, 100), CpuTimes(40, 140)) == 75.0
    assert cpu_percent(None, CpuTimes(40, 140)) == 0.0
    assert cpu_percent(CpuTimes(40, 140), CpuTimes(10, 100)) == 0.0


def test_first_sample_has_zero_rates_and_real_levels() -> None:
    """Without a previous reading every rate is 0 but levels (memory, disks) are shown."""
    host = compute_host(None, host_reading(), elapsed=0.0, timestamp=1_700_000_000.0)
    assert host.elapsed == 0.0
    assert host.cpu.percent == 0.0 and host.cpu.per_core == (0.0, 0.0)
    assert host.network.rx_bytes_per_second == 0.0
    assert host.disk_io.read_bytes_per_second == 0.0
    assert host.memory.total == 8 << 30 and host.memory.percent == 25.0
    assert host.disks[0].percent == 40.0 and host.disks[0].inodes_used == 100
    assert host.uptime_seconds == 10_000.0


def test_rates_per_second_between_two_readings() -> None:
    """Disk, network and CPU figures are per second over the elapsed interval."""
    before = host_reading(nics={"eth0": _nic(0, 0)},
                          disk_io=IoCounters(read_bytes=0, write_bytes=0, read_count=0,
                                             write_count=0))
    after = host_reading(
        cpu=(CpuTimes(busy=105.0, total=1010.0), CpuTimes(busy=210.0, total=1010.0)),
        nics={"eth0": _nic(50_000, 10_000)},
        disk_io=IoCounters(read_bytes=4096 * 50, write_bytes=4096 * 10, read_count=50,
                           write_count=10))
    host = compute_host(before, after, elapsed=5.0, timestamp=1_700_000_005.0)
    assert host.network.rx_bytes_per_second == 10_000.0
    assert host.network.tx_bytes_per_second == 2_000.0
    assert host.interfaces[0].rx_packets_per_second == 100.0
    assert host.disk_io.read_bytes_per_second == 4096 * 10
    assert host.disk_io.write_ops_per_second == 2.0
    assert host.cpu.per_core == (50.0, 100.0)
    assert host.cpu.percent == 75.0


def test_counter_reset_gives_zero_for_that_interface_only() -> None:
    """One NIC's counter reset gives it a 0 rate; the other NIC still counts in the total."""
    before = host_reading(nics={"eth0": _nic(1_000_000), "eth1": _nic(1_000)})
    after = host_reading(nics={"eth0": _nic(500), "eth1": _nic(11_000)})
    host = compute_host(before, after, elapsed=10.0, timestamp=1_700_000_010.0)
    rates = {n.interface: n.rx_bytes_per_second for n in host.interfaces}
    assert rates == {"eth0": 0.0, "eth1": 1000.0}
    assert host.network.rx_bytes_per_second == 1000.0
    assert all(n >= 0 and math.isfinite(n) for n in _numbers(host))


def test_disk_io_reset_and_vanished_counters_give_zero() -> None:
    """Block counters that went down, or that vanished, give rates of 0, never negative."""
    before = host_reading(disk_io=IoCounters(10**12, 10**12, 10**9, 10**9))
    after = host_reading(disk_io=IoCounters(5, 7, 1, 1))
    assert compute_host(before, after, elapsed=5.0, timestamp=1.0).disk_io.read_bytes_per_second == 0.0
    gone = host_reading(disk_io=None)
    assert compute_host(before, gone, elapsed=5.0, timestamp=1.0).disk_io.write_ops_per_second == 0.0


def test_new_interface_and_cpu_hotplug_give_zero_not_garbage() -> None:
    """An interface or core that appears between samples reports 0 for its first interval."""
    before = host_reading(cpu=(CpuTimes(1, 10),), nics={})
    after = host_reading(cpu=(CpuTimes(2, 20), CpuTimes(5, 10)), nics={"eth9": _nic(10**9)})
    host = compute_host(before, after, elapsed=1.0, timestamp=1.0)
    assert host.cpu.per_core == (10.0, 0.0)
    assert host.cpu.percent == 0.0  # the sum is not comparable across a core count change
    assert host.network.rx_bytes_per_second == 0.0


def test_non_finite_inputs_never_reach_the_output() -> None:
    """NaN or infinite raw values (a broken driver) come out as finite numbers."""
    bad = host_reading(load=(math.nan, math.inf, -1.0), boot_time=math.nan,
                       cpu=(CpuTimes(math.nan, math.inf), CpuTimes(1.0, 2.0)))
    host = compute_host(host_reading(), bad, elapsed=5.0, timestamp=1_700_000_000.0)
    assert all(math.isfinite(n) and n >= 0 for n in _numbers(host))
    assert host.cpu.load_1m == 0.0 and host.uptime_seconds == 0.0


def test_memory_reports_the_cgroup_limit_inside_a_container() -> None:
    """With a cgroup limit below RAM, total/used/available/percent are the cgroup's."""
    memory = MemoryReading(total=8 << 30, available=6 << 30, used=2 << 30, swap_total=0,
                           swap_used=0, swap_free=0, cgroup_limit=512 << 20,
                           cgroup_used=128 << 20)
    host = compute_host(None, host_reading(memory=memory), elapsed=0.0, timestamp=1.0)
    assert host.memory.source == "cgroup"
    assert host.memory.total == 512 << 20
    assert host.memory.used == 128 << 20
    assert host.memory.available == 384 << 20
    assert host.memory.percent == 25.0
    assert host.memory.host_total == 8 << 30
