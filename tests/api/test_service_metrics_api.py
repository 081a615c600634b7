"""GET /v1/services/{id}/metrics with real child processes measured by the sampler."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.api.metrics_schemas import HostMetrics, ServiceMetrics
from agent.metrics import ServiceProcess
from agent.testing import FakeClock, StaticServices
from tests.conftest import Client, bearer, login
from tests.support.agent import eventually
from tests.support.metrics import (
    MiB,
    allocating_child,
    assert_shape,
    kill_tree,
    metrics_client,
    sampler_of,
)

FAST = {"interval": 0.5}


@pytest.fixture
def children() -> Iterator[list[Any]]:
    """Children started by a test; their whole trees are killed afterwards."""
    started: list[Any] = []
    yield started
    for proc in started:
        kill_tree(proc)


async def _metrics(client: Client, key: str, headers: dict[str, str], query: str = ""
                   ) -> dict[str, Any]:
    resp = await client.get(f"/v1/services/{key}/metrics{query}", headers=headers)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def test_rss_of_a_child_holding_64_mib(aiohttp_client: Any, state_dir: Path,
                                             children: list[Any]) -> None:
    """A real child that holds 64 MiB shows an RSS of 64 MiB plus the interpreter's own."""
    child = allocating_child(64)
    children.append(child)
    services = StaticServices([ServiceProcess("svc_mem", "mem", "process", "running", child.pid)])
    client = await metrics_client(aiohttp_client, state_dir, services=services, metrics=FAST)
    headers = bearer((await login(client))["access_token"])

    async def grown() -> dict[str, Any] | None:
        body = await _metrics(client, "svc_mem", headers)
        usage = body["usage"]
        return body if usage and usage["rss_bytes"] >= 64 * MiB else None

    body = await eventually(grown, timeout=30, message="the child's RSS to reach 64 MiB")
    metrics = assert_shape(ServiceMetrics, body)
    assert metrics.usage is not None
    assert 64 * MiB <= metrics.usage.rss_bytes <= 64 * MiB + 48 * MiB
    assert metrics.usage.processes == 1
    assert metrics.usage.threads >= 1
    assert metrics.usage.open_files >= 3  # stdin, stdout, stderr at least
    assert metrics.usage.cpu_percent >= 0
    assert metrics.pid == child.pid and metrics.state == "running" and metrics.note is None
    assert metrics.sampled_at is not None and metrics.history is None


async def test_a_grandchild_is_summed_into_the_tree(aiohttp_client: Any, state_dir: Path,
                                                    children: list[Any]) -> None:
    """A child that spawned a grandchild: processes, RSS and threads cover both."""
    child = allocating_child(32, grandchild_mib=32)
    children.append(child)
    services = StaticServices([ServiceProcess("svc_tree", "tree", "process", "running",
                                              child.pid)])
    client = await metrics_client(aiohttp_client, state_dir, services=services, metrics=FAST)
    headers = bearer((await login(client))["access_token"])

    async def both() -> dict[str, Any] | None:
        usage = (await _metrics(client, "tree", headers))["usage"]  # by name works too
        return usage if usage and usage["processes"] == 2 and usage["rss_bytes"] >= 64 * MiB \
            else None

    usage = await eventually(both, timeout=30, message="child and grandchild to be counted")
    assert usage["rss_bytes"] <= 64 * MiB + 80 * MiB
    assert usage["threads"] >= 2 and usage["open_files"] >= 6


async def test_cpu_of_a_busy_child_is_measured_across_samples(aiohttp_client: Any,
                                                              state_dir: Path,
                                                              children: list[Any]) -> None:
    """A child spinning on the CPU shows a positive CPU percent after two samples."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
    children.append(busy)
    services = StaticServices([ServiceProcess("svc_cpu", "cpu", "process", "running", busy.pid)])
    client = await metrics_client(aiohttp_client, state_dir, services=services, metrics=FAST)
    headers = bearer((await login(client))["access_token"])

    async def spinning() -> bool:
        usage = (await _metrics(client, "svc_cpu", headers))["usage"]
        return bool(usage and usage["cpu_percent"] > 1.0)

    await eventually(spinning, timeout=30, message="a positive CPU percent")


async def test_stopped_unknown_and_unsampled_services(aiohttp_client: Any,
                                                      state_dir: Path) -> None:
    """No pid: usage null 'not running'; unknown id: 404; added since the sample: null."""
    services = StaticServices([ServiceProcess("svc_off", "off", "process", "stopped", None)])
    client = await metrics_client(aiohttp_client, state_dir, services=services)
    headers = bearer((await login(client))["access_token"])
    body = await _metrics(client, "svc_off", headers)
    assert body["usage"] is None and body["note"] == "not running"
    assert_shape(ServiceMetrics, body)
    resp = await client.get("/v1/services/svc_nope/metrics", headers=headers)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"
    services.put(ServiceProcess("svc_new", "new", "process", "starting", None))
    body = await _metrics(client, "svc_new", headers)
    assert body["usage"] is None and body["note"] == "not sampled yet"
    assert body["sampled_at"] is None


async def test_gone_process_is_reported_not_crashed(aiohttp_client: Any,
                                                    state_dir: Path) -> None:
    """A pid that no longer exists gives usage null with a note, not an error."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    services = StaticServices([ServiceProcess("svc_dead", "dead", "process", "running",
                                              dead.pid)])
    client = await metrics_client(aiohttp_client, state_dir, services=services)
    headers = bearer((await login(client))["access_token"])
    body = await _metrics(client, "svc_dead", headers)
    assert body["usage"] is None and body["note"] == "process not found"


async def test_service_history_and_listing_in_instance_metrics(aiohttp_client: Any,
                                                               state_dir: Path,
                                                               children: list[Any]) -> None:
    """A service's history has its five series; the instance metrics list every service."""
    child = allocating_child(8)
    children.append(child)
    clock = FakeClock(start=1_699_999_200.0)
    services = StaticServices([
        ServiceProcess("svc_a", "a", "process", "running", child.pid),
        ServiceProcess("svc_b", "b", "docker", "stopped", None, "0123abcd"),
    ])
    client = await metrics_client(aiohttp_client, state_dir, clock=clock, services=services,
                                  metrics={"interval": 5})
    headers = bearer((await login(client))["access_token"])
    sampler = sampler_of(client)
    await sampler.stop()
    for _ in range(6):
        clock.advance(5)
        await sampler.tick()
    body = await _metrics(client, "svc_a", headers, "?window=1m&step=10s")
    history = body["history"]
    assert set(history["series"]) == {"cpu_percent", "rss_bytes", "threads", "open_files",
                                      "processes"}
    assert len(history["timestamps"]) == 7
    assert history["series"]["processes"][-4:] == [1.0, 1.0, 1.0, 1.0]
    assert history["series"]["processes"][0] is None  # before the first sample
    assert_shape(ServiceMetrics, body)
    resp = await client.get("/v1/instances/self/metrics", headers=headers)
    metrics = assert_shape(HostMetrics, await resp.json())
    assert [(s.service_id, s.runtime, s.state) for s in metrics.services] == [
        ("svc_a", "process", "running"), ("svc_b", "docker", "stopped")]
    assert metrics.services[1].usage is None and metrics.services[1].note == "container not found"
    services.remove("svc_a")
    await sampler.tick()
    assert not any(n.startswith("service:svc_a:") for n in sampler.history.series_names)
