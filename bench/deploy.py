"""Benchmark: deployments from git end to end, against the same steps done by hand.

A real ``dployr-agent serve`` (subprocess, built-in proxy) and a small Node.js app (one
dependency, ``npm install``, ``npm start``) in a local ``file://`` git repository.

1. **First deploy.** Agent: from ``POST /v1/deployments`` until the app answers through the
   agent's proxy (a route is created right after the POST; polled every 10 ms). By hand, in the
   same run and interleaved: ``git clone --depth 1``, ``npm install``, ``npm start`` with a
   ``PORT`` until that port answers (polled every 10 ms). Both use the same npm cache, warmed
   by an untimed round, and npm's settings as the agent's builds have them (no audit, fund or
   update notices). Medians and the ratio agent / by hand.
2. **Redeploy switch.** Two clients loop requests through the proxy route while the app is
   redeployed ``--redeploys`` times (a new commit each): failed requests (the target is 0);
   request latency during the ``starting`` stage of those deploys against steady state; and
   the switch's own cost: the median ``starting`` stage (start beside, health gate, switch,
   graceful stop of the old run) minus the median time by hand from ``npm start`` to the port
   answering.

Run: ``.venv/bin/python bench/deploy.py [--rounds 5] [--redeploys 5]``.
Writes JSON to ``bench/.work/deploy.json``.
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
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._agent_env import agent_env, free_port
from bench._report import Row, Section

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

PACKAGE_JSON = {"name": "bench-app", "version": "1.0.0", "private": True,
                "scripts": {"start": "node server.js"}, "dependencies": {"ms": "2.1.3"}}
SERVER_JS = """const http = require('http');
const fs = require('fs');
const ms = require('ms');
const version = fs.readFileSync('VERSION', 'utf8').trim();
const server = http.createServer((req, res) => res.end(`${version} ${ms(60000)}`));
server.listen(Number(process.env.PORT), '127.0.0.1');
process.on('SIGTERM', () => server.close(() => process.exit(0)));
"""
GIT_ENV = {"GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.com", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@example.com", "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_CONFIG_GLOBAL": "/dev/null"}
EMAIL, PASSWORD = "bench@example.com", "bench-password-1"
POLL = 0.01
STAGES: dict[str, list[float]] = {}  # agent's stage durations in the timed first deploys


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, env={**os.environ, **GIT_ENV}, check=True,
                   stdout=subprocess.DEVNULL)


def make_repo(root: Path) -> Path:
    repo = root / "app"
    repo.mkdir()
    (repo / "package.json").write_text(json.dumps(PACKAGE_JSON, indent=2))
    (repo / "server.js").write_text(SERVER_JS)
    (repo / "VERSION").write_text("v0\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "app")
    return repo


def answers(url: str, host: str | None = None) -> bool:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(POLL)


class Agent:
    """A ``dployr-agent serve`` subprocess with its API and proxy on free loopback ports."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.port, self.proxy_port = free_port(), free_port()
        env = agent_env(state,
                        DPLOYR_SERVER__LISTEN=f"127.0.0.1:{self.port}",
                        DPLOYR_PROXY__LISTEN=f"127.0.0.1:{self.proxy_port}",
                        DPLOYR_DEPLOY__ALLOWED_SCHEMES="file",
                        DPLOYR_LOGGING__ACCESS_LOG="false",
                        DPLOYR_RATELIMIT__ENABLED="false",
                        DPLOYR_METRICS__DETECT_RUNTIMES="false",
                        DPLOYR_ADMIN_EMAIL=EMAIL, DPLOYR_ADMIN_PASSWORD=PASSWORD)
        self.log = (state.parent / "agent.log").open("ab")
        self.process = subprocess.Popen([sys.executable, "-m", "agent", "serve"], cwd=ROOT,
                                        env=env, stdout=self.log, stderr=self.log)
        wait(lambda: answers(f"http://127.0.0.1:{self.port}/v1/health"), 60, "the agent")
        self.token = self.call("POST", "/v1/auth/login",
                               {"email": EMAIL, "password": PASSWORD})["access_token"]

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data,
                                         method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if getattr(self, "token", None):
            request.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request, timeout=60) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def settled(self, name: str, run_id: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = {}

        def done() -> bool:
            nonlocal result
            result = self.call("GET", f"/v1/deployments/{name}")
            detail = result["status_detail"] or {}
            return (run_id is None or detail.get("run_id") == run_id) and \
                result["status"] in ("succeeded", "failed")

        wait(done, 300, f"deployment {name}")
        if result["status"] != "succeeded":
            raise RuntimeError(f"deploy failed: {result['status_detail']}")
        return result

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
        self.log.close()


def by_hand(repo: Path, work: Path, npm_cache: Path) -> tuple[float, float]:
    """(whole time, time from npm start to the port answering)."""
    dest = work / f"hand-{time.monotonic_ns()}"
    port = free_port()
    # npm as the agent runs it (no audit, fund or update notices): the same steps, like for like.
    env = {**os.environ, "npm_config_cache": str(npm_cache), "PORT": str(port),
           "npm_config_audit": "false", "npm_config_fund": "false",
           "npm_config_update_notifier": "false"}
    started = time.perf_counter()
    subprocess.run(["git", "clone", "-q", "--depth", "1", "--single-branch", "--branch", "main",
                    "--", f"file://{repo}", str(dest)], check=True)
    subprocess.run(["npm", "install"], cwd=dest, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    launched = time.perf_counter()
    app = subprocess.Popen(["npm", "start"], cwd=dest, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait(lambda: answers(f"http://127.0.0.1:{port}/"), 60, "the app started by hand")
        ended = time.perf_counter()
    finally:
        os.killpg(app.pid, signal.SIGKILL)
        app.wait()
    shutil.rmtree(dest)
    return ended - started, ended - launched


def with_agent(agent: Agent, repo: Path, name: str, major: str) -> float:
    """Seconds from the POST to the app answering through the proxy; the app is then deleted."""
    host = f"{name}.bench"
    body = {"name": name, "source": "remote", "runtime": "nodejs", "version": major,
            "remote": f"file://{repo}", "branch": "main", "build_cmd": "npm install",
            "run_cmd": "npm start", "port": 3000}
    started = time.perf_counter()
    dep = agent.call("POST", "/v1/deployments", body)
    agent.call("POST", "/v1/proxy/routes", {"domain": host, "service_id": dep["service_id"]})
    wait(lambda: answers(f"http://127.0.0.1:{agent.proxy_port}/", host), 300, "the deployed app")
    elapsed = time.perf_counter() - started
    done = agent.settled(name)
    for stage in done["status_detail"]["stages"]:
        if stage["finished_at"] and stage["started_at"]:
            STAGES.setdefault(stage["stage"], []).append(
                _epoch(stage["finished_at"]) - _epoch(stage["started_at"]))
    agent.call("DELETE", f"/v1/deployments/{name}")
    return elapsed


def request_loop(port: int, host: str, stop: threading.Event,
                 samples: list[tuple[float, float, bool]]) -> None:
    """Keep-alive GETs through the proxy: (start epoch, seconds, ok) per request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while not stop.is_set():
        began, t0 = time.time(), time.perf_counter()
        try:
            conn.request("GET", "/", headers={"Host": host})
            resp = conn.getresponse()
            resp.read()
            ok = resp.status == 200
        except (OSError, http.client.HTTPException):
            ok = False
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        samples.append((began, time.perf_counter() - t0, ok))
    conn.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def switch_run(agent: Agent, repo: Path, major: str, redeploys: int) -> dict[str, Any]:
    body = {"name": "live", "source": "remote", "runtime": "nodejs", "version": major,
            "remote": f"file://{repo}", "branch": "main", "build_cmd": "npm install",
            "run_cmd": "npm start"}
    dep = agent.call("POST", "/v1/deployments", body)
    agent.settled("live")
    agent.call("POST", "/v1/proxy/routes", {"domain": "live.bench", "service_id": dep["service_id"]})
    samples: list[tuple[float, float, bool]] = []
    stop = threading.Event()
    clients = [threading.Thread(target=request_loop, args=(agent.proxy_port, "live.bench", stop,
                                                           samples)) for _ in range(2)]
    for client in clients:
        client.start()
    time.sleep(3)  # steady state before the first redeploy
    windows: list[tuple[float, float]] = []
    for n in range(1, redeploys + 1):
        (repo / "VERSION").write_text(f"v{n}\n")
        git(repo, "commit", "-qam", f"v{n}")
        queued = agent.call("PUT", "/v1/deployments/live", {})
        done = agent.settled("live", queued["status_detail"]["run_id"])
        starting = next(s for s in done["status_detail"]["stages"] if s["stage"] == "starting")
        windows.append((_epoch(starting["started_at"]), _epoch(starting["finished_at"])))
    time.sleep(1)
    stop.set()
    for client in clients:
        client.join()
    during = [s for s in samples if any(a <= s[0] <= b for a, b in windows)]
    steady = [s for s in samples if s[0] < windows[0][0]]
    return {
        "requests": len(samples), "failed": sum(1 for s in samples if not s[2]),
        "requests_during_switches": len(during),
        "steady_p50_ms": percentile([s[1] for s in steady], 0.5) * 1000,
        "steady_p99_ms": percentile([s[1] for s in steady], 0.99) * 1000,
        "switch_p50_ms": percentile([s[1] for s in during], 0.5) * 1000,
        "switch_p99_ms": percentile([s[1] for s in during], 0.99) * 1000,
        "switch_max_ms": max((s[1] for s in during), default=float("nan")) * 1000,
        "starting_stage_median_s": statistics.median(b - a for a, b in windows),
    }


def _epoch(text: str) -> float:
    from datetime import datetime
    return datetime.fromisoformat(text).timestamp()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--redeploys", type=int, default=5)
    return parser


QUICK_ARGS = ["--rounds", "3", "--redeploys", "3"]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """First deploys by hand and through the agent (interleaved), then redeploys under load."""
    major = subprocess.run(["node", "--version"], capture_output=True, text=True,
                           check=True).stdout.strip().removeprefix("v").split(".")[0]
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        root = Path(tmp)
        repo = make_repo(root)
        agent = Agent(root / "state")
        npm_cache = root / "state" / "cache" / "npm"
        try:
            by_hand(repo, root, npm_cache)  # warm the npm cache and the page cache
            with_agent(agent, repo, "warm", major)
            hand, hand_start, piped = [], [], []
            for n in range(args.rounds):
                whole, start = by_hand(repo, root, npm_cache)
                hand.append(whole)
                hand_start.append(start)
                piped.append(with_agent(agent, repo, f"b{n}", major))
            switch = switch_run(agent, repo, major, args.redeploys)
        finally:
            # Apps outlive the agent: delete them (which stops them) before stopping it.
            for dep in agent.call("GET", "/v1/deployments?limit=500")["data"]:
                agent.call("DELETE", f"/v1/deployments/{dep['id']}")
            agent.stop()
    result: dict[str, Any] = {
        "rounds": args.rounds, "node_major": major,
        "by_hand_median_s": statistics.median(hand),
        "agent_median_s": statistics.median(piped),
        "ratio": statistics.median(piped) / statistics.median(hand),
        "by_hand_start_median_s": statistics.median(hand_start),
        "switch": switch,
    }
    switch["switch_overhead_s"] = switch["starting_stage_median_s"] - result["by_hand_start_median_s"]
    result["agent_stage_median_s"] = {k: statistics.median(v) for k, v in STAGES.items()}
    return result


def _detail(result: dict[str, Any]) -> str:
    switch = result["switch"]
    return "\n".join([
        f"- first deploy, by hand (clone, npm install, npm start until it answers): "
        f"{result['by_hand_median_s'] * 1000:.0f} ms (median of {result['rounds']})",
        f"- first deploy, agent (POST until it answers through the proxy): "
        f"{result['agent_median_s'] * 1000:.0f} ms; stages (median): " + ", ".join(
            f"{k} {v * 1000:.0f} ms" for k, v in result["agent_stage_median_s"].items()),
        f"- redeploys under load: {switch['requests']} requests, {switch['failed']} failed, "
        f"{switch['requests_during_switches']} during the switches",
        f"- latency through the proxy, steady p50/p99 {switch['steady_p50_ms']:.1f} / "
        f"{switch['steady_p99_ms']:.1f} ms; during the switches {switch['switch_p50_ms']:.1f} / "
        f"{switch['switch_p99_ms']:.1f} ms (max {switch['switch_max_ms']:.1f} ms)",
        f"- starting stage (median) {switch['starting_stage_median_s'] * 1000:.0f} ms against "
        f"npm start until it answers by hand {result['by_hand_start_median_s'] * 1000:.0f} ms: "
        f"switch overhead {switch['switch_overhead_s'] * 1000:.0f} ms",
    ])


def collect(argv: list[str] | None = None) -> Section:
    """Run the benchmark and return its rows and details (see bench/_report.py)."""
    result = measure(_parser().parse_args(argv))
    switch = result["switch"]
    rows = [
        Row("first deploy of a small Node.js app, POST until it answers",
            f"{result['agent_median_s'] * 1000:.0f} ms",
            "by hand: git clone, npm install, npm start until the port answers",
            f"{result['by_hand_median_s'] * 1000:.0f} ms", result["ratio"], "<= 1.15",
            result["ratio"] <= 1.15),
        Row("requests failed during redeploy switches", str(switch["failed"]),
            "requests during the switches", str(switch["requests_during_switches"]), None, "0",
            switch["failed"] == 0),
        Row("switch overhead (starting stage minus the app's own start)",
            f"{switch['switch_overhead_s'] * 1000:.0f} ms", "the app's start by hand",
            f"{result['by_hand_start_median_s'] * 1000:.0f} ms", None),
    ]
    return Section("deploy", "Deployments from git, end to end",
                   "python -m bench.deploy " + " ".join(argv or []), rows, _detail(result))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    result = measure(args)
    print(_detail(result))
    out = HERE / ".work"
    out.mkdir(exist_ok=True)
    (out / "deploy.json").write_text(json.dumps(result, indent=2))
    return 0 if result["switch"]["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
