"""The real psutil reader on this machine, and a real `dployr-agent serve` serving metrics."""

from __future__ import annotations

import math
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from agent.metrics.compute import compute_host
from agent.metrics.psutil_reader import PsutilHostReader
from tests.support.agent import LiveAgent, wait_until


def test_real_readings_are_plausible_and_finite() -> None:
    """psutil readings of this host turn into finite figures, with '/' among the disks."""
    reader = PsutilHostReader()
    first = reader.read()
    second = reader.read()
    host = compute_host(first, second, elapsed=0.5, timestamp=first.boot_time + 100)
    assert len(host.cpu.per_core) >= 1
    assert host.memory.total > 0 and host.memory.used > 0
    assert any(d.mountpoint == "/" and d.total > 0 for d in host.disks)
    assert host.process_count > 1 and host.uptime_seconds == 100
    values = [host.cpu.percent, host.disk_io.read_bytes_per_second,
              host.network.rx_bytes_per_second, *host.cpu.per_core]
    assert all(math.isfinite(v) and v >= 0 for v in values)


def test_served_agent_exposes_metrics_and_instance(live_agent: LiveAgent, tmp_path: Path) -> None:
    """A real agent process answers /v1/instances/self/metrics and a Prometheus scrape."""
    live_agent.extra_env["DPLOYR_METRICS__INTERVAL"] = "0.5"
    live_agent.start()
    token = live_agent.login()
    status, _, instance = live_agent.request("GET", "/v1/instances/self", token=token)
    assert status == 200 and instance["id"].startswith("ins_")

    def two_samples() -> dict[str, object] | None:
        code, _, body = live_agent.request("GET", "/v1/instances/self/metrics", token=token)
        assert code == 200
        return body if body["elapsed_seconds"] > 0 else None

    metrics = wait_until(two_samples, timeout=30, message="a sample with rates")
    assert metrics["instance_id"] == instance["id"]
    status, headers, text = live_agent.request("GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"dployr_host_cpu_percent", "dployr_http_requests"} <= names

    def runtimes_detected() -> bool:
        _, _, body = live_agent.request("GET", "/v1/instances/self", token=token)
        return bool(body["runtimes_detected"])

    wait_until(runtimes_detected, timeout=30, message="runtime detection")
    _, _, body = live_agent.request("GET", "/v1/instances/self", token=token)
    assert {r["name"] for r in body["runtimes"]} == {"node", "python", "go", "docker"}
