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

from bench._agent_env import free_port
from bench._report import Row, Section, run_module
from bench.supervise import Agent, pct, wait_for

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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.docker")
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--services", type=int, default=50)
    parser.add_argument("--calls", type=int, default=1000)
    return parser


QUICK_ARGS = ["--starts", "5", "--services", "50", "--calls", "500"]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Start latencies (interleaved with ``docker run``), then status latency with containers."""
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True,
                      check=False).returncode != 0:
        raise RuntimeError(f"no image {IMAGE} (run tests/support/build-test-image.sh)")
    with tempfile.TemporaryDirectory(prefix="bench-docker-") as tmp:
        work = Path(tmp)
        agent = Agent(work, work)
        try:
            runs = start_latency(agent, args.starts)
            status = status_latency(agent, args.services, args.calls)
        finally:
            with contextlib.suppress(Exception):
                agent.close()
    return {"runs": runs, "status": status, "args": vars(args)}


def _detail(result: dict[str, Any]) -> str:
    runs, status, args = result["runs"], result["status"], result["args"]
    base = statistics.median(runs["docker run"])
    lines = [f"Start until HTTP 200 (median of {args['starts']}):", ""]
    lines += [f"- {name}: {statistics.median(v):.3f} s ({statistics.median(v) / base:.2f}x "
              "docker run)" for name, v in runs.items()]
    lines += ["", f"Status call with {args['services']} containers, {args['calls']} calls: "
              f"agent `GET /v1/services/{{id}}/status` p50 {pct(status['agent'], 0.5):.2f} ms, "
              f"p99 {pct(status['agent'], 0.99):.2f} ms; engine inspect (reference) p50 "
              f"{pct(status['docker'], 0.5):.2f} ms, p99 {pct(status['docker'], 0.99):.2f} ms. "
              f"Agent with {args['services']} containers: RSS {status['rss_mb']:.1f} MiB, "
              f"{status['threads']} threads."]
    return "\n".join(lines)


def collect(argv: list[str] | None = None) -> Section:
    """Run the benchmark and return its rows and details (see bench/_report.py)."""
    result = measure(_parser().parse_args(argv))
    runs, status, args = result["runs"], result["status"], result["args"]
    base = statistics.median(runs["docker run"])
    deploy = statistics.median(runs["agent deploy"])
    start = statistics.median(runs["agent start"]) if "agent start" in runs else None
    rows = [Row("container start, POST /v1/deployments (image) until HTTP 200",
                f"{deploy * 1000:.0f} ms", "docker run -d of the same image",
                f"{base * 1000:.0f} ms", deploy / base, "<= 1.2", deploy / base <= 1.2)]
    if start is not None:
        rows.append(Row("container start, POST /v1/services/{id}/start until HTTP 200",
                        f"{start * 1000:.0f} ms", "docker run -d of the same image",
                        f"{base * 1000:.0f} ms", start / base, "<= 1.2", start / base <= 1.2))
    agent50, docker50 = pct(status["agent"], 0.5), pct(status["docker"], 0.5)
    rows.append(Row(f"status call p50, {args['services']} container services",
                    f"{agent50:.2f} ms", "engine inspect of one container", f"{docker50:.2f} ms",
                    agent50 / docker50))
    return Section("docker", "Docker runtime against the engine",
                   "python -m bench.docker " + " ".join(argv or []), rows, _detail(result))


def main(argv: list[str] | None = None) -> int:
    return run_module(collect, argv)


if __name__ == "__main__":
    raise SystemExit(main())
