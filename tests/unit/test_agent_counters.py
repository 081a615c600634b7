"""The agent's plain counters expose exactly what prometheus_client's Counter and Histogram
would, and prometheus_client is not imported until the first scrape."""

from __future__ import annotations

import random
import re
import subprocess
import sys

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from agent.metrics.counters import LATENCY_BUCKETS, AgentMetrics, _OwnCollector

_CREATED = re.compile(r"^(\S+_created(?:\{.*\})?) \S+$", re.MULTILINE)


def _reference() -> tuple[CollectorRegistry, Counter, Histogram, Counter, Counter, Counter]:
    """The counters as they were declared with prometheus_client before."""
    registry = CollectorRegistry(auto_describe=True)
    requests = Counter("dployr_http_requests", "API requests answered, by route pattern and status",
                       ("method", "route", "status"), registry=registry)
    latency = Histogram("dployr_http_request_duration_seconds", "Time to answer an API request",
                        ("method", "route"), buckets=LATENCY_BUCKETS, registry=registry)
    restarts = Counter("dployr_service_restarts",
                       "Automatic restarts of a service by the supervisor", ("service",),
                       registry=registry)
    deployments = Counter("dployr_deployments", "Deployments finished, by result", ("result",),
                          registry=registry)
    webhooks = Counter("dployr_webhook_deliveries", "Webhook delivery attempts, by result",
                       ("result",), registry=registry)
    return registry, requests, latency, restarts, deployments, webhooks


def _masked(text: bytes) -> str:
    return _CREATED.sub(r"\1 T", text.decode())


def test_same_exposition_as_prometheus_client() -> None:
    """Text and OpenMetrics output equal prometheus_client's for the same observations
    (creation timestamps aside), buckets included."""
    registry, requests, latency, restarts, deployments, webhooks = _reference()
    ours = AgentMetrics()
    rng = random.Random(3)
    routes = ["/v1/projects", "/v1/projects/{id}", "unmatched"]
    for _ in range(2000):
        method, route = rng.choice(["GET", "POST", "DELETE"]), rng.choice(routes)
        status = rng.choice([200, 201, 404, 429])
        seconds = rng.choice([0.0, 0.001, 0.0025, 30.0, 31.0, rng.expovariate(200.0)])
        requests.labels(method, route, str(status)).inc()
        latency.labels(method, route).observe(seconds)
        ours.observe_request(method, route, status, seconds)
    for name in ("web", "db", "web"):
        restarts.labels(name).inc()
        ours.service_restarted(name)
    deployments.labels("succeeded").inc()
    ours.deployment_finished("succeeded")
    webhooks.labels("failed").inc()
    ours.webhook_delivered("failed")

    mine = CollectorRegistry(auto_describe=True)
    mine.register(_OwnCollector(ours))
    assert _masked(generate_latest(mine)) == _masked(generate_latest(registry))
    assert _masked(generate_openmetrics(mine)) == _masked(generate_openmetrics(registry))


def test_negative_durations_count_as_zero() -> None:
    """A clock step backwards is counted in the first bucket, not lost."""
    ours = AgentMetrics()
    ours.observe_request("GET", "/v1/health", 200, -0.5)
    [family] = [f for f in text_string_to_metric_families(ours.render()[0].decode())
                if f.name == "dployr_http_request_duration_seconds"]
    values = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert values[("dployr_http_request_duration_seconds_bucket", "0.001")] == 1.0
    assert values[("dployr_http_request_duration_seconds_sum", None)] == 0.0


def test_prometheus_client_is_imported_at_the_first_scrape() -> None:
    """Building the app and counting requests does not import prometheus_client; rendering does."""
    script = (
        "import sys\n"
        "from agent.metrics.counters import AgentMetrics\n"
        "import agent.app\n"
        "m = AgentMetrics(); m.observe_request('GET', '/x', 200, 0.01)\n"
        "assert not [k for k in sys.modules if k.startswith('prometheus_client')]\n"
        "body, _ = m.render()\n"
        "assert b'dployr_http_requests_total' in body and 'prometheus_client' in sys.modules\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
