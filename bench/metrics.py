"""Benchmark: the agent's metrics against Glances' REST API, in the same run.

What it measures (with ``--services`` real idle child processes fed to the agent's sampler
through its ``ServiceSource``):

1. the agent's own CPU with a 1 s sampler and no requests (target: at most 1% of a core);
2. ``GET /v1/instances/self/metrics`` latency (p50/p99) against Glances' REST API for the
   same data: ``/api/4/all`` (one call, a superset) and the per-plugin calls that cover the
   agent's fields (cpu, percpu, load, mem, memswap, fs, diskio, network, processcount,
   uptime, processlist), and those calls without processlist (Glances lists every process
   of the host there, the agent only the services: this row is Glances' lower bound);
   requests one at a time on a keep-alive connection, interleaved in rounds so that noise
   from other work on the machine hits both alike;
3. the RSS of the agent and of Glances at the end.

Run: ``.venv/bin/pip install -e '.[bench]' && .venv/bin/python bench/metrics.py``
(``--help`` for sizes). Prints a table with ratios and writes JSON under ``bench/.work/``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

if __package__ in (None, ""):  # run as a script (as its own child processes are)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._agent_env import agent_env, free_port
from bench._report import Row, Section, run_module
from bench._report import cpu_seconds as process_cpu_seconds

HERE = Path(__file__).resolve().parent
ADMIN_EMAIL = "bench@example.com"
ADMIN_PASSWORD = "bench-password-123"
GLANCES_PLUGINS = ("cpu", "percpu", "load", "mem", "memswap", "fs", "diskio", "network",
                   "processcount", "uptime", "processlist")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (OSError, http.client.HTTPException):
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise SystemExit(f"bench: timed out waiting for {what}")


# -- the agent under test (this file, re-executed with --serve) -------------------------------

def serve(port: int, pids_file: Path) -> None:
    """Run the agent with a ServiceSource listing the pids in ``pids_file``."""
    from aiohttp import web

    from agent.app import AdminSeed, create_app
    from agent.cli import _loop_factory
    from agent.config import load_config
    from agent.logconfig import configure_logging
    from agent.metrics import ServiceProcess
    from agent.testing import StaticServices

    config = load_config(None)
    configure_logging(config.logging.level, config.logging.format)
    pids = [int(p) for p in pids_file.read_text().split()]
    services = StaticServices(ServiceProcess(f"svc_{i:03d}", f"idle-{i:03d}", "process",
                                             "running", pid) for i, pid in enumerate(pids))
    app = create_app(config, admin=AdminSeed(ADMIN_EMAIL, ADMIN_PASSWORD),
                     service_source=services)
    # On the event loop the agent itself would run (uvloop unless configured otherwise).
    new_loop = _loop_factory(config.server.event_loop)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None,
                handle_signals=True, loop=new_loop() if new_loop is not None else None)


# -- HTTP ----------------------------------------------------------------------------------------

class Client:
    """One keep-alive HTTP/1.1 connection; times each request."""

    def __init__(self, port: int, headers: dict[str, str] | None = None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.headers = headers or {}

    def get(self, path: str) -> tuple[int, bytes, float]:
        started = time.perf_counter()
        try:
            self.conn.request("GET", path, headers=self.headers)
            resp = self.conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()  # http.client keeps a failed request's state otherwise
            raise
        return resp.status, body, time.perf_counter() - started

    def post_json(self, path: str, payload: Any) -> tuple[int, Any]:
        self.conn.request("POST", path, body=json.dumps(payload),
                          headers={"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def cpu_seconds(proc: psutil.Process) -> float:
    """From the scheduler's clock, to the nanosecond (see ``_report.cpu_seconds``)."""
    return process_cpu_seconds(proc.pid)


def rss_mib(proc: psutil.Process) -> float:
    return float(proc.memory_info().rss) / 2**20


# -- the run -------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="metrics-", dir=HERE / ".work"))
    idle = [subprocess.Popen(["sleep", "86400"], start_new_session=True)
            for _ in range(args.services)]
    pids_file = work / "pids"
    pids_file.write_text("\n".join(str(p.pid) for p in idle))
    agent_port, glances_port = free_port(), free_port()
    env = agent_env(work / "state")
    env.update({
        "DPLOYR_METRICS__INTERVAL": str(args.interval),
        "DPLOYR_LOGGING__LEVEL": "warning",
        "DPLOYR_LOGGING__ACCESS_LOG": "false",
        # The limiter stays on (its cost is part of a request), just out of the way.
        "DPLOYR_RATELIMIT__AUTHENTICATED_PER_HOUR": "10000000",
        "DPLOYR_AUTH__HASH_TIME_COST": "1", "DPLOYR_AUTH__HASH_MEMORY_KIB": "64",
        "DPLOYR_AUTH__HASH_PARALLELISM": "1",
    })
    log = (work / "agent.log").open("wb")
    agent = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve",
                              "--port", str(agent_port), "--pids", str(pids_file)],
                             env=env, stdout=log, stderr=log)
    glances: subprocess.Popen[bytes] | None = None
    result: dict[str, Any] = {"services": args.services, "interval": args.interval}
    try:
        anon = Client(agent_port)
        wait_for(lambda: anon.get("/v1/health")[0] == 200, 60, "the agent")
        status, tokens = Client(agent_port).post_json(
            "/v1/auth/login", {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
        assert status == 200, tokens
        api = Client(agent_port, {"Authorization": f"Bearer {tokens['access_token']}"})

        def all_measured() -> bool:
            status, body, _ = api.get("/v1/instances/self/metrics")
            services = json.loads(body)["services"] if status == 200 else []
            return len(services) == args.services and all(s["usage"] for s in services)

        wait_for(all_measured, 60, f"{args.services} services measured")
        wait_for(lambda: json.loads(api.get("/v1/instances/self")[1])["runtimes_detected"],
                 60, "runtime detection")
        agent_proc = psutil.Process(agent.pid)

        # 1. Idle CPU with the sampler running and no requests.
        time.sleep(3)
        ticks_before = sum(agent_proc.cpu_times()[:2])
        before, t0 = cpu_seconds(agent_proc), time.monotonic()
        time.sleep(args.cpu_seconds)
        used, wall = cpu_seconds(agent_proc) - before, time.monotonic() - t0
        result["agent_idle_cpu_percent"] = used / wall * 100
        # the same window counted in 10 ms ticks (utime + stime), for comparison
        result["agent_idle_cpu_percent_ticks"] = (
            sum(agent_proc.cpu_times()[:2]) - ticks_before) / wall * 100
        result["load_average_during_cpu_window"] = os.getloadavg()[0]
        result["cores"] = os.cpu_count()
        scrape = anon.get("/metrics")[1].decode()
        for line in scrape.splitlines():
            if line.startswith("dployr_metrics_sample_duration_seconds "):
                result["last_sample_ms"] = float(line.split()[1]) * 1000
        result["agent_rss_mib_before_glances"] = rss_mib(agent_proc)

        # 2. Glances, on the same machine, same processes.
        glances_bin = shutil.which("glances", path=str(Path(sys.executable).parent)) \
            or shutil.which("glances")
        if glances_bin is None:
            raise SystemExit("bench: glances is not installed (pip install -e '.[bench]')")
        glog = (work / "glances.log").open("wb")
        glances = subprocess.Popen([glances_bin, "-w", "--disable-webui", "-B", "127.0.0.1",
                                    "-p", str(glances_port), "-t", str(args.interval)],
                                   stdout=glog, stderr=glog, start_new_session=True)
        gl = Client(glances_port)
        wait_for(lambda: gl.get("/api/4/status")[0] == 200, 120, "Glances")
        glances_proc = psutil.Process(glances.pid)
        sizes = {"agent": len(api.get("/v1/instances/self/metrics")[1]),
                 "glances_all": len(gl.get("/api/4/all")[1]),
                 "glances_plugins": sum(len(gl.get(f"/api/4/{p}")[1]) for p in GLANCES_PLUGINS),
                 "glances_host": sum(len(gl.get(f"/api/4/{p}")[1])
                                     for p in GLANCES_PLUGINS[:-1])}
        result["response_bytes"] = sizes

        # 3. Latency, interleaved in rounds; CPU per request from each server's own counters.
        lat: dict[str, list[float]] = {"agent": [], "glances_all": [], "glances_plugins": [],
                                       "glances_host": []}
        cpu: dict[str, float] = dict.fromkeys(lat, 0.0)
        for _ in range(args.warmup):
            api.get("/v1/instances/self/metrics")
            gl.get("/api/4/all")
        batch = 50
        for _ in range(max(1, args.requests // batch)):
            c0 = cpu_seconds(agent_proc)
            for _ in range(batch):
                status, _, seconds = api.get("/v1/instances/self/metrics")
                assert status == 200
                lat["agent"].append(seconds)
            cpu["agent"] += cpu_seconds(agent_proc) - c0
            c0 = cpu_seconds(glances_proc)
            for _ in range(batch):
                status, _, seconds = gl.get("/api/4/all")
                assert status == 200
                lat["glances_all"].append(seconds)
            cpu["glances_all"] += cpu_seconds(glances_proc) - c0
            c0 = cpu_seconds(glances_proc)
            for _ in range(max(1, batch // 10)):
                total = 0.0
                for plugin in GLANCES_PLUGINS:
                    status, _, seconds = gl.get(f"/api/4/{plugin}")
                    assert status == 200
                    total += seconds
                lat["glances_plugins"].append(total)
            cpu["glances_plugins"] += cpu_seconds(glances_proc) - c0
            c0 = cpu_seconds(glances_proc)
            for _ in range(max(1, batch // 10)):
                total = 0.0
                for plugin in GLANCES_PLUGINS[:-1]:  # the host only: no process list
                    status, _, seconds = gl.get(f"/api/4/{plugin}")
                    assert status == 200
                    total += seconds
                lat["glances_host"].append(total)
            cpu["glances_host"] += cpu_seconds(glances_proc) - c0
        result["latency_ms"] = {
            name: {"p50": pct(v, 50) * 1000, "p99": pct(v, 99) * 1000,
                   "mean": statistics.fmean(v) * 1000, "max": max(v) * 1000, "n": len(v)}
            for name, v in lat.items()}
        result["cpu_ms_per_request"] = {name: cpu[name] / len(lat[name]) * 1000 for name in lat}
        result["agent_rss_mib"] = rss_mib(agent_proc)
        result["glances_rss_mib"] = rss_mib(glances_proc)
    finally:
        for proc in (glances, agent):
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for child in idle:
            child.kill()
            child.wait()
    (work / "result.json").write_text(json.dumps(result, indent=2))
    result["work_dir"] = str(work)
    return result


def report(r: dict[str, Any]) -> None:
    lat = r["latency_ms"]
    a, ga, gp = lat["agent"], lat["glances_all"], lat["glances_plugins"]
    print(f"\n== metrics bench: {r['services']} idle services, {r['interval']} s sampler ==")
    print(f"machine: {r['cores']} cores, load average {r['load_average_during_cpu_window']:.2f} "
          "(other work shares it)")
    print(f"agent CPU, idle, sampler running: {r['agent_idle_cpu_percent']:.2f}% of one core "
          f"(target <= 1%; {r['agent_idle_cpu_percent_ticks']:.2f}% counted in 10 ms ticks); "
          f"last sample took {r.get('last_sample_ms', float('nan')):.1f} ms")
    print(f"{'':40}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'CPU ms/req':>12}{'bytes':>9}")
    rows = (("agent /v1/instances/self/metrics", a, "agent", r["response_bytes"]["agent"]),
            ("glances /api/4/all", ga, "glances_all", r["response_bytes"]["glances_all"]),
            (f"glances {len(GLANCES_PLUGINS)} plugin calls", gp, "glances_plugins",
             r["response_bytes"]["glances_plugins"]),
            (f"glances {len(GLANCES_PLUGINS) - 1} host calls (no procs)", lat["glances_host"],
             "glances_host", r["response_bytes"]["glances_host"]))
    for label, s, key, size in rows:
        print(f"{label:40}{s['p50']:9.2f}{s['p99']:9.2f}{s['max']:9.2f}"
              f"{r['cpu_ms_per_request'][key]:12.2f}{size:9d}")
    print(f"p50 ratio glances_all/agent: {ga['p50'] / a['p50']:.1f}x, "
          f"p99: {ga['p99'] / a['p99']:.1f}x")
    print(f"p50 ratio glances_plugins/agent: {gp['p50'] / a['p50']:.1f}x, "
          f"p99: {gp['p99'] / a['p99']:.1f}x")
    gh = lat["glances_host"]
    print(f"p50 ratio glances_host/agent: {gh['p50'] / a['p50']:.1f}x, "
          f"p99: {gh['p99'] / a['p99']:.1f}x")
    print(f"RSS: agent {r['agent_rss_mib']:.1f} MiB, glances {r['glances_rss_mib']:.1f} MiB, "
          f"ratio glances/agent {r['glances_rss_mib'] / r['agent_rss_mib']:.2f}x")
    print(f"(raw results: {r['work_dir']}/result.json)")


QUICK_ARGS = ["--services", "50", "--cpu-seconds", "15", "--requests", "300", "--warmup", "20"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--cpu-seconds", type=float, default=60.0)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--pids", type=Path, help=argparse.SUPPRESS)
    return parser


def collect(argv: list[str] | None = None) -> Section:
    """Run the benchmark and return its rows and details (see bench/_report.py)."""
    import contextlib
    import io

    args = _parser().parse_args(argv)
    (HERE / ".work").mkdir(exist_ok=True)
    r = run(args)
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        report(r)
    lat = r["latency_ms"]
    a, ga, gp = lat["agent"], lat["glances_all"], lat["glances_plugins"]
    cpu = r["agent_idle_cpu_percent"]
    rows = [
        Row(f"agent CPU, {r['interval']:g} s sampler, {r['services']} services, no requests",
            f"{cpu:.2f} % of a core", "-", "-", None, "<= 1 %", cpu <= 1.0),
        Row("GET /v1/instances/self/metrics p50", f"{a['p50']:.2f} ms", "Glances /api/4/all",
            f"{ga['p50']:.2f} ms", a["p50"] / ga["p50"], "faster (< 1)", a["p50"] < ga["p50"]),
        Row("GET /v1/instances/self/metrics p99", f"{a['p99']:.2f} ms", "Glances /api/4/all",
            f"{ga['p99']:.2f} ms", a["p99"] / ga["p99"], "faster (< 1)", a["p99"] < ga["p99"]),
        Row("metrics p50 against the same data from Glances' plugin calls",
            f"{a['p50']:.2f} ms", f"Glances {len(GLANCES_PLUGINS)} plugin calls",
            f"{gp['p50']:.2f} ms", a["p50"] / gp["p50"], "faster (< 1)", a["p50"] < gp["p50"]),
        Row(f"RSS, {r['services']} services", f"{r['agent_rss_mib']:.1f} MiB", "Glances",
            f"{r['glances_rss_mib']:.1f} MiB", r["agent_rss_mib"] / r["glances_rss_mib"],
            "smaller (< 1)", r["agent_rss_mib"] < r["glances_rss_mib"]),
    ]
    detail = "```\n" + text.getvalue().strip() + "\n```"
    return Section("metrics", "Metrics against Glances",
                   "python -m bench.metrics " + " ".join(argv or []), rows, detail)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.serve:
        serve(args.port, args.pids)
        return 0
    return run_module(collect, argv)


if __name__ == "__main__":
    sys.exit(main())
