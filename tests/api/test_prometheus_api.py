"""GET /metrics: Prometheus text that parses, and who may read it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from agent.keys import AGENT_METRICS_KEY
from agent.metrics import ServiceProcess
from agent.testing import StaticServices
from tests.conftest import bearer, login
from tests.support.agent import eventually
from tests.support.metrics import allocating_child, kill_tree, metrics_client

TOKEN = "scrape-token-0123456789"


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


async def test_exposition_parses_and_has_host_service_and_agent_metrics(
        aiohttp_client: Any, state_dir: Path) -> None:
    """The output parses with prometheus-client's parser and holds host gauges, per-service
    gauges labelled service/runtime, and the agent's own counters and histogram."""
    child = allocating_child(4)
    try:
        services = StaticServices([
            ServiceProcess("svc_web", "web", "process", "running", child.pid),
            ServiceProcess("svc_db", "db", "docker", "stopped", None, "feedbeef")])
        client = await metrics_client(aiohttp_client, state_dir, services=services,
                                      metrics={"interval": 0.5})
        headers = bearer((await login(client))["access_token"])
        assert (await client.get("/v1/instances/self", headers=headers)).status == 200
        assert (await client.get("/v1/nowhere", headers=headers)).status == 404
        counters = client.server.app[AGENT_METRICS_KEY]
        counters.service_restarted("web")
        counters.deployment_finished("succeeded")
        counters.deployment_finished("failed")
        counters.webhook_delivered("succeeded")

        async def scrape() -> dict[str, Any] | None:
            resp = await client.get("/metrics")
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            families = _families(await resp.text())
            return families if "dployr_service_memory_rss_bytes" in families and \
                families["dployr_service_memory_rss_bytes"].samples else None

        families = await eventually(scrape, message="service gauges in the exposition")
    finally:
        kill_tree(child)

    for name in ("dployr_host_cpu_percent", "dployr_host_load1", "dployr_host_memory_total_bytes",
                 "dployr_host_swap_total_bytes", "dployr_host_disk_used_bytes",
                 "dployr_host_disk_read_bytes_per_second",
                 "dployr_host_network_receive_bytes_per_second", "dployr_host_processes",
                 "dployr_host_uptime_seconds", "dployr_instance_degraded",
                 "process_resident_memory_bytes"):
        assert name in families, name
    assert families["dployr_host_memory_total_bytes"].samples[0].value > 0
    disk = families["dployr_host_disk_total_bytes"].samples
    assert any(s.labels["mountpoint"] == "/" for s in disk)
    rss = families["dployr_service_memory_rss_bytes"].samples
    assert [s.labels for s in rss] == [{"service": "web", "service_id": "svc_web",
                                        "runtime": "process"}]
    assert rss[0].value > 4 << 20
    info = {s.labels["service"]: s.labels for s in families["dployr_service_info"].samples}
    assert info["db"] == {"service": "db", "service_id": "svc_db", "runtime": "docker",
                          "state": "stopped"}
    requests = families["dployr_http_requests"].samples
    by_route = {(s.labels["route"], s.labels["status"]): s.value
                for s in requests if s.name == "dployr_http_requests_total"}
    assert by_route[("/v1/instances/{id}", "200")] == 1.0
    assert by_route[("unmatched", "404")] == 1.0
    latency = families["dployr_http_request_duration_seconds"].samples
    assert any(s.name.endswith("_bucket") and s.labels["le"] == "+Inf" for s in latency)
    restarts = [s for s in families["dployr_service_restarts"].samples
                if s.name.endswith("_total")]
    assert restarts[0].labels == {"service": "web"} and restarts[0].value == 1.0
    deployments = {s.labels["result"]: s.value for s in families["dployr_deployments"].samples
                   if s.name.endswith("_total")}
    assert deployments == {"succeeded": 1.0, "failed": 1.0}
    webhooks = [s for s in families["dployr_webhook_deliveries"].samples
                if s.name.endswith("_total")]
    assert webhooks[0].labels == {"result": "succeeded"}


async def test_openmetrics_when_asked(aiohttp_client: Any, state_dir: Path) -> None:
    """A scraper that asks for OpenMetrics gets it."""
    client = await metrics_client(aiohttp_client, state_dir)
    resp = await client.get("/metrics", headers={
        "Accept": "application/openmetrics-text; version=1.0.0"})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await resp.text()).rstrip().endswith("# EOF")


async def test_address_outside_the_allowlist_is_403(aiohttp_client: Any, state_dir: Path) -> None:
    """Without a token configured, an address outside [metrics] allow gets 403 in the envelope."""
    client = await metrics_client(aiohttp_client, state_dir, metrics={"allow": ["10.0.0.0/8"]})
    resp = await client.get("/metrics")
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "forbidden"


async def test_token_guards_addresses_outside_the_allowlist(aiohttp_client: Any,
                                                            state_dir: Path) -> None:
    """With a token: none is 401, a wrong one is 401, the right one or an API login is 200."""
    client = await metrics_client(aiohttp_client, state_dir,
                                  metrics={"allow": [], "token": TOKEN})
    resp = await client.get("/metrics")
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "unauthorized"
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert (await client.get("/metrics", headers=bearer("wrong-token-xxxxxxxxx"))).status == 401
    assert (await client.get("/metrics", headers={"Authorization": f"Basic {TOKEN}"})).status == 401
    ok = await client.get("/metrics", headers=bearer(TOKEN))
    assert ok.status == 200 and "dployr_host_cpu_percent" in await ok.text()
    admin = bearer((await login(client))["access_token"])
    assert (await client.get("/metrics", headers=admin)).status == 200


async def test_loopback_is_allowed_by_default_and_wrong_token_still_fails(
        aiohttp_client: Any, state_dir: Path) -> None:
    """The default allowlist admits loopback; a presented but wrong credential is still 401."""
    client = await metrics_client(aiohttp_client, state_dir, metrics={"token": TOKEN})
    assert (await client.get("/metrics")).status == 200
    assert (await client.get("/metrics", headers=bearer("not-the-token-xxxxxx"))).status == 401


async def test_trusted_proxy_forwarded_address_is_checked(aiohttp_client: Any,
                                                          state_dir: Path) -> None:
    """Behind a trusted proxy, the forwarded client address is what the allowlist checks."""
    client = await metrics_client(aiohttp_client, state_dir,
                                  server={"trusted_proxies": ["127.0.0.0/8"]},
                                  metrics={"allow": ["192.0.2.0/24"]})
    assert (await client.get("/metrics", headers={"X-Forwarded-For": "192.0.2.7"})).status == 200
    assert (await client.get("/metrics",
                             headers={"X-Forwarded-For": "198.51.100.1"})).status == 403


async def test_scrapes_do_not_use_the_rate_limit(aiohttp_client: Any, state_dir: Path) -> None:
    """A scraper polling often is never rate limited."""
    client = await metrics_client(aiohttp_client, state_dir,
                                  ratelimit={"unauthenticated_per_hour": 2})
    for _ in range(5):
        assert (await client.get("/metrics")).status == 200


async def test_event_loop_lag_is_measured(aiohttp_client: Any, state_dir: Path) -> None:
    """A loop blocked for 2 s shows up in dployr_event_loop_lag_seconds above 0.5 s."""
    import time

    client = await metrics_client(aiohttp_client, state_dir)

    async def lag_samples() -> dict[str, float]:
        text = await (await client.get("/metrics")).text()
        return {s.labels["le"]: s.value
                for family in text_string_to_metric_families(text)
                if family.name == "dployr_event_loop_lag_seconds"
                for s in family.samples if s.name.endswith("_bucket")}

    await eventually(lag_samples, message="a first lag measurement")
    # The agent shares this test's event loop: block it, as a handler that forgets to use a
    # thread would.
    time.sleep(2.0)  # the lag timer (1 s apart while idle) fires at most 1 s into it: lag >= 1 s

    async def blocked_seen() -> bool:
        buckets = await lag_samples()
        return buckets["+Inf"] > buckets["0.5"]

    await eventually(blocked_seen, message="the blocked loop to be measured")
