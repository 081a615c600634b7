"""API throughput: an authenticated ``GET /v1/projects`` on a real agent vs a bare aiohttp server.

Both servers run as separate single-process subprocesses on 127.0.0.1 and are driven by the
same load generator (wrk) in the same run, alternating, each ``--rounds`` times; the best
round of each is compared. The agent runs as shipped: ``dployr-agent serve`` with its JSON
log (one line per request) going to a file, rate limiting on (with a limit high enough not to
refuse the benchmark), real argon2 cost, a real SQLite store with a few projects in it.

Also reports the agent's idle RSS after start-up and a login.

    .venv/bin/python -m bench.api [--duration 10] [--connections 32] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def start_agent(workdir: Path, port: int) -> tuple[subprocess.Popen[bytes], Path]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DPLOYR_")}
    env.update({
        "DPLOYR_STATE__DIR": str(workdir / "state"),
        "DPLOYR_SERVER__LISTEN": f"127.0.0.1:{port}",
        "DPLOYR_ADMIN_EMAIL": "bench@example.com",
        "DPLOYR_ADMIN_PASSWORD": "bench-password-1",
        # High enough never to refuse the benchmark; the limiter still runs on every request.
        "DPLOYR_RATELIMIT__AUTHENTICATED_PER_HOUR": "10000000",
    })
    log = workdir / "agent.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "agent", "serve"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    return proc, log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each server, alternating")
    parser.add_argument("--projects", type=int, default=10, help="projects in the listed store")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="dployr-bench-") as tmp:
        workdir = Path(tmp)
        hello_port, agent_port = free_port(), free_port()
        hello_script = workdir / "hello.py"
        hello_script.write_text(HELLO_SERVER)
        hello = subprocess.Popen([sys.executable, str(hello_script), str(hello_port)])
        agent, log = start_agent(workdir, agent_port)
        try:
            base = f"http://127.0.0.1:{agent_port}"
            wait_http(f"http://127.0.0.1:{hello_port}/")
            wait_http(f"{base}/v1/health")
            tokens = request(f"{base}/v1/auth/login",
                             body={"email": "bench@example.com", "password": "bench-password-1"})
            token = tokens["access_token"]  # type: ignore[index]
            for n in range(args.projects):
                request(f"{base}/v1/projects", body={"name": f"project-{n}"}, token=token)
            listed = request(f"{base}/v1/projects", token=token)
            assert len(listed["data"]) == args.projects  # type: ignore[index]
            time.sleep(2)  # let the agent go idle before reading its memory
            idle_rss = rss_mb(agent.pid)
            script = workdir / "auth.lua"
            script.write_text(AUTH_LUA.format(token=token))

            bare: list[Result] = []
            agent_results: list[Result] = []
            for _ in range(args.rounds):
                bare.append(run_wrk(f"http://127.0.0.1:{hello_port}/", duration=args.duration,
                                    connections=args.connections, threads=args.threads,
                                    pid=hello.pid))
                agent_results.append(run_wrk(f"{base}/v1/projects", duration=args.duration,
                                             connections=args.connections, threads=args.threads,
                                             pid=agent.pid, script=script))
            busy_rss = rss_mb(agent.pid)
        finally:
            for proc in (hello, agent):
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
        log_lines = sum(1 for _ in log.open("rb"))

    best_bare = max(bare, key=lambda r: r.rps)
    best_agent = max(agent_results, key=lambda r: r.rps)
    ratio = best_agent.rps / best_bare.rps
    cpu_bare = min(r.cpu_us for r in bare)
    cpu_agent = min(r.cpu_us for r in agent_results)
    print(f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s, best of {args.rounds} "
          f"alternating rounds each, on {os.cpu_count()} CPUs")
    print("| server | requests/s | p50 ms | p99 ms | non-2xx | server CPU per request |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    print(f"| bare aiohttp hello world | {best_bare.rps:,.0f} | {best_bare.p50_ms:.2f} | "
          f"{best_bare.p99_ms:.2f} | {best_bare.non_2xx} | {cpu_bare:.0f} us |")
    print(f"| agent GET /v1/projects (auth, {args.projects} projects) | {best_agent.rps:,.0f} | "
          f"{best_agent.p50_ms:.2f} | {best_agent.p99_ms:.2f} | {best_agent.non_2xx} | "
          f"{cpu_agent:.0f} us |")
    print(f"ratio agent / bare, requests/s: {ratio:.2f} (target >= 0.5); "
          f"by CPU per request: {cpu_bare / cpu_agent:.2f}")
    print(f"agent RSS: idle {idle_rss:.1f} MB (target <= 60), after load {busy_rss:.1f} MB")
    print(f"agent log lines written: {log_lines}")
    print("all rounds, requests/s: bare " + ", ".join(f"{r.rps:,.0f}" for r in bare)
          + "; agent " + ", ".join(f"{r.rps:,.0f}" for r in agent_results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
