"""One sample of the host and its services, as derived figures ready to serve.

Every number is finite and non-negative (``agent.metrics.compute`` guarantees it), so a
snapshot can be rendered as JSON or Prometheus text without further checks. Snapshots are
immutable: the sampler replaces the latest one, readers never see a half-built sample.
"""

from __future__ import annotations

from typing import Literal

from agent.metrics.readings import Address
from agent.metrics.sources import ServiceProcess, ServiceUsage
from agent.records import record

__all__ = [
    "CpuSample",
    "DiskIoSample",
    "DiskSample",
    "HostSample",
    "MemorySample",
    "NetworkSample",
    "ServiceSample",
    "Snapshot",
    "SwapSample",
]


@record
class CpuSample:
    """CPU busy percent since the previous sample (0-100, all cores together and each)."""

    percent: float
    per_core: tuple[float, ...]
    load_1m: float
    load_5m: float
    load_15m: float


@record
class MemorySample:
    """RAM in bytes. With ``source == "cgroup"`` the figures are the agent's cgroup's."""

    total: int
    available: int
    used: int
    percent: float
    source: Literal["host", "cgroup"]
    host_total: int


@record
class SwapSample:
    total: int
    used: int
    free: int
    percent: float


@record
class DiskSample:
    mountpoint: str
    device: str
    fstype: str
    total: int
    used: int
    free: int
    percent: float
    inodes_total: int
    inodes_used: int
    inodes_free: int
    inodes_percent: float


@record
class DiskIoSample:
    read_bytes_per_second: float
    write_bytes_per_second: float
    read_ops_per_second: float
    write_ops_per_second: float


@record
class NetworkSample:
    """Rates of one interface (or of all but loopback, with ``interface == "total"``)."""

    interface: str
    rx_bytes_per_second: float
    tx_bytes_per_second: float
    rx_packets_per_second: float
    tx_packets_per_second: float
    errors_per_second: float
    drops_per_second: float


@record
class HostSample:
    """The host at ``timestamp`` (epoch). Rates cover the ``elapsed`` seconds before it
    (0 on the first sample, when every rate is 0)."""

    timestamp: float
    elapsed: float
    cpu: CpuSample
    memory: MemorySample
    swap: SwapSample
    disks: tuple[DiskSample, ...]
    disk_io: DiskIoSample
    network: NetworkSample
    interfaces: tuple[NetworkSample, ...]
    process_count: int
    uptime_seconds: float
    boot_time: float
    addresses: tuple[Address, ...]


@record
class ServiceSample:
    """One service at sample time. ``usage`` is None when nothing could be measured, and
    ``note`` then says why (not running, container not found...)."""

    service: ServiceProcess
    usage: ServiceUsage | None
    note: str | None = None


@record
class Snapshot:
    """Everything one sample produced. ``seq`` counts samples from 1; ``duration`` is what
    the sample cost in seconds of wall time."""

    seq: int
    host: HostSample
    services: tuple[ServiceSample, ...]
    duration: float

    def service(self, key: str) -> ServiceSample | None:
        """The service with this id (or, failing that, this name)."""
        for sample in self.services:
            if sample.service.service_id == key:
                return sample
        for sample in self.services:
            if sample.service.name == key:
                return sample
        return None
