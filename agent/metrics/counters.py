"""The agent's own counters: API requests and their latency, restarts, deployments, webhooks,
the event loop's lag.

They are plain numbers, counted on the event loop's thread (a request costs a few additions,
no locks and no label lookups), and become Prometheus families only when ``/metrics`` is
scraped: ``prometheus_client`` itself is imported on the first scrape, not at start. The
families are the ones ``prometheus_client.Counter`` and ``Histogram`` would expose, sample for
sample (``_total``, ``_created``, cumulative ``_bucket``\\ s, ``_count``, ``_sum``).

Each app gets its own registry (never the global one), so two agents in one process (tests)
do not share counters.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

__all__ = ["LATENCY_BUCKETS", "AgentMetrics", "RequestSeries"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)
_BOUNDS = (*LATENCY_BUCKETS, float("inf"))
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _Counter:
    """A labelled counter: label values -> [value, created]."""

    def __init__(self, name: str, doc: str, labels: tuple[str, ...]) -> None:
        self.name, self.doc, self.labels = name, doc, labels
        self.children: dict[tuple[str, ...], list[float]] = {}

    def child(self, *values: str) -> list[float]:
        entry = self.children.get(values)
        if entry is None:
            entry = self.children[values] = [0.0, time.time()]
        return entry

    def inc(self, *values: str) -> None:
        self.child(*values)[0] += 1

    def family(self, created: bool) -> Metric:
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for values, (value, since) in list(self.children.items()):
            family.add_metric(values, value, created=since if created else None)
        return family


class _HistogramChild:
    __slots__ = ("buckets", "created", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * len(_BOUNDS)
        self.sum = 0.0
        self.created = time.time()


class _Histogram:
    """A labelled histogram with the latency buckets."""

    def __init__(self, name: str, doc: str, labels: tuple[str, ...]) -> None:
        self.name, self.doc, self.labels = name, doc, labels
        self.children: dict[tuple[str, ...], _HistogramChild] = {}

    def child(self, *values: str) -> _HistogramChild:
        entry = self.children.get(values)
        if entry is None:
            entry = self.children[values] = _HistogramChild()
        return entry

    def family(self, created: bool) -> Metric:
        from prometheus_client.core import Metric
        from prometheus_client.utils import floatToGoString

        family = Metric(self.name, self.doc, "histogram")
        for values, child in list(self.children.items()):
            labels = dict(zip(self.labels, values, strict=True))
            total = 0.0
            for bound, count in zip(_BOUNDS, list(child.buckets), strict=True):
                total += count
                le = floatToGoString(bound)  # type: ignore[no-untyped-call]
                family.add_sample(f"{self.name}_bucket", {**labels, "le": le}, total)
            family.add_sample(f"{self.name}_count", labels, total)
            family.add_sample(f"{self.name}_sum", labels, child.sum)
            if created:
                family.add_sample(f"{self.name}_created", labels, child.created)
        return family


class RequestSeries:
    """Where requests of one (method, route, status) are counted: one request is three
    additions."""

    __slots__ = ("_count", "_latency")

    def __init__(self, count: list[float], latency: _HistogramChild) -> None:
        self._count = count
        self._latency = latency

    def observe(self, seconds: float) -> None:
        """Count one request that took ``seconds``."""
        self._count[0] += 1
        latency = self._latency
        if seconds < 0.0:
            seconds = 0.0
        latency.buckets[bisect_left(_BOUNDS, seconds)] += 1  # the first bucket with le >= seconds
        latency.sum += seconds


class AgentMetrics:
    """The agent's own counters, and the Prometheus registry they are exposed through.

    Other parts call the ``*_`` methods; label values should come from small fixed sets
    (a route pattern, never a raw path) to keep the number of series bounded. Meant for the
    event loop's thread; ``render`` may run anywhere (it copies what it reads).
    """

    def __init__(self) -> None:
        self._requests = _Counter("dployr_http_requests",
                                  "API requests answered, by route pattern and status",
                                  ("method", "route", "status"))
        self._latency = _Histogram("dployr_http_request_duration_seconds",
                                   "Time to answer an API request", ("method", "route"))
        self._restarts = _Counter("dployr_service_restarts",
                                  "Automatic restarts of a service by the supervisor", ("service",))
        self._deployments = _Counter("dployr_deployments", "Deployments finished, by result",
                                     ("result",))
        self._webhooks = _Counter("dployr_webhook_deliveries",
                                  "Webhook delivery attempts, by result", ("result",))
        self._loop_lag = _Histogram("dployr_event_loop_lag_seconds",
                                    "How late the event loop woke a periodic timer (time it "
                                    "could not run anything else)", ())
        self._series: dict[tuple[str, str, int], RequestSeries] = {}
        self._collectors: list[Any] = []
        self._registry: CollectorRegistry | None = None

    def request_series(self, method: str, route: str, status: int) -> RequestSeries:
        """The series that counts requests of ``method`` on ``route`` (the pattern, e.g.
        ``/v1/projects/{id}``) answered with ``status``; made once, then reused."""
        method = method if method in _METHODS else "OTHER"  # clients choose methods freely
        key = (method, route, status)
        series = self._series.get(key)
        if series is None:
            series = RequestSeries(self._requests.child(method, route, str(status)),
                                   self._latency.child(method, route))
            self._series[key] = series
        return series

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request (``route`` is the pattern, e.g. ``/v1/projects/{id}``)."""
        self.request_series(method, route, status).observe(seconds)

    def service_restarted(self, service: str) -> None:
        """The supervisor restarted ``service`` (its name) after it exited."""
        self._restarts.inc(service)

    def deployment_finished(self, result: str) -> None:
        """A deployment ended: ``succeeded``, ``failed`` or ``rolled_back``."""
        self._deployments.inc(result)

    def webhook_delivered(self, result: str) -> None:
        """One webhook delivery attempt ended: ``succeeded``, ``failed`` or ``gave_up``."""
        self._webhooks.inc(result)

    def loop_lag(self, seconds: float) -> None:
        """Count one measurement of the event loop's lag (see ``agent.metrics.looplag``)."""
        child = self._loop_lag.child()
        seconds = max(0.0, seconds)
        child.buckets[bisect_left(_BOUNDS, seconds)] += 1
        child.sum += seconds

    def add_collector(self, collector: Any) -> None:
        """Expose ``collector`` (a prometheus_client collector) too, after the agent's own."""
        if self._registry is not None:
            self._registry.register(collector)
        else:
            self._collectors.append(collector)

    @property
    def registry(self) -> CollectorRegistry:
        """The registry (made, and prometheus_client imported, on first use)."""
        if self._registry is None:
            from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

            registry = CollectorRegistry(auto_describe=True)
            registry.register(_OwnCollector(self))
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            for collector in self._collectors:
                registry.register(collector)
            self._collectors.clear()
            self._registry = registry
        return self._registry

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition (text format, or OpenMetrics when ``accept`` asks) and its
        content type."""
        from prometheus_client.exposition import choose_encoder

        registry = self.registry
        encoder, content_type = choose_encoder(accept)
        return encoder(registry), content_type

    def _families(self) -> Iterator[Metric]:
        from prometheus_client import metrics

        created = bool(getattr(metrics, "_use_created", True))  # PROMETHEUS_DISABLE_CREATED_SERIES
        yield self._requests.family(created)
        yield self._latency.family(created)
        yield self._restarts.family(created)
        yield self._deployments.family(created)
        yield self._webhooks.family(created)
        if self._loop_lag.children:
            yield self._loop_lag.family(created)


class _OwnCollector:
    """The agent's counters as a prometheus_client collector."""

    def __init__(self, metrics: AgentMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics._families()
