"""Scale curves: how the agent holds up as services, followers and deployments multiply.

    python -m bench.scale [--points 10,100,500] [--requests 500] [--idle 30]
                          [--followers 100] [--follow-seconds 10] [--deploys 20]

1. Services: with 10, 100 and 500 real idle child processes (local deployments under an
   allowed root, ``exec sleep``), the p50/p99 of ``GET /v1/services`` (one page of 100) and
   of a status call on a random service, and the agent's RSS and CPU over ``--idle``
   seconds. Each point is compared with the first (10 services).
2. Log follow: one app writes a time-stamped line every 20 ms; ``--followers`` concurrent
   followers (``?follow=true``) each measure, for every line, its arrival time minus the
   stamp. Compared with one follower measured the same way just before.
3. Concurrent deployments: ``--deploys`` local deployments posted at once, each with a build
   step (``sleep 1``) before it runs. The event loop's lag is read from the agent's own
   histogram (``dployr_event_loop_lag_seconds`` in ``/metrics``: the difference of a scrape
   before and after gives the distribution over the burst), and ``GET /v1/health`` is timed
   from outside every 20 ms meanwhile; both are compared with the same measures while idle.

The agent is a real ``dployr-agent serve`` (rate limit off, access log off), as in
bench/supervise.py; every process it started is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import random
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._report import Row, Section, cpu_seconds, run_module
from bench.supervise import STAMPED, Agent, pct, wait_for

QUICK_ARGS = ["--requests", "200", "--idle", "5", "--follow-seconds", "4"]
_BUCKET = re.compile(r'^dployr_event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$', re.M)


def timed(agent: Agent, path: str, n: int, paths: list[str] | None = None) -> list[float]:
    """Latencies (seconds) of ``n`` GETs, one at a time on a keep-alive connection."""
    out = []
    for i in range(n):
        started = time.perf_counter()
        agent.call("GET", paths[i % len(paths)] if paths else path)
        out.append(time.perf_counter() - started)
    return out


def idle_usage(agent: Agent, seconds: float) -> tuple[float, float]:
    """(RSS in MB at the end, CPU percent of one core) over ``seconds`` of idling."""
    proc = agent.process
    before = cpu_seconds(proc.pid)  # the scheduler's clock: see _report.cpu_seconds
    time.sleep(seconds)
    cpu = cpu_seconds(proc.pid) - before
    return proc.memory_info().rss / 1e6, cpu / seconds * 100


def services_curve(agent: Agent, root: Path, points: list[int], requests: int,
                   idle: float) -> list[dict[str, float]]:
    app = root / "idle"
    app.mkdir(exist_ok=True)
    ids: list[str] = []
    curve = []
    for point in points:
        while len(ids) < point:
            ids.append(agent.deploy(f"idle{len(ids)}", app, "exec sleep 1000000"))
        wait_for(lambda n=point: sum(s["state"] == "running"
                                     for s in _all_services(agent)) >= n,
                 timeout=600, interval=0.5)
        rng = random.Random(point)
        listing = timed(agent, "/v1/services?limit=100", requests)
        status = timed(agent, "", requests,
                       [f"/v1/services/{rng.choice(ids)}/status" for _ in range(requests)])
        rss, cpu = idle_usage(agent, idle)
        curve.append({"services": point, "list_p50": statistics.median(listing),
                      "list_p99": pct(listing, 0.99), "status_p50": statistics.median(status),
                      "status_p99": pct(status, 0.99), "rss_mb": rss, "cpu_pct": cpu})
        print(f"{point} services: {curve[-1]}", file=sys.stderr)
    return curve


def _all_services(agent: Agent) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor = ""
    while True:
        page = agent.call("GET", f"/v1/services?limit=500{cursor}")
        found += page["data"]
        if not page.get("next_cursor"):
            return found
        cursor = f"&cursor={page['next_cursor']}"


async def _follow(url: str, token: str, seconds: float, followers: int) -> list[float]:
    """Every (arrival - stamp) seen by ``followers`` concurrent followers over ``seconds``."""
    delays: list[float] = []
    headers = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=None, sock_read=30)

    async def one(session: aiohttp.ClientSession) -> None:
        async with session.get(url, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            async for raw in resp.content:
                now = time.time()
                parts = raw.decode().split()
                with contextlib.suppress(ValueError, IndexError):
                    delays.append(now - float(parts[-2]))

    connector = aiohttp.TCPConnector(limit=followers + 10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [asyncio.ensure_future(one(session)) for _ in range(followers)]
        await asyncio.sleep(seconds)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return delays


def follow_fanout(agent: Agent, root: Path, followers: int, seconds: float) -> dict[str, Any]:
    app = root / "stamped"
    app.mkdir(exist_ok=True)
    (app / "stamped.py").write_text(STAMPED)
    sid = agent.deploy("stamped", app, f"exec {sys.executable} stamped.py",
                       env={"LINES": "100000000", "RATE": "50"})
    wait_for(lambda: agent.call("GET", f"/v1/services/{sid}")["state"] == "running", timeout=60)
    url = f"http://127.0.0.1:{agent.port}/v1/services/{sid}/logs?follow=true&tail=0&stream=stdout"
    one = asyncio.run(_follow(url, agent.token, seconds, 1))
    many = asyncio.run(_follow(url, agent.token, seconds, followers))
    agent.call("POST", f"/v1/services/{sid}/stop?wait=true")
    return {"one_p50": statistics.median(one), "one_p99": pct(one, 0.99),
            "many_p50": statistics.median(many), "many_p99": pct(many, 0.99),
            "lines_one": len(one), "lines_many": len(many)}


def _lag_buckets(agent: Agent) -> dict[float, float]:
    agent.conn.request("GET", "/metrics")
    text = agent.conn.getresponse().read().decode()
    return {float(le): float(count) for le, count in _BUCKET.findall(text)}


def _lag_between(before: dict[float, float], after: dict[float, float]) -> tuple[float, float, int]:
    """(p99 upper bound, max upper bound, samples) of the lag measured between two scrapes."""
    diff = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
    total = diff[-1][1]
    p99 = next(le for le, count in diff if count >= 0.99 * total)
    worst = next(le for le, count in diff if count >= total)
    return p99, worst, int(total)


def concurrent_deploys(agent: Agent, root: Path, deploys: int) -> dict[str, Any]:
    app = root / "built"
    app.mkdir(exist_ok=True)
    health_idle = timed(agent, "/v1/health", 200)
    lag0 = _lag_buckets(agent)
    time.sleep(5)
    idle_lag = _lag_between(lag0, _lag_buckets(agent))
    probe = Agent.__new__(Agent)  # a second connection for the health probe
    probe.__dict__.update(agent.__dict__)

    probe.conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=60)
    health: list[float] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            started = time.perf_counter()
            probe.call("GET", "/v1/health")
            health.append(time.perf_counter() - started)
            time.sleep(0.02)

    before = _lag_buckets(agent)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.monotonic()

    def post(i: int) -> str:
        client = Agent.__new__(Agent)
        client.__dict__.update(agent.__dict__)
        client.conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=60)
        return client.deploy(f"burst{i}", app, "exec sleep 1000000", build_cmd="sleep 1")

    posters = []
    ids: list[str] = []
    for i in range(deploys):
        thread = threading.Thread(target=lambda i=i: ids.append(post(i)))
        thread.start()
        posters.append(thread)
    for thread in posters:
        thread.join()
    wait_for(lambda: all(agent.call("GET", f"/v1/services/{sid}")["state"] == "running"
                         for sid in ids), timeout=300, interval=0.2)
    elapsed = time.monotonic() - started
    done.set()
    watcher.join()
    p99, worst, samples = _lag_between(before, _lag_buckets(agent))
    return {"seconds": elapsed, "lag_p99": p99, "lag_max": worst, "lag_samples": samples,
            "idle_lag_p99": idle_lag[0], "idle_lag_max": idle_lag[1],
            "health_p99": pct(health, 0.99), "health_max": max(health),
            "health_idle_p99": pct(health_idle, 0.99), "health_n": len(health)}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", default="10,100,500")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--followers", type=int, default=100)
    parser.add_argument("--follow-seconds", type=float, default=10.0)
    parser.add_argument("--deploys", type=int, default=20)
    return parser


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def _le(seconds: float) -> str:
    return "> 30 s" if seconds == float("inf") else f"<= {seconds * 1000:g} ms"


def collect(argv: list[str] | None = None) -> Section:
    """Run the benchmark and return its rows and details (see bench/_report.py)."""
    args = _parser().parse_args(argv)
    points = [int(p) for p in args.points.split(",")]
    work = Path(tempfile.mkdtemp(prefix="dployr-bench-scale-"))
    root = work / "srv"
    root.mkdir()
    agent = Agent(work, root)
    try:
        curve = services_curve(agent, root, points, args.requests, args.idle)
        follow = follow_fanout(agent, root, args.followers, args.follow_seconds)
        burst = concurrent_deploys(agent, root, args.deploys)
    finally:
        agent.close()
        shutil.rmtree(work, ignore_errors=True)

    first = curve[0]
    lines = ["| services | GET /v1/services p50 / p99 | status p50 / p99 | RSS | CPU idle |",
             "|---:|---:|---:|---:|---:|"]
    rows = []
    for point in curve:
        lines.append(f"| {point['services']} | {_ms(point['list_p50'])} / {_ms(point['list_p99'])}"
                     f" | {_ms(point['status_p50'])} / {_ms(point['status_p99'])} | "
                     f"{point['rss_mb']:.1f} MB | {point['cpu_pct']:.2f} % |")
    for point in curve[1:]:
        n, base = point["services"], f"same, {first['services']} services"
        rows += [
            Row(f"GET /v1/services p99, {n} services", _ms(point["list_p99"]), base,
                _ms(first["list_p99"]), point["list_p99"] / first["list_p99"]),
            Row(f"status call p99, {n} services", _ms(point["status_p99"]), base,
                _ms(first["status_p99"]), point["status_p99"] / first["status_p99"]),
            Row(f"agent RSS, {n} services", f"{point['rss_mb']:.1f} MB", base,
                f"{first['rss_mb']:.1f} MB", point["rss_mb"] / first["rss_mb"]),
            Row(f"agent CPU idle, {n} services", f"{point['cpu_pct']:.2f} %", base,
                f"{first['cpu_pct']:.2f} %",
                point["cpu_pct"] / first["cpu_pct"] if first["cpu_pct"] else None),
        ]
    rows += [
        Row(f"log follow p50, {args.followers} followers", _ms(follow["many_p50"]),
            "one follower", _ms(follow["one_p50"]), follow["many_p50"] / follow["one_p50"]),
        Row(f"log follow p99, {args.followers} followers", _ms(follow["many_p99"]),
            "one follower", _ms(follow["one_p99"]), follow["many_p99"] / follow["one_p99"],
            "< 50 ms", follow["many_p99"] < 0.05),
        Row(f"event loop lag p99 during {args.deploys} concurrent deployments",
            _le(burst["lag_p99"]), "idle", _le(burst["idle_lag_p99"])),
        Row(f"event loop worst lag during {args.deploys} concurrent deployments",
            _le(burst["lag_max"]), "idle", _le(burst["idle_lag_max"])),
        Row(f"GET /v1/health p99 during {args.deploys} concurrent deployments",
            _ms(burst["health_p99"]), "idle", _ms(burst["health_idle_p99"]),
            burst["health_p99"] / burst["health_idle_p99"]),
    ]
    lines += ["", f"- log follow: {follow['lines_many']} line arrivals across "
              f"{args.followers} followers in {args.follow_seconds:g} s (one follower: "
              f"{follow['lines_one']}); p50 / p99 {_ms(follow['many_p50'])} / "
              f"{_ms(follow['many_p99'])} against {_ms(follow['one_p50'])} / "
              f"{_ms(follow['one_p99'])} for one",
              f"- {args.deploys} concurrent deployments (build `sleep 1`, then run): all running "
              f"after {burst['seconds']:.1f} s; event loop lag p99 {_le(burst['lag_p99'])}, worst "
              f"{_le(burst['lag_max'])} ({burst['lag_samples']} measurements, from the agent's "
              f"histogram); GET /v1/health p99 {_ms(burst['health_p99'])}, worst "
              f"{_ms(burst['health_max'])} ({burst['health_n']} probes)"]
    return Section("scale", "Scale curves: services, followers, concurrent deployments",
                   "python -m bench.scale " + " ".join(argv or []), rows, "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    return run_module(collect, argv)


if __name__ == "__main__":
    sys.exit(main())
