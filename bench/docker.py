"""Docker runtime figures of the agent, against the Docker engine used directly, same run.

    python -m bench.docker [--starts 10] [--services 50] [--calls 1000]

1. Container start: from the call until the app answers HTTP 200 on its published port.
   Baseline: ``docker run -d --init -p 127.0.0.1:<port>:8080`` of the same image (the CLI,
   as a user would type it). Agent: ``POST /v1/deployments`` (source image: validation,
   image resolution, release, container), and ``POST /v1/services/{id}/start`` of a stopped
   service. Runs are interleaved; medians compared (at most 1.2x is the target).
2. ``GET /v1/services/{id}/status`` latency (p50/p99) with ``--services`` container services
   running, against the engine's own ``GET /containers/{id}/json`` (inspect) over its socket;
   and the agent's RSS and thread count with that many containers (two log streams each).

Needs a running engine and the test image ``dployr-test/busybox:latest``
(``tests/support/build-test-image.sh``). Prints one table with the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import docker

from bench.supervise import Agent, free_port, pct, wait_for

IMAGE = "dployr-test/busybox:latest"


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def until_answers(port: int, t0: float, timeout: float = 30.0) -> float:
    """Seconds from ``t0`` until HTTP 200 on the port (polled every millisecond)."""
    deadline = t0 + timeout
    while not answers(port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"port {port} never answered")
        time.sleep(0.001)
    return time.monotonic() - t0


def docker_run_start() -> float:
    """``docker run`` of the image, until it answers; the container is removed after."""
    port = free_port()
    t0 = time.monotonic()
    cid = subprocess.run(
        ["docker", "run", "-d", "--init", "-p", f"127.0.0.1:{port}:8080",
         "--log-driver", "json-file", "--log-opt", "max-size=10m", "--log-opt", "max-file=3",
         IMAGE], capture_output=True, text=True, check=True).stdout.strip()
    try:
        return until_answers(port, t0)
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True, check=False)


def agent_deploy_start(agent: Agent, name: str) -> tuple[float, str]:
    """POST /v1/deployments until the container answers; returns (seconds, service id)."""
    t0 = time.monotonic()
    dep = agent.call("POST", "/v1/deployments", {"name": name, "source": "image",
                                                  "image": IMAGE})
    sid = str(dep["service_id"])
    port = wait_for(lambda: agent.call("GET", f"/v1/services/{sid}")["listen_port"],
                    timeout=30, interval=0.001)
    return until_answers(int(port), t0), sid


def agent_restart_start(agent: Agent, sid: str) -> float:
    """Stop (not timed), then POST /v1/services/{id}/start until the container answers."""
    agent.call("POST", f"/v1/services/{sid}/stop?wait=true")
    t0 = time.monotonic()
    status = agent.call("POST", f"/v1/services/{sid}/start")
    return until_answers(int(status["listen_port"]), t0)


def start_latency(agent: Agent, starts: int) -> dict[str, list[float]]:
    runs: dict[str, list[float]] = {"docker run": [], "agent deploy": [], "agent start": []}
    docker_run_start()  # warm the engine and the page cache once
    for i in range(starts):
        runs["docker run"].append(docker_run_start())
        seconds, sid = agent_deploy_start(agent, f"start-{i}")
        runs["agent deploy"].append(seconds)
        runs["agent start"].append(agent_restart_start(agent, sid))
        agent.call("DELETE", f"/v1/deployments/start-{i}")
    return runs


def status_latency(agent: Agent, services: int, calls: int) -> dict[str, Any]:
    sids = []
    for i in range(services):
        dep = agent.call("POST", "/v1/deployments", {"name": f"idle-{i}", "source": "image",
                                                      "image": IMAGE})
        sids.append(str(dep["service_id"]))
    wait_for(lambda: all(agent.call("GET", f"/v1/services/{s}")["state"] == "running"
                         for s in sids), timeout=300, interval=0.5)
    wait_for(lambda: all(agent.call("GET", f"/v1/services/{s}/status")["memory_bytes"]
                         is not None for s in sids), timeout=120, interval=0.5)
    containers = [agent.call("GET", f"/v1/services/{s}")["container_id"] for s in sids]
    rng = random.Random(7)
    agent_ms, docker_ms = [], []
    client = docker.DockerClient(version="1.41")
    try:
        for _ in range(calls):
            sid = rng.choice(sids)
            t0 = time.perf_counter()
            agent.call("GET", f"/v1/services/{sid}/status")
            agent_ms.append((time.perf_counter() - t0) * 1000)
            cid = rng.choice(containers)
            t0 = time.perf_counter()
            client.api.inspect_container(cid)
            docker_ms.append((time.perf_counter() - t0) * 1000)
    finally:
        client.close()
    proc = agent.process
    return {"agent": agent_ms, "docker": docker_ms,
            "rss_mb": proc.memory_info().rss / 2**20, "threads": proc.num_threads()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.docker")
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--services", type=int, default=50)
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args(argv)
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True,
                      check=False).returncode != 0:
        print(f"bench.docker: no image {IMAGE} (tests/support/build-test-image.sh)")
        return 1
    with tempfile.TemporaryDirectory(prefix="bench-docker-") as tmp:
        work = Path(tmp)
        agent = Agent(work, work)
        try:
            runs = start_latency(agent, args.starts)
            status = status_latency(agent, args.services, args.calls)
        finally:
            with contextlib.suppress(Exception):
                agent.close()
    base = statistics.median(runs["docker run"])
    print(f"{'start until HTTP 200 (median of ' + str(args.starts) + ')':<44}{'seconds':>10}"
          f"{'vs docker run':>16}")
    for name, values in runs.items():
        median = statistics.median(values)
        print(f"  {name:<42}{median:>10.3f}{median / base:>15.2f}x")
    print(f"status call, {args.services} containers, {args.calls} calls  "
          f"{'p50 ms':>8}{'p99 ms':>9}")
    for name, label in (("agent", "GET /v1/services/{id}/status"),
                        ("docker", "engine inspect (reference)")):
        values = status[name]
        print(f"  {label:<42}{pct(values, 0.5):>8.2f}{pct(values, 0.99):>9.2f}")
    print(f"agent with {args.services} containers: RSS {status['rss_mb']:.1f} MiB, "
          f"{status['threads']} threads")
    ok = statistics.median(runs["agent deploy"]) <= 1.2 * base
    print(f"target: agent deploy at most 1.2x docker run: {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
