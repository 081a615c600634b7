"""Prometheus exposition: the agent's own counters and the sampler's latest snapshot.

Each app gets its own ``CollectorRegistry`` (never the global one), so two agents in one
process (tests) do not share counters. ``AgentMetrics`` is the small object other parts
use to count what they do (requests, restarts, deployments, webhook deliveries); the host
and service gauges are produced at scrape time from the cached snapshot by
``SnapshotCollector``: a scrape never samples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from agent.metrics.sampler import Sampler
from agent.metrics.snapshot import Snapshot

__all__ = ["LATENCY_BUCKETS", "AgentMetrics", "RequestSeries", "SnapshotCollector"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)

_SERVICE_LABELS = ("service", "service_id", "runtime")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestSeries:
    """The labelled request counter and latency histogram of one (method, route, status):
    observing a request is an increment and a histogram observation, no label lookups."""

    __slots__ = ("_count", "_latency")

    def __init__(self, count: Any, latency: Any) -> None:
        self._count = count
        self._latency = latency

    def observe(self, seconds: float) -> None:
        """Count one request that took ``seconds``."""
        self._count.inc()
        self._latency.observe(max(0.0, seconds))


class AgentMetrics:
    """The agent's own counters, in a registry of its own.

    Other parts call the ``*_`` methods; label values should come from small fixed sets
    (a route pattern, never a raw path) to keep the number of series bounded.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "dployr_http_requests", "API requests answered, by route pattern and status",
            ("method", "route", "status"), registry=self.registry)
        self._latency = Histogram(
            "dployr_http_request_duration_seconds", "Time to answer an API request",
            ("method", "route"), buckets=LATENCY_BUCKETS, registry=self.registry)
        self._restarts = Counter(
            "dployr_service_restarts", "Automatic restarts of a service by the supervisor",
            ("service",), registry=self.registry)
        self._deployments = Counter(
            "dployr_deployments", "Deployments finished, by result",
            ("result",), registry=self.registry)
        self._webhooks = Counter(
            "dployr_webhook_deliveries", "Webhook delivery attempts, by result",
            ("result",), registry=self.registry)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self._series: dict[tuple[str, str, int], RequestSeries] = {}

    def request_series(self, method: str, route: str, status: int) -> RequestSeries:
        """The series to count requests of ``method`` on ``route`` (the pattern, e.g.
        ``/v1/projects/{id}``) answered with ``status``; made once, then reused."""
        method = method if method in _METHODS else "OTHER"  # clients choose methods freely
        key = (method, route, status)
        series = self._series.get(key)
        if series is None:
            series = RequestSeries(self._requests.labels(method, route, str(status)),
                                   self._latency.labels(method, route))
            self._series[key] = series
        return series

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request (``route`` is the pattern, e.g. ``/v1/projects/{id}``)."""
        self.request_series(method, route, status).observe(seconds)

    def service_restarted(self, service: str) -> None:
        """The supervisor restarted ``service`` (its name) after it exited."""
        self._restarts.labels(service).inc()

    def deployment_finished(self, result: str) -> None:
        """A deployment ended: ``succeeded``, ``failed`` or ``rolled_back``."""
        self._deployments.labels(result).inc()

    def webhook_delivered(self, result: str) -> None:
        """One webhook delivery attempt ended: ``succeeded``, ``failed`` or ``gave_up``."""
        self._webhooks.labels(result).inc()

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition (text format, or OpenMetrics when ``accept`` asks) and its
        content type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


def _gauge(name: str, doc: str, value: float, unit_labels: dict[str, str] | None = None
           ) -> GaugeMetricFamily:
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
