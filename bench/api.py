"""API throughput: an authenticated ``GET /v1/projects`` on a real agent vs a bare aiohttp server.

All servers run as separate single-process subprocesses on 127.0.0.1 and are driven by the
same load generator (wrk) in the same run, alternating, each ``--rounds`` times; the best
round of each is compared. The agent runs as shipped: ``dployr-agent serve`` with its JSON
log (one line per request) going to a file, rate limiting on (with a limit high enough not to
refuse the benchmark), real argon2 cost, a real SQLite store with a few projects in it. It is
measured once per ``--loops`` entry (``[server] event_loop``: uvloop, the default, and
asyncio); the baseline is always the bare server as ``web.run_app`` runs it by default
(asyncio's loop).

Also reports each agent's idle RSS after start-up, a login and the project creations.
``--agent-python`` runs the agent with another interpreter, e.g. a venv with only the
runtime dependencies (``pip install .``), which is what a server runs: the development venv
also has the test extras, some of which (rich, through schemathesis) structlog imports.

    .venv/bin/python -m bench.api [--duration 10] [--connections 32] [--rounds 2]
        [--loops uvloop,asyncio] [--agent-python PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench._agent_env import agent_env, free_port
from bench._report import Row, Section, cpu_seconds, run_module

HELLO_SERVER = textwrap.dedent("""
    import sys
    from aiohttp import web

    async def hello(request):
        return web.Response(text="Hello, world")

    app = web.Application()
    app.router.add_get("/", hello)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
""")

AUTH_LUA = textwrap.dedent("""
    wrk.headers["Authorization"] = "Bearer {token}"
""")


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    requests: int = 0
    cpu_us: float = 0.0  # CPU time the server process spent per request


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


def request(url: str, *, body: object = None, token: str | None = None) -> object:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    if data:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"null")


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(url: str, *, duration: int, connections: int, threads: int, pid: int,
            script: Path | None = None) -> Result:
    """One wrk run against ``url``; also the CPU the server ``pid`` used per request."""
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", url]
    if script is not None:
        args[1:1] = ["-s", str(script)]
    cpu_before = cpu_seconds(pid)
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(pid) - cpu_before
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out)[1])  # type: ignore[index]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out)[1])  # type: ignore[index]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    total = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    return Result(rps=rps, p50_ms=p50, p99_ms=p99, non_2xx=int(bad[1]) if bad else 0,
                  requests=total, cpu_us=cpu * 1e6 / max(total, 1))


_RSS_OF_IMPORT = """
import sys
if sys.argv[1] == "without":
    sys.modules["rich"] = None  # what structlog finds in a venv without the test extras
import agent.app, agent.cli  # everything serve imports, with or without rich
for line in open("/proc/self/status"):
    if line.startswith("VmRSS:"):
        print(int(line.split()[1]) / 1024)
"""


def rich_overhead_mb(python: str) -> float | None:
    """How much of the agent's RSS is rich, which structlog imports when it is installed (in
    the development venv it comes with the test extras; a production install has none)."""
    probe = subprocess.run([python, "-c", "import rich"], capture_output=True, check=False)
    if probe.returncode != 0:
        return None
    sizes = [float(subprocess.run([python, "-c", _RSS_OF_IMPORT, mode], capture_output=True,
                                  text=True, check=True).stdout) for mode in ("with", "without")]
    return sizes[0] - sizes[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def start_agent(workdir: Path, port: int, *, python: str = sys.executable,
                event_loop: str | None = None) -> tuple[subprocess.Popen[bytes], Path]:
    env = agent_env(
        workdir / "state",
        DPLOYR_SERVER__LISTEN=f"127.0.0.1:{port}",
        DPLOYR_ADMIN_EMAIL="bench@example.com",
        DPLOYR_ADMIN_PASSWORD="bench-password-1",
        # High enough never to refuse the benchmark; the limiter still runs on every request.
        DPLOYR_RATELIMIT__AUTHENTICATED_PER_HOUR="10000000",
    )
    if event_loop is not None:
        env["DPLOYR_SERVER__EVENT_LOOP"] = event_loop
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "agent.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([python, "-m", "agent", "serve"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, cwd=workdir)
    return proc, log


@dataclass
class Agent:
    """One agent under test: its process, log, token and figures."""

    event_loop: str
    proc: subprocess.Popen[bytes]
    log: Path
    base: str
    script: Path | None = None
    idle_rss: float = 0.0
    busy_rss: float = 0.0
    loop_seen: str = "?"


def prepare_agent(agent: Agent, workdir: Path, projects: int) -> None:
    """Log in, create the projects, read the idle RSS, write the wrk script."""
    try:
        wait_http(f"{agent.base}/v1/health")
    except RuntimeError:
        tail = agent.log.read_text(errors="replace").splitlines()[-5:]
        raise RuntimeError(f"the {agent.event_loop} agent did not start: " + " | ".join(tail)) from None
    tokens = request(f"{agent.base}/v1/auth/login",
                     body={"email": "bench@example.com", "password": "bench-password-1"})
    token = tokens["access_token"]  # type: ignore[index]
    for n in range(projects):
        request(f"{agent.base}/v1/projects", body={"name": f"project-{n}"}, token=token)
    listed = request(f"{agent.base}/v1/projects", token=token)
    assert len(listed["data"]) == projects  # type: ignore[index]
    agent.script = workdir / f"auth-{agent.event_loop}.lua"
    agent.script.write_text(AUTH_LUA.format(token=token))
    for line in agent.log.read_text(errors="replace").splitlines():
        if '"agent_listening"' in line:
            agent.loop_seen = str(json.loads(line).get("event_loop", "?"))


QUICK_ARGS = ["--duration", "3", "--rounds", "1", "--loops", "uvloop"]


def collect(argv: list[str] | None = None) -> Section:
    """Run the benchmark and return its rows and details (see bench/_report.py)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each server, alternating")
    parser.add_argument("--projects", type=int, default=10, help="projects in the listed store")
    parser.add_argument("--loops", default="uvloop,asyncio",
                        help="agent event loops to measure, comma-separated")
    parser.add_argument("--agent-python", default=sys.executable,
                        help="interpreter that runs the agent (default: this one)")
    args = parser.parse_args(argv)
    loops = [loop.strip() for loop in args.loops.split(",") if loop.strip()]

    with tempfile.TemporaryDirectory(prefix="dployr-bench-") as tmp:
        workdir = Path(tmp)
        hello_port = free_port()
        hello_script = workdir / "hello.py"
        hello_script.write_text(HELLO_SERVER)
        hello = subprocess.Popen([sys.executable, str(hello_script), str(hello_port)])
        agents: list[Agent] = []
        try:
            for loop in loops:
                port = free_port()
                proc, log = start_agent(workdir / loop, port, python=args.agent_python,
                                        event_loop=loop)
                agents.append(Agent(loop, proc, log, f"http://127.0.0.1:{port}"))
            wait_http(f"http://127.0.0.1:{hello_port}/")
            for agent in agents:
                prepare_agent(agent, workdir, args.projects)
            time.sleep(2)  # let the agents go idle before reading their memory
            for agent in agents:
                agent.idle_rss = rss_mb(agent.proc.pid)
            bare_rss = rss_mb(hello.pid)

            bare: list[Result] = []
            results: dict[str, list[Result]] = {agent.event_loop: [] for agent in agents}
            for _ in range(args.rounds):
                bare.append(run_wrk(f"http://127.0.0.1:{hello_port}/", duration=args.duration,
                                    connections=args.connections, threads=args.threads,
                                    pid=hello.pid))
                for agent in agents:
                    results[agent.event_loop].append(run_wrk(
                        f"{agent.base}/v1/projects", duration=args.duration,
                        connections=args.connections, threads=args.threads,
                        pid=agent.proc.pid, script=agent.script))
            for agent in agents:
                agent.busy_rss = rss_mb(agent.proc.pid)
        finally:
            for proc in (hello, *(agent.proc for agent in agents)):
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
        log_lines = {agent.event_loop: sum(1 for _ in agent.log.open("rb")) for agent in agents}

    best_bare = max(bare, key=lambda r: r.rps)
    cpu_bare = min(r.cpu_us for r in bare)
    lines = [f"`wrk -t{args.threads} -c{args.connections} -d{args.duration}s`, best of "
             f"{args.rounds} alternating round(s) each, on {os.cpu_count()} CPUs; agent "
             f"interpreter `{args.agent_python}`.", "",
             "| server | requests/s | p50 ms | p99 ms | non-2xx | server CPU per request |",
             "| --- | ---: | ---: | ---: | ---: | ---: |",
             f"| bare aiohttp hello world (asyncio loop) | {best_bare.rps:,.0f} | "
             f"{best_bare.p50_ms:.2f} | {best_bare.p99_ms:.2f} | {best_bare.non_2xx} | "
             f"{cpu_bare:.0f} us |"]
    rows: list[Row] = []
    rich = rich_overhead_mb(args.agent_python)
    rich_note = f"; {rich:.1f} MB of it rich, absent when installed" if rich else ""
    for agent in agents:
        runs = results[agent.event_loop]
        best = max(runs, key=lambda r: r.rps)
        lines.append(f"| agent GET /v1/projects (auth, {args.projects} projects), "
                     f"{agent.loop_seen} | {best.rps:,.0f} | {best.p50_ms:.2f} | "
                     f"{best.p99_ms:.2f} | {best.non_2xx} | {min(r.cpu_us for r in runs):.0f} us |")
        ratio = best.rps / best_bare.rps
        rows += [
            Row(f"API requests/s, authenticated GET /v1/projects ({agent.loop_seen})",
                f"{best.rps:,.0f}", "bare aiohttp hello world", f"{best_bare.rps:,.0f}",
                ratio, ">= 0.5", ratio >= 0.5),
            Row(f"API p99 latency ({agent.loop_seen}, {args.connections} connections)",
                f"{best.p99_ms:.2f} ms", "bare aiohttp hello world", f"{best_bare.p99_ms:.2f} ms",
                best.p99_ms / best_bare.p99_ms),
            Row(f"idle RSS ({agent.loop_seen}, this venv{rich_note})", f"{agent.idle_rss:.1f} MB",
                "bare aiohttp hello world", f"{bare_rss:.1f} MB", agent.idle_rss / bare_rss,
                "<= 60 MB installed", agent.idle_rss - (rich or 0.0) <= 60),
        ]
    lines.append("")
    for agent in agents:
        lines.append(f"- {agent.loop_seen}: RSS idle {agent.idle_rss:.1f} MB, after load "
                     f"{agent.busy_rss:.1f} MB; {log_lines[agent.event_loop]} access log lines")
    if rich is not None:
        lines.append(f"- {rich:.1f} MB of each RSS is rich, imported by structlog because this "
                     "venv has it (test extras); an install without them (`pip install .`) does "
                     "not: `--agent-python` measures one")
    return Section("api", "API throughput against a bare aiohttp server",
                   "python -m bench.api " + " ".join(argv or []), rows, "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    return run_module(collect, argv)


if __name__ == "__main__":
    raise SystemExit(main())
