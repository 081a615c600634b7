"""Prometheus exposition: the agent's own counters and the sampler's latest snapshot.

Each app gets its own ``CollectorRegistry`` (never the global one), so two agents in one
process (tests) do not share counters. ``AgentMetrics`` (in ``counters``) is the small object
other parts use to count what they do (requests, restarts, deployments, webhook deliveries);
the host and service gauges are produced at scrape time from the cached snapshot by
``SnapshotCollector``: a scrape never samples. ``prometheus_client`` is imported at the first
scrape, not when the agent starts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from agent.metrics.counters import LATENCY_BUCKETS, AgentMetrics, RequestSeries
from agent.metrics.sampler import Sampler
from agent.metrics.snapshot import Snapshot

if TYPE_CHECKING:
    from prometheus_client.core import GaugeMetricFamily, Metric

__all__ = ["LATENCY_BUCKETS", "AgentMetrics", "RequestSeries", "SnapshotCollector"]

_SERVICE_LABELS = ("service", "service_id", "runtime")


def _gauge(name: str, doc: str, value: float, unit_labels: dict[str, str] | None = None
           ) -> GaugeMetricFamily:
    from prometheus_client.core import GaugeMetricFamily

    if unit_labels:
        family = GaugeMetricFamily(name, doc, labels=list(unit_labels))
        family.add_metric(list(unit_labels.values()), value)
        return family
    return GaugeMetricFamily(name, doc, value=value)


class SnapshotCollector:
    """Host and per-service gauges from the sampler's latest snapshot, at scrape time."""

    def __init__(self, sampler: Sampler, degraded: Callable[[], bool] | None = None) -> None:
        self._sampler = sampler
        self._degraded = degraded

    def describe(self) -> Iterable[Metric]:
        return ()  # the families vary with the snapshot; nothing to pre-register

    def collect(self) -> Iterator[Metric]:
        snapshot = self._sampler.latest
        if self._degraded is not None:
            yield _gauge("dployr_instance_degraded", "1 when the instance is degraded",
                         1.0 if self._degraded() else 0.0)
        if snapshot is None:
            return
        yield from _host(snapshot)
        yield from _services(snapshot)
        yield _gauge("dployr_metrics_last_sample_timestamp_seconds",
                     "When the sampler last read the host", snapshot.host.timestamp)
        yield _gauge("dployr_metrics_sample_duration_seconds",
                     "Wall time the last sample took", snapshot.duration)


def _host(snapshot: Snapshot) -> Iterator[Metric]:
    from prometheus_client.core import GaugeMetricFamily

    host = snapshot.host
    cpu = host.cpu
    yield _gauge("dployr_host_cpu_percent", "CPU busy, all cores (0-100)", cpu.percent)
    per_core = GaugeMetricFamily("dployr_host_cpu_core_percent", "CPU busy per core (0-100)",
                                 labels=["core"])
    for index, value in enumerate(cpu.per_core):
        per_core.add_metric([str(index)], value)
    yield per_core
    yield _gauge("dployr_host_load1", "Load average over 1 minute", cpu.load_1m)
    yield _gauge("dployr_host_load5", "Load average over 5 minutes", cpu.load_5m)
    yield _gauge("dployr_host_load15", "Load average over 15 minutes", cpu.load_15m)
    mem, swap = host.memory, host.swap
    yield _gauge("dployr_host_memory_total_bytes", "Memory available to the instance",
                 mem.total)
    yield _gauge("dployr_host_memory_available_bytes", "Memory available", mem.available)
    yield _gauge("dployr_host_memory_used_bytes", "Memory used", mem.used)
    yield _gauge("dployr_host_swap_total_bytes", "Swap size", swap.total)
    yield _gauge("dployr_host_swap_used_bytes", "Swap used", swap.used)
    disk_labels = ["mountpoint", "device", "fstype"]
    families = {
        key: GaugeMetricFamily(f"dployr_host_disk_{key}", doc, labels=disk_labels)
        for key, doc in (("total_bytes", "Filesystem size"),
                         ("used_bytes", "Filesystem space used"),
                         ("free_bytes", "Filesystem space available to users"),
                         ("inodes_total", "Filesystem inodes"),
                         ("inodes_free", "Filesystem inodes free"))}
    for d in host.disks:
        labels = [d.mountpoint, d.device, d.fstype]
        families["total_bytes"].add_metric(labels, d.total)
        families["used_bytes"].add_metric(labels, d.used)
        families["free_bytes"].add_metric(labels, d.free)
        families["inodes_total"].add_metric(labels, d.inodes_total)
        families["inodes_free"].add_metric(labels, d.inodes_free)
    yield from families.values()
    io = host.disk_io
    yield _gauge("dployr_host_disk_read_bytes_per_second", "Disk read rate",
                 io.read_bytes_per_second)
    yield _gauge("dployr_host_disk_write_bytes_per_second", "Disk write rate",
                 io.write_bytes_per_second)
    rx = GaugeMetricFamily("dployr_host_network_receive_bytes_per_second",
                           "Network receive rate", labels=["interface"])
    tx = GaugeMetricFamily("dployr_host_network_transmit_bytes_per_second",
                           "Network transmit rate", labels=["interface"])
    for nic in host.interfaces:
        rx.add_metric([nic.interface], nic.rx_bytes_per_second)
        tx.add_metric([nic.interface], nic.tx_bytes_per_second)
    yield rx
    yield tx
    yield _gauge("dployr_host_processes", "Processes on the host", host.process_count)
    yield _gauge("dployr_host_uptime_seconds", "Seconds since the host booted",
                 host.uptime_seconds)


def _services(snapshot: Snapshot) -> Iterator[Metric]:
    from prometheus_client.core import GaugeMetricFamily

    info = GaugeMetricFamily("dployr_service_info", "1 per service, with its state",
                             labels=[*_SERVICE_LABELS, "state"])
    specs = (("cpu_percent", "CPU of the process tree, percent of one core"),
             ("memory_rss_bytes", "Resident memory of the process tree"),
             ("threads", "Threads in the process tree"),
             ("open_files", "Open file descriptors in the process tree"),
             ("processes", "Processes in the tree"))
    families = {key: GaugeMetricFamily(f"dployr_service_{key}", doc, labels=list(_SERVICE_LABELS))
                for key, doc in specs}
    for sample in snapshot.services:
        svc = sample.service
        labels = [svc.name, svc.service_id, svc.runtime]
        info.add_metric([*labels, svc.state], 1.0)
        usage = sample.usage
        if usage is None:
            continue
        families["cpu_percent"].add_metric(labels, usage.cpu_percent)
        families["memory_rss_bytes"].add_metric(labels, usage.rss_bytes)
        families["threads"].add_metric(labels, usage.threads)
        families["open_files"].add_metric(labels, usage.open_files)
        families["processes"].add_metric(labels, usage.processes)
    yield info
    yield from families.values()
