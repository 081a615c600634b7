"""Raw host readings: cumulative counters and levels exactly as the OS reports them.

A ``HostReader`` produces one ``HostReading`` per sample; ``agent.metrics.compute`` turns
two consecutive readings into rates and percentages. Keeping the reads behind a Protocol
lets tests feed counters that reset or wrap, and keeps psutil out of the arithmetic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from typing import Protocol

from agent.records import record

__all__ = [
    "Address",
    "CpuTimes",
    "DiskReading",
    "HostReader",
    "HostReading",
    "IoCounters",
    "MemoryReading",
    "NicCounters",
]


@record
class CpuTimes:
    """Cumulative seconds of one core: ``busy`` (not idle nor iowait) out of ``total``."""

    busy: float
    total: float


@record
class MemoryReading:
    """Memory and swap in bytes. ``cgroup_limit``/``cgroup_used`` are set when the agent's
    cgroup has a memory limit below the host's RAM (inside a container)."""

    total: int
    available: int
    used: int
    swap_total: int
    swap_used: int
    swap_free: int
    cgroup_limit: int | None = None
    cgroup_used: int | None = None


@record
class DiskReading:
    """One mounted filesystem, from statvfs."""

    mountpoint: str
    device: str
    fstype: str
    total: int
    used: int
    free: int
    inodes_total: int
    inodes_free: int


@record
class IoCounters:
    """Cumulative block-device counters summed over the physical disks."""

    read_bytes: int
    write_bytes: int
    read_count: int
    write_count: int


@record
class NicCounters:
    """Cumulative counters of one network interface."""

    bytes_recv: int
    bytes_sent: int
    packets_recv: int
    packets_sent: int
    errin: int = 0
    errout: int = 0
    dropin: int = 0
    dropout: int = 0


@record
class Address:
    """One address of a network interface."""

    interface: str
    address: str
    family: str  # "ipv4" | "ipv6"


@record
class HostReading:
    """Everything read from the host in one sample (no derived figures)."""

    cpu: tuple[CpuTimes, ...]
    load: tuple[float, float, float]
    memory: MemoryReading
    disks: tuple[DiskReading, ...]
    disk_io: IoCounters | None
    nics: Mapping[str, NicCounters]
    process_count: int
    boot_time: float
    addresses: tuple[Address, ...] = field(default=())


class HostReader(Protocol):
    """Reads the host. Called from the sampler's thread, so it may block briefly."""

    def read(self) -> HostReading:
        ...
