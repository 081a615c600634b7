"""GET /v1/instances, /v1/instances/{id} and /v1/instances/{id}/metrics through the API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.api.instances import Instance, InstancePage
from agent.api.metrics_schemas import HostMetrics
from agent.keys import DB_KEY
from agent.metrics import HealthReason, ProxyState
from agent.metrics.readings import DiskReading, NicCounters
from agent.testing import FakeClock, ScriptedHostReader, host_reading
from tests.conftest import Client, bearer, login
from tests.support.agent import eventually
from tests.support.metrics import (
    assert_shape,
    instance_of,
    metrics_client,
    sampler_of,
    viewer_headers,
)


async def _get(client: Client, path: str, headers: dict[str, str], status: int = 200) -> Any:
    resp = await client.get(path, headers=headers)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def test_list_and_get_show_every_documented_field(aiohttp_client: Any,
                                                        state_dir: Path) -> None:
    """A viewer lists the one instance and gets it by id and by 'self', every field typed."""
    client = await metrics_client(aiohttp_client, state_dir,
                                  instance={"name": "edge-1", "labels": {"region": "eu"}})
    headers = await viewer_headers(client)
    page = assert_shape(InstancePage, await _get(client, "/v1/instances", headers))
    assert len(page.data) == 1 and page.next_cursor is None
    listed = page.data[0]
    assert listed.id.startswith("ins_")
    by_self = assert_shape(Instance, await _get(client, "/v1/instances/self", headers))
    by_id = assert_shape(Instance, await _get(client, f"/v1/instances/{listed.id}", headers))
    assert by_self.id == by_id.id == listed.id
    assert by_self.name == "edge-1" and by_self.labels == {"region": "eu"}
    assert by_self.hostname and by_self.os and by_self.kernel and by_self.architecture
    assert by_self.cpu_count >= 1 and by_self.memory_total_bytes > 0
    assert by_self.status == "healthy" and by_self.reasons == []
    assert by_self.services.total == 0 and by_self.services.by_state == {}
    assert by_self.uptime_seconds > 0 and by_self.agent_uptime_seconds >= 0
    assert by_self.proxy.backend == "builtin" and by_self.proxy.state == "running"
    assert by_self.sampled_at is not None


async def test_runtimes_come_from_the_detector(aiohttp_client: Any, state_dir: Path) -> None:
    """Runtimes and their versions are those the detector found at start."""
    client = await metrics_client(aiohttp_client, state_dir)
    headers = bearer((await login(client))["access_token"])
    body = await _get(client, "/v1/instances/self", headers)
    assert body["runtimes_detected"] is True
    assert body["runtimes"] == [
        {"name": "node", "available": True, "version": "20.11.1", "detail": None},
        {"name": "docker", "available": False, "version": None,
         "detail": "the Docker engine is not reachable"}]


async def test_unknown_instance_is_404_and_auth_is_required(aiohttp_client: Any,
                                                            state_dir: Path) -> None:
    """Another instance id is 404 in the envelope; without a token it is 401."""
    client = await metrics_client(aiohttp_client, state_dir)
    headers = bearer((await login(client))["access_token"])
    for path in ("/v1/instances/ins_someoneelse", "/v1/instances/ins_someoneelse/metrics"):
        body = await _get(client, path, headers, status=404)
        assert body["error"]["code"] == "not_found"
    resp = await client.get("/v1/instances/self")
    assert resp.status == 401


async def test_instance_id_survives_a_restart(aiohttp_client: Any, state_dir: Path) -> None:
    """The id is generated once and kept in the store: a restarted agent has the same id."""
    first = await metrics_client(aiohttp_client, state_dir)
    headers = bearer((await login(first))["access_token"])
    before = (await _get(first, "/v1/instances/self", headers))["id"]
    await first.close()
    second = await metrics_client(aiohttp_client, state_dir)
    headers = bearer((await login(second))["access_token"])
    assert (await _get(second, "/v1/instances/self", headers))["id"] == before


async def test_metrics_show_every_documented_field(aiohttp_client: Any, state_dir: Path) -> None:
    """The real host's metrics: CPU, memory, swap, disks, I/O rates, processes, uptime."""
    client = await metrics_client(aiohttp_client, state_dir, metrics={"interval": 0.5})
    headers = bearer((await login(client))["access_token"])
    sampler = sampler_of(client)
    first = sampler.latest
    assert first is not None  # primed before the first request

    async def second_sample() -> bool:
        return sampler.latest is not None and sampler.latest.seq > first.seq

    await eventually(second_sample, message="a second sample")
    body = await _get(client, "/v1/instances/self/metrics", headers)
    metrics = assert_shape(HostMetrics, body)
    assert metrics.instance_id == instance_of(client).id
    assert metrics.interval_seconds == 0.5 and metrics.elapsed_seconds > 0
    assert metrics.cpu.count == len(metrics.cpu.per_core) >= 1
    assert 0 <= metrics.cpu.percent <= 100
    assert metrics.memory.total_bytes > metrics.memory.used_bytes > 0
    assert any(d.mountpoint == "/" for d in metrics.disks)
    assert all(d.total_bytes > 0 and 0 <= d.percent <= 100 for d in metrics.disks)
    assert metrics.network.interface == "total"
    assert metrics.process_count > 1 and metrics.uptime_seconds > 0
    assert metrics.services == [] and metrics.history is None


async def test_rates_across_a_counter_reset_through_the_api(aiohttp_client: Any,
                                                            state_dir: Path) -> None:
    """Network rates are right per interval, and 0 (not negative) after a counter reset."""
    clock = FakeClock()
    reader = ScriptedHostReader(host_reading(nics={"eth0": NicCounters(0, 0, 0, 0)}))
    client = await metrics_client(aiohttp_client, state_dir, clock=clock, reader=reader)
    headers = bearer((await login(client))["access_token"])
    sampler = sampler_of(client)
    await sampler.stop()  # ticks are taken by hand

    async def sample(rx: int) -> dict[str, Any]:
        reader.push(host_reading(nics={"eth0": NicCounters(rx, 0, 0, 0)}))
        clock.advance(5)
        await sampler.tick()
        return dict((await _get(client, "/v1/instances/self/metrics", headers))["network"])

    assert (await sample(50_000))["rx_bytes_per_second"] == 10_000.0
    assert (await sample(1_000))["rx_bytes_per_second"] == 0.0  # reset: 0 for this interval
    assert (await sample(6_000))["rx_bytes_per_second"] == 1_000.0  # counting again


async def test_history_window_and_step(aiohttp_client: Any, state_dir: Path) -> None:
    """?window=1m&step=20s averages the samples of each step, from the in-memory ring."""
    clock = FakeClock(start=1_699_999_200.0)
    reader = ScriptedHostReader(host_reading(process_count=0))
    client = await metrics_client(aiohttp_client, state_dir, clock=clock, reader=reader,
                                  metrics={"interval": 5})
    headers = bearer((await login(client))["access_token"])
    sampler = sampler_of(client)
    await sampler.stop()  # ticks are taken by hand
    for count in range(1, 13):  # one sample every 5 s for a minute: 10, 20, ... 120 processes
        reader.push(host_reading(process_count=count * 10))
        clock.advance(5)
        await sampler.tick()
    body = await _get(client, "/v1/instances/self/metrics?window=1m&step=20s", headers)
    history = body["history"]
    assert history["window"] == "1m" and history["step"] == "20s"
    assert history["window_seconds"] == 60 and history["step_seconds"] == 20
    assert len(history["timestamps"]) == 4
    assert all(len(v) == 4 for v in history["series"].values())
    # [T0, T0+20) holds the samples at +5, +10, +15 (10, 20, 30); the last step has just begun
    assert history["series"]["process_count"] == [20.0, 55.0, 95.0, 120.0]
    assert {"cpu_percent", "memory_used_bytes", "network_rx_bytes_per_second",
            "disk_percent:/"} <= history["series"].keys()
    assert_shape(HostMetrics, body)


@pytest.mark.parametrize(("query", "field"), [
    ("window=1x", "window"),
    ("window=0s", "window"),
    ("window=1h&step=", "step"),
    ("window=-5m", "window"),
])
async def test_bad_window_or_step_is_400_naming_the_field(aiohttp_client: Any, state_dir: Path,
                                                          query: str, field: str) -> None:
    """Malformed window/step values are a 400 naming the query field."""
    client = await metrics_client(aiohttp_client, state_dir)
    headers = bearer((await login(client))["access_token"])
    body = await _get(client, f"/v1/instances/self/metrics?{query}", headers, status=400)
    assert body["error"]["code"] == "invalid_request"
    assert body["error"]["details"]["field"] == field
    assert body["error"]["details"]["issue"]


@pytest.mark.parametrize(("query", "window", "step"), [
    ("window=30d", "1d", "24m"),
    ("window=1m&step=5m", "5m", "5m"),
    ("window=1h&step=1s", "1h", "1m"),
])
async def test_unanswerable_window_or_step_is_clamped(aiohttp_client: Any, state_dir: Path,
                                                      query: str, window: str, step: str) -> None:
    """A well-formed window/step beyond what is kept is brought into range and reported."""
    client = await metrics_client(aiohttp_client, state_dir)
    headers = bearer((await login(client))["access_token"])
    body = await _get(client, f"/v1/instances/self/metrics?{query}", headers, status=200)
    assert (body["history"]["window"], body["history"]["step"]) == (window, step)


async def test_disk_almost_full_degrades_and_recovers_with_events(aiohttp_client: Any,
                                                                  state_dir: Path) -> None:
    """A disk over the threshold makes the instance degraded; freeing it recovers it; both
    changes are written as events, once each."""
    reader = ScriptedHostReader(host_reading())
    client = await metrics_client(aiohttp_client, state_dir, reader=reader)
    headers = bearer((await login(client))["access_token"])
    sampler = sampler_of(client)
    await sampler.stop()  # ticks are taken by hand
    full = DiskReading(mountpoint="/srv", device="/dev/sdb", fstype="xfs", total=100 << 30,
                       used=95 << 30, free=5 << 30, inodes_total=100, inodes_free=50)
    reader.push(host_reading(disks=(full,)))
    await sampler.tick()
    body = await _get(client, "/v1/instances/self", headers)
    assert body["status"] == "degraded"
    assert [r["code"] for r in body["reasons"]] == ["disk_almost_full"]
    assert "/srv is 95% full" in body["reasons"][0]["message"]
    await sampler.tick()  # still full: no second event
    reader.push(host_reading())
    await sampler.tick()
    body = await _get(client, "/v1/instances/self", headers)
    assert body["status"] == "healthy" and body["reasons"] == []
    db = client.server.app[DB_KEY]
    rows = db.query("SELECT type, data FROM events WHERE type LIKE 'instance.%' ORDER BY seq")
    assert [r["type"] for r in rows] == ["instance.degraded", "instance.recovered"]
    degraded = json.loads(rows[0]["data"])
    assert degraded["instance_id"] == body["id"]
    assert degraded["reasons"][0]["code"] == "disk_almost_full"


async def test_contributors_and_proxy_state_make_it_degraded(aiohttp_client: Any,
                                                             state_dir: Path) -> None:
    """Reasons from registered contributors and a proxy that is down are reported."""
    client = await metrics_client(aiohttp_client, state_dir)
    headers = bearer((await login(client))["access_token"])
    instance = instance_of(client)
    instance.add_health_contributor(
        lambda: [HealthReason("runtime_unavailable", "the Docker engine is not reachable")])
    instance.set_proxy_state(lambda: ProxyState("caddy", "down", "caddy admin API refused"))
    await sampler_of(client).stop()
    await sampler_of(client).tick()
    body = await _get(client, "/v1/instances/self", headers)
    assert body["status"] == "degraded"
    assert {r["code"] for r in body["reasons"]} == {"runtime_unavailable", "proxy_down"}
    assert body["proxy"] == {"backend": "caddy", "state": "down",
                             "detail": "caddy admin API refused"}


async def test_openapi_documents_the_instance_endpoints(client: Client) -> None:
    """The OpenAPI document lists the endpoints with their response schemas and query."""
    doc = await (await client.get("/v1/openapi.json")).json()
    metrics = doc["paths"]["/v1/instances/{id}/metrics"]["get"]
    assert {p["name"] for p in metrics["parameters"]} == {"id", "window", "step"}
    assert "400" in metrics["responses"] and "404" in metrics["responses"]
    schema = doc["components"]["schemas"]["HostMetrics"]
    assert {"cpu", "memory", "swap", "disks", "disk_io", "network", "process_count",
            "uptime_seconds", "services", "history"} <= schema["properties"].keys()
    assert "/v1/instances" in doc["paths"] and "/v1/instances/{id}" in doc["paths"]
    assert "/v1/services/{id}/metrics" in doc["paths"]
    scrape = doc["paths"]["/metrics"]["get"]
    assert "text/plain" in scrape["responses"]["200"]["content"]


async def test_a_restart_does_not_repeat_the_degraded_event(aiohttp_client: Any,
                                                            state_dir: Path) -> None:
    """The status is kept with its event: an agent restarted while degraded writes no second
    instance.degraded event."""
    full = DiskReading(mountpoint="/", device="/dev/sda1", fstype="ext4", total=100 << 30,
                       used=99 << 30, free=1 << 30, inodes_total=100, inodes_free=50)
    first = await metrics_client(aiohttp_client, state_dir,
                                 reader=ScriptedHostReader(host_reading(disks=(full,))))
    await first.close()
    second = await metrics_client(aiohttp_client, state_dir,
                                  reader=ScriptedHostReader(host_reading(disks=(full,))))
    headers = bearer((await login(second))["access_token"])
    assert (await _get(second, "/v1/instances/self", headers))["status"] == "degraded"
    rows = second.server.app[DB_KEY].query(
        "SELECT type FROM events WHERE type LIKE 'instance.%'")
    assert [r["type"] for r in rows] == ["instance.degraded"]
