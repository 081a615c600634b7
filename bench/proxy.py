"""Proxy benchmark: one load generator (wrk), one backend, five ways to reach it, one run.

    python bench/proxy.py [--duration 10] [--rounds 3] [--write docs/benchmarks.md]

Measures requests per second and p99 latency of small responses through:

1. direct        wrk -> backend (the limit)
2. nginx         nginx configured by hand (proxy_pass, upstream keep-alive), one worker
                 per CPU; and the same held to one worker (the built-in proxy is one process)
3. caddy-hand    Caddy configured by hand (a Caddyfile with reverse_proxy)
4. builtin       the agent's built-in proxy (its own HTTP/1.1 protocol on uvloop, as
                 ``dployr-agent serve`` runs it)
5. caddy-agent   Caddy driven by the agent through its admin API

and prints the ratios the issue asks for: built-in vs nginx, agent-driven Caddy vs Caddy by
hand. Every process runs on 127.0.0.1 on free ports with its files in a temporary directory;
all of them are stopped at the end. The backend is nginx answering a fixed 13-byte body (so
the proxies, not the backend, are what is measured); ``--backend aiohttp`` uses a small
aiohttp app instead. With ``--write FILE`` the results replace the proxy block of FILE
(see bench/__main__.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script (as its own child processes are)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._agent_env import free_port
from bench._report import Row, Section, render_rows

ROOT = Path(__file__).resolve().parent.parent
HOST = "bench.test"
BODY = "hello, world\n"


def wait_http(url: str, *, host: str | None = None, timeout: float = 30.0,
              expect: int | None = 200) -> None:
    """Poll ``url`` until it answers (with ``expect``, unless None)."""
    deadline = time.monotonic() + timeout
    while True:
        request = urllib.request.Request(url, headers={"Host": host} if host else {})
        try:
            with urllib.request.urlopen(request, timeout=2) as resp:
                if expect is None or resp.status == expect:
                    return
        except urllib.error.HTTPError as err:
            if expect is None or err.code == expect:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer in {timeout}s")
        time.sleep(0.1)


class Processes:
    """Children started by the benchmark; each is stopped by its own pid at the end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.children: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None,
              stdout: int | None = None) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        child = subprocess.Popen(args, env=env, stdout=stdout or log, stderr=log,
                                 cwd=self.workdir, start_new_session=True)
        self.children.append(child)
        return child

    def stop(self, child: subprocess.Popen[bytes]) -> None:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)  # its own session: nginx master + workers
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait(timeout=15)

    def stop_all(self) -> None:
        for child in reversed(self.children):
            self.stop(child)


def caddy_env(workdir: Path, name: str) -> dict[str, str]:
    home = workdir / name
    home.mkdir(exist_ok=True)
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / "config"), "XDG_DATA_HOME": str(home / "data")}


# -- the backend and the peers, configured by hand -------------------------------------------

def nginx_conf(workdir: Path, name: str, server: str, workers: str) -> Path:
    prefix = workdir / name
    prefix.mkdir(exist_ok=True)
    temp = "\n".join(f"    {kind}_temp_path {prefix}/{kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    path = prefix / "nginx.conf"
    path.write_text(f"""
user root;
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temp}
    keepalive_requests 1000000;
{server}
}}
""")
    return path


def start_nginx(procs: Processes, name: str, server: str, workers: str = "auto") -> None:
    conf = nginx_conf(procs.workdir, name, server, workers)
    procs.start(name, ["nginx", "-c", str(conf), "-p", str(conf.parent), "-g", "daemon off;"])


def start_backend(procs: Processes, kind: str) -> int:
    port = free_port()
    if kind == "nginx":
        start_nginx(procs, "backend", f"""
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location / {{ default_type text/plain; return 200 "{BODY.strip()}\\n"; }}
    }}""", workers="1")
    else:
        procs.start("backend", [sys.executable, __file__, "--child", "backend", str(port)])
    wait_http(f"http://127.0.0.1:{port}/")
    return port


def start_nginx_proxy(procs: Processes, backend: int, workers: str = "auto") -> int:
    port = free_port()
    start_nginx(procs, f"nginx-proxy-{workers}", f"""
    upstream app {{ server 127.0.0.1:{backend}; keepalive 128; }}
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        server_name {HOST};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
        }}
    }}""", workers=workers)
    wait_http(f"http://127.0.0.1:{port}/", host=HOST)
    return port


def start_caddy_by_hand(procs: Processes, backend: int) -> int:
    port = free_port()
    admin = free_port()
    caddyfile = procs.workdir / "Caddyfile"
    caddyfile.write_text(f"""{{
    admin 127.0.0.1:{admin}
    auto_https off
    log {{
        level ERROR
    }}
}}
http://{HOST}:{port} {{
    bind 127.0.0.1
    reverse_proxy 127.0.0.1:{backend}
}}
""")
    procs.start("caddy-hand", ["caddy", "run", "--config", str(caddyfile),
                               "--adapter", "caddyfile"],
                env=caddy_env(procs.workdir, "caddy-hand"))
    wait_http(f"http://127.0.0.1:{port}/", host=HOST)
    return port


def start_caddy_empty(procs: Processes) -> int:
    admin = free_port()
    config = procs.workdir / "caddy-agent.json"
    config.write_text(json.dumps({"admin": {"listen": f"127.0.0.1:{admin}"},
                                  "logging": {"logs": {"default": {"level": "ERROR"}}}}))
    procs.start("caddy-agent", ["caddy", "run", "--config", str(config)],
                env=caddy_env(procs.workdir, "caddy-agent"))
    wait_http(f"http://127.0.0.1:{admin}/config/")
    return admin


def start_agent(procs: Processes, backend: int, proxy: dict[str, object]) -> None:
    """The agent (API + proxy) in a child process, with one route to the backend."""
    settings = procs.workdir / f"agent-{proxy['backend']}.json"
    settings.write_text(json.dumps({"backend_port": backend, "proxy": proxy,
                                    "state": str(procs.workdir / f"state-{proxy['backend']}")}))
    child = procs.start(f"agent-{proxy['backend']}",
                        [sys.executable, __file__, "--child", "agent", str(settings)],
                        stdout=subprocess.PIPE)
    assert child.stdout is not None
    line = child.stdout.readline().decode()
    if not line.startswith("ready"):
        raise RuntimeError(f"the agent did not start: {line!r}; see {procs.workdir}")


# -- the load generator ------------------------------------------------------------------------

@dataclass(frozen=True)
class Result:
    name: str
    rps: float
    p99_ms: float
    errors: int


def median_of(runs: list[Result]) -> Result:
    """The median req/s and p99 of several runs of one path; errors summed."""
    rps = sorted(r.rps for r in runs)[len(runs) // 2]
    p99 = sorted(r.p99_ms for r in runs)[len(runs) // 2]
    return Result(runs[0].name, rps, p99, sum(r.errors for r in runs))


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(name: str, port: int, *, duration: int, connections: int, threads: int,
            warmup: int) -> Result:
    url = f"http://127.0.0.1:{port}/"
    base = ["wrk", f"-t{threads}", f"-c{connections}", "-H", f"Host: {HOST}", "--latency"]
    subprocess.run([*base, f"-d{warmup}s", url], capture_output=True, check=True)
    out = subprocess.run([*base, f"-d{duration}s", url], capture_output=True, text=True,
                         check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    assert p99 is not None, out
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(non2xx.group(1)) if non2xx else 0
    return Result(name, rps, _ms(p99.group(1), p99.group(2)), errors)


# -- children ----------------------------------------------------------------------------------

def child_backend(port: int) -> None:
    from aiohttp import web

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=BODY)

    app = web.Application()
    app.router.add_get("/{tail:.*}", hello)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def child_agent(settings_path: str) -> None:
    import logging

    sys.path.insert(0, str(ROOT))
    from aiohttp import web

    from agent.app import AdminSeed, create_app
    from agent.cli import _loop_factory
    from agent.keys import ROUTES_KEY
    from agent.logconfig import configure_logging
    from agent.proxy import Upstream
    from agent.testing import MemoryServiceLocator
    from tests.support.agent import make_config

    settings = json.loads(Path(settings_path).read_text())
    configure_logging("warning", "json")
    logging.getLogger("aiohttp.access").disabled = True

    config = make_config(Path(settings["state"]), proxy=settings["proxy"])

    async def main() -> None:
        locator = MemoryServiceLocator()
        locator.add("bench", Upstream("127.0.0.1", settings["backend_port"]))
        app = create_app(config, locator=locator,
                         admin=AdminSeed("bench@example.com", "bench-password"))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", free_port()).start()
        await app[ROUTES_KEY].create(domain=HOST, service_id="bench", port=80)
        print("ready", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()

    # The loop ``dployr-agent serve`` runs on ([server] event_loop: uvloop by default).
    with asyncio.Runner(loop_factory=_loop_factory(config.server.event_loop)) as loop_runner:
        loop_runner.run(main())


# -- the run -----------------------------------------------------------------------------------

@contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="dployr-bench-proxy-"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def measure(args: argparse.Namespace) -> list[Result]:
    """Start everything, then measure the paths round-robin ``--rounds`` times (the machine's
    noise then hits every path alike) and keep the median of each."""
    for tool in ("wrk", "nginx", "caddy"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench/proxy.py needs {tool} on PATH")
    wrk = {"duration": args.duration, "connections": args.connections, "threads": args.threads,
           "warmup": args.warmup}
    with workdir(args.keep) as work:
        procs = Processes(work)
        try:
            backend = start_backend(procs, args.backend)
            ports = {"direct": backend, "nginx": start_nginx_proxy(procs, backend),
                     "nginx-1-worker": start_nginx_proxy(procs, backend, "1"),
                     "caddy-hand": start_caddy_by_hand(procs, backend)}
            ports["builtin"] = free_port()
            start_agent(procs, backend, {"backend": "builtin",
                                         "listen": f"127.0.0.1:{ports['builtin']}"})
            admin = start_caddy_empty(procs)
            ports["caddy-agent"] = free_port()
            start_agent(procs, backend, {"backend": "caddy",
                                         "caddy_admin": f"http://127.0.0.1:{admin}",
                                         "caddy_listen": [f"127.0.0.1:{ports['caddy-agent']}"]})
            wait_http(f"http://127.0.0.1:{ports['caddy-agent']}/", host=HOST)
            runs: dict[str, list[Result]] = {name: [] for name in ports}
            for round_ in range(args.rounds):
                for name, port in ports.items():
                    result = run_wrk(name, port, **wrk)
                    runs[name].append(result)
                    print(f"round {round_ + 1}: {name:12} {result.rps:10,.0f} req/s"
                          f"  p99 {result.p99_ms:7.2f} ms", file=sys.stderr)
        finally:
            procs.stop_all()
    return [median_of(results) for results in runs.values()]


def report(results: list[Result], args: argparse.Namespace) -> str:
    by = {r.name: r for r in results}
    lines = [
        f"`python bench/proxy.py --duration {args.duration} --rounds {args.rounds}"
        f" --connections {args.connections} --threads {args.threads} --backend {args.backend}`"
        f" on {os.cpu_count()} CPUs ({time.strftime('%Y-%m-%d')}). Small responses"
        f" ({len(BODY)} bytes) from one {args.backend} backend; wrk with keep-alive, Host"
        f" `{HOST}`; the paths are measured round-robin and each figure is the median of"
        " its rounds. Everything runs on the same machine, so wrk, the backend and the proxy"
        " share its cores.",
        "",
        "| path | req/s | p99 (ms) | errors | vs direct |",
        "|---|---:|---:|---:|---:|",
    ]
    direct = by["direct"].rps
    for r in results:
        lines.append(f"| {r.name} | {r.rps:,.0f} | {r.p99_ms:.2f} | {r.errors} |"
                     f" {r.rps / direct:.2f} |")
    lines += [
        "",
        f"- built-in / nginx: **{by['builtin'].rps / by['nginx'].rps:.2f}** (aim: at least 0.3);"
        f" against nginx held to one worker process, as the built-in proxy is:"
        f" {by['builtin'].rps / by['nginx-1-worker'].rps:.2f}",
        f"- agent-driven Caddy / Caddy by hand: **{by['caddy-agent'].rps / by['caddy-hand'].rps:.2f}**"
        " (aim: equal, i.e. at least 0.9: the two are the same Caddy, so a higher ratio is noise)",
    ]
    return "\n".join(lines)


QUICK_ARGS = ["--duration", "3", "--rounds", "1", "--warmup", "1"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per path and round")
    parser.add_argument("--rounds", type=int, default=3, help="round-robin rounds (median)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of load before each")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backend", choices=("nginx", "aiohttp"), default="nginx")
    parser.add_argument("--write", type=Path, help="replace the proxy section of this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return parser


def collect(argv: list[str] | None = None) -> Section:
    """Run the benchmark and return its rows and details (see bench/_report.py)."""
    args = _parser().parse_args(argv)
    results = measure(args)
    by = {r.name: r for r in results}
    builtin, nginx = by["builtin"], by["nginx"]
    hand, driven = by["caddy-hand"], by["caddy-agent"]
    rows = [
        Row("built-in proxy requests/s", f"{builtin.rps:,.0f}", "nginx (by hand)",
            f"{nginx.rps:,.0f}", builtin.rps / nginx.rps, ">= 0.3", builtin.rps / nginx.rps >= 0.3),
        Row("built-in proxy requests/s, against nginx with one worker", f"{builtin.rps:,.0f}",
            "nginx, 1 worker", f"{by['nginx-1-worker'].rps:,.0f}",
            builtin.rps / by["nginx-1-worker"].rps),
        Row("built-in proxy p99", f"{builtin.p99_ms:.2f} ms", "nginx (by hand)",
            f"{nginx.p99_ms:.2f} ms", builtin.p99_ms / nginx.p99_ms),
        Row("Caddy driven by the agent, requests/s", f"{driven.rps:,.0f}", "Caddy by hand",
            f"{hand.rps:,.0f}", driven.rps / hand.rps, ">= 0.9 (equal within noise)",
            driven.rps / hand.rps >= 0.9),
        Row("Caddy driven by the agent, p99", f"{driven.p99_ms:.2f} ms", "Caddy by hand",
            f"{hand.p99_ms:.2f} ms", driven.p99_ms / hand.p99_ms),
    ]
    detail = report(results, args)
    return Section("proxy", "Proxy: built-in and agent-driven Caddy against nginx and Caddy by "
                   "hand", "python -m bench.proxy " + " ".join(argv or []), rows, detail.strip())


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        if sys.argv[2] == "backend":
            child_backend(int(sys.argv[3]))
        else:
            child_agent(sys.argv[3])
        return
    args = _parser().parse_args()
    section = collect(sys.argv[1:])
    print(section.detail)
    print(render_rows(section.rows))
    if args.write:
        from bench.__main__ import write_docs
        write_docs(args.write, None, [section])


if __name__ == "__main__":
    main()
