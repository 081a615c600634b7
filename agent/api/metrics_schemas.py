"""Response shapes of the instance and service metrics endpoints, built from snapshots.

Byte counts are integers, rates are per second, percentages are 0-100 (a service's CPU is
in percent of one core, so it may pass 100). Every number is finite.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, field_validator

from agent.api.schemas import QueryModel, Resource
from agent.config import parse_duration
from agent.metrics.history import Series, format_duration
from agent.metrics.snapshot import HostSample, NetworkSample, ServiceSample
from agent.metrics.sources import ServiceProcess
from agent.timefmt import from_epoch

__all__ = [
    "CpuMetrics",
    "DiskIoMetrics",
    "DiskMetrics",
    "HistoryQuery",
    "HostMetrics",
    "MemoryMetrics",
    "MetricsHistory",
    "NetworkMetrics",
    "ServiceMetrics",
    "ServiceUsageMetrics",
    "SwapMetrics",
    "host_metrics",
    "service_metrics",
]

_DURATION_PATTERN = r"^[1-9][0-9]{0,6}[smhd]$"
_DURATION_DOC = "A duration: a whole number and a unit s, m, h or d (30s, 5m, 1h, 1d)"


class HistoryQuery(QueryModel):
    """``?window=1h&step=1m``: history over the window, one averaged point per step."""

    window: str | None = Field(default=None, examples=["1h"],
                               json_schema_extra={"pattern": _DURATION_PATTERN},
                               description=_DURATION_DOC + ". Omit (and step) for the latest "
                                           "sample only; with step alone, 60 steps.")
    step: str | None = Field(default=None, examples=["1m"],
                             json_schema_extra={"pattern": _DURATION_PATTERN},
                             description=_DURATION_DOC + ". Default: window/60, at least the "
                                         "resolution kept for that window.")

    @field_validator("window", "step")
    @classmethod
    def _check_duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @property
    def window_seconds(self) -> int | None:
        return parse_duration(self.window) if self.window is not None else None

    @property
    def step_seconds(self) -> int | None:
        return parse_duration(self.step) if self.step is not None else None


class MetricsHistory(Resource):
    """Averages per step over the window. ``timestamps`` are the start of each step;
    each series has one value per timestamp, ``null`` where no sample fell in the step."""

    window: str = Field(examples=["1h"])
    step: str = Field(examples=["1m"])
    window_seconds: int
    step_seconds: int
    timestamps: list[datetime]
    series: dict[str, list[float | None]]

    @classmethod
    def of(cls, series: Series, rename: dict[str, str] | None = None) -> MetricsHistory:
        rename = rename or {}
        return cls(window=format_duration(series.window), step=format_duration(series.step),
                   window_seconds=series.window, step_seconds=series.step,
                   timestamps=[from_epoch(t) for t in series.timestamps],
                   series={rename.get(k, k): v for k, v in series.values.items()})


class CpuMetrics(Resource):
    percent: float = Field(description="Busy time of all cores since the previous sample, 0-100")
    per_core: list[float] = Field(description="Busy percent of each logical core")
    count: int = Field(description="Logical cores")
    load_1m: float
    load_5m: float
    load_15m: float


class MemoryMetrics(Resource):
    total_bytes: int = Field(description="RAM, or the cgroup's limit when the agent runs "
                                         "inside a memory-limited container")
    available_bytes: int
    used_bytes: int
    percent: float
    source: Literal["host", "cgroup"]
    host_total_bytes: int = Field(description="The machine's RAM, whatever the cgroup limit")


class SwapMetrics(Resource):
    total_bytes: int
    used_bytes: int
    free_bytes: int
    percent: float


class DiskMetrics(Resource):
    mountpoint: str
    device: str
    fstype: str
    total_bytes: int
    used_bytes: int
    free_bytes: int = Field(description="Space unprivileged users can still write, as df")
    percent: float = Field(description="used / (used + free), as df")
    inodes_total: int
    inodes_used: int
    inodes_free: int
    inodes_percent: float


class DiskIoMetrics(Resource):
    read_bytes_per_second: float
    write_bytes_per_second: float
    read_ops_per_second: float
    write_ops_per_second: float


class NetworkMetrics(Resource):
    interface: str = Field(description="The interface, or 'total' for all but loopback")
    rx_bytes_per_second: float
    tx_bytes_per_second: float
    rx_packets_per_second: float
    tx_packets_per_second: float
    errors_per_second: float
    drops_per_second: float


class ServiceUsageMetrics(Resource):
    cpu_percent: float = Field(description="CPU of the whole process tree since the previous "
                                           "sample, in percent of one core (0 on the first)")
    rss_bytes: int = Field(description="Resident memory summed over the process tree")
    threads: int
    open_files: int = Field(description="Open file descriptors (files, sockets, pipes)")
    processes: int = Field(description="Processes in the tree (or the container)")


class ServiceMetrics(Resource):
    service_id: str
    name: str
    runtime: Literal["process", "docker"]
    state: str
    pid: int | None
    container_id: str | None
    sampled_at: datetime | None = Field(description="When the figures were read; null "
                                                    "before the first sample of the service")
    usage: ServiceUsageMetrics | None = Field(description="null when nothing runs to measure")
    note: str | None = Field(description="Why usage is null")
    history: MetricsHistory | None = None


class HostMetrics(Resource):
    instance_id: str
    sampled_at: datetime
    interval_seconds: float = Field(description="The sampler's interval")
    elapsed_seconds: float = Field(description="Seconds the rates cover (0 on the first sample)")
    cpu: CpuMetrics
    memory: MemoryMetrics
    swap: SwapMetrics
    disks: list[DiskMetrics]
    disk_io: DiskIoMetrics
    network: NetworkMetrics
    interfaces: list[NetworkMetrics]
    process_count: int
    uptime_seconds: float = Field(description="Seconds since the host booted")
    services: list[ServiceMetrics]
    history: MetricsHistory | None = None


def service_metrics(service: ServiceProcess, sample: ServiceSample | None,
                    sampled_at: float | None, history: MetricsHistory | None = None
                    ) -> ServiceMetrics:
    """A service's figures from its sample (None: not sampled yet)."""
    usage = sample.usage if sample is not None else None
    note = sample.note if sample is not None else "not sampled yet"
    return ServiceMetrics(
        service_id=service.service_id, name=service.name, runtime=service.runtime,
        state=service.state, pid=service.pid, container_id=service.container_id,
        sampled_at=from_epoch(sampled_at) if sampled_at is not None and sample else None,
        usage=ServiceUsageMetrics(cpu_percent=usage.cpu_percent, rss_bytes=usage.rss_bytes,
                                  threads=usage.threads, open_files=usage.open_files,
                                  processes=usage.processes) if usage is not None else None,
        note=note if usage is None else None,
        history=history)


def _network(n: NetworkSample) -> NetworkMetrics:
    return NetworkMetrics(interface=n.interface,
                          rx_bytes_per_second=round(n.rx_bytes_per_second, 3),
                          tx_bytes_per_second=round(n.tx_bytes_per_second, 3),
                          rx_packets_per_second=round(n.rx_packets_per_second, 3),
                          tx_packets_per_second=round(n.tx_packets_per_second, 3),
                          errors_per_second=round(n.errors_per_second, 3),
                          drops_per_second=round(n.drops_per_second, 3))


def host_metrics(instance_id: str, interval: float, host: HostSample,
                 services: list[ServiceMetrics], history: MetricsHistory | None = None
                 ) -> HostMetrics:
    """The instance's figures from a host sample."""
    cpu, mem, swap, io = host.cpu, host.memory, host.swap, host.disk_io
    return HostMetrics(
        instance_id=instance_id,
        sampled_at=from_epoch(host.timestamp),
        interval_seconds=interval,
        elapsed_seconds=round(host.elapsed, 6),
        cpu=CpuMetrics(percent=round(cpu.percent, 2),
                       per_core=[round(p, 2) for p in cpu.per_core],
                       count=len(cpu.per_core), load_1m=cpu.load_1m, load_5m=cpu.load_5m,
                       load_15m=cpu.load_15m),
        memory=MemoryMetrics(total_bytes=mem.total, available_bytes=mem.available,
                             used_bytes=mem.used, percent=round(mem.percent, 2),
                             source=mem.source, host_total_bytes=mem.host_total),
        swap=SwapMetrics(total_bytes=swap.total, used_bytes=swap.used, free_bytes=swap.free,
                         percent=round(swap.percent, 2)),
        disks=[DiskMetrics(mountpoint=d.mountpoint, device=d.device, fstype=d.fstype,
                           total_bytes=d.total, used_bytes=d.used, free_bytes=d.free,
                           percent=round(d.percent, 2), inodes_total=d.inodes_total,
                           inodes_used=d.inodes_used, inodes_free=d.inodes_free,
                           inodes_percent=round(d.inodes_percent, 2)) for d in host.disks],
        disk_io=DiskIoMetrics(read_bytes_per_second=round(io.read_bytes_per_second, 3),
                              write_bytes_per_second=round(io.write_bytes_per_second, 3),
                              read_ops_per_second=round(io.read_ops_per_second, 3),
                              write_ops_per_second=round(io.write_ops_per_second, 3)),
        network=_network(host.network),
        interfaces=[_network(n) for n in host.interfaces],
        process_count=host.process_count,
        uptime_seconds=round(host.uptime_seconds, 3),
        services=services,
        history=history,
    )
