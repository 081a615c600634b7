"""Supervision figures of the agent, side by side with supervisord, in the same run.

    python -m bench.supervise [--services 200] [--idle 60] [--starts 20] [--lines 200000]

1. Start latency: from the start call until the app's port accepts, minus the same app
   started directly (Popen). Agent: POST /v1/services/{id}/start; supervisord: startProcess.
2. 200 idle services: RSS and CPU of the supervisor over ``--idle`` seconds; p50/p99 of a
   status call (GET /v1/services/{id}/status against supervisord's getProcessInfo).
3. Logs: capture throughput (an app writing ``--lines`` lines as fast as it can, until the last
   one is in the supervisor's log) and follow latency (a line written until a follower of the
   API has it; supervisord has no streaming follow, `supervisorctl tail -f` polls).

Prints one table with the ratios (agent / supervisord; below 1 is better for the agent).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

from bench._agent_env import agent_env, free_port
from bench._report import Row, Section, cpu_seconds, run_module

PYTHON = sys.executable
# The bench extra's supervisord (next to this interpreter), else the system's.
_VENV_SUPERVISORD = Path(sys.executable).with_name("supervisord")
SUPERVISORD = (str(_VENV_SUPERVISORD) if _VENV_SUPERVISORD.exists()
               else shutil.which("supervisord") or "/usr/bin/supervisord")

LISTENER = textwrap.dedent("""
    import os, socket
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(os.environ["PORT"])))
    s.listen(64)
    while True:
        c, _ = s.accept()
        c.close()
""")

FLOOD = textwrap.dedent("""
    import os, sys
    n = int(os.environ["LINES"])
    w = sys.stdout.write
    for i in range(n):
        w(f"line {i}\\n")
    sys.stdout.flush()
    import time
    time.sleep(100000)
""")

STAMPED = textwrap.dedent("""
    import os, sys, time
    n, rate = int(os.environ["LINES"]), float(os.environ["RATE"])
    start = time.monotonic()
    for i in range(n):
        sys.stdout.write(f"{time.time():.6f} {i}\\n")
        sys.stdout.flush()
        ahead = (i + 1) / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
    time.sleep(100000)
""")


def wait_port(port: int, timeout: float = 30.0) -> float:
    """Poll until 127.0.0.1:port accepts; return the monotonic time it did."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as s:
            try:
                s.connect(("127.0.0.1", port))
                return time.monotonic()
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"port {port} never accepted")
        time.sleep(0.001)


def wait_for(predicate: Callable[[], Any], timeout: float = 120.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(interval)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the two supervisors ----------------------------------------------------------------------

class Agent:
    """A real ``dployr-agent serve`` with local deployments allowed under ``root``."""

    def __init__(self, work: Path, root: Path) -> None:
        self.port = free_port()
        self.state = work / "agent-state"
        env = agent_env(self.state)
        env.update({
            "DPLOYR_SERVER__LISTEN": f"127.0.0.1:{self.port}",
            "DPLOYR_ADMIN_EMAIL": "bench@example.com", "DPLOYR_ADMIN_PASSWORD": "bench-password",
            "DPLOYR_AUTH__HASH_TIME_COST": "1", "DPLOYR_AUTH__HASH_MEMORY_KIB": "64",
            "DPLOYR_AUTH__HASH_PARALLELISM": "1",
            "DPLOYR_RATELIMIT__ENABLED": "false",
            "DPLOYR_LOGGING__ACCESS_LOG": "false", "DPLOYR_LOGGING__LEVEL": "warning",
            "DPLOYR_SERVICES__ALLOWED_LOCAL_ROOTS": json.dumps([str(root)]),
            "DPLOYR_SERVICES__LOG_MAX_BYTES": str(64 << 20),
        })
        self.env = env
        self.log = (work / "agent.log").open("ab")
        self.token = ""
        self._launch()
        self.token = self.call("POST", "/v1/auth/login",
                               {"email": "bench@example.com", "password": "bench-password"})[
            "access_token"]

    def _launch(self) -> None:
        self.proc = subprocess.Popen([PYTHON, "-m", "agent", "serve"], env=self.env,
                                     stdout=self.log, stderr=self.log)
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        wait_for(self._healthy, timeout=60, interval=0.01)

    def kill_and_restart(self) -> float:
        """SIGKILL the agent, start it again; seconds until it answers /v1/health."""
        self.proc.kill()
        self.proc.wait()
        self.conn.close()
        t0 = time.monotonic()
        self._launch()
        return time.monotonic() - t0

    def _healthy(self) -> bool:
        try:
            return self.call("GET", "/v1/health") is not None
        except OSError:
            self.conn.close()
            return False

    def call(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if getattr(self, "token", None):
            headers["Authorization"] = f"Bearer {self.token}"
        self.conn.request(method, path, body=json.dumps(body) if body is not None else None,
                          headers=headers)
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {path}: {resp.status} {data[:300]!r}")
        return json.loads(data) if data else None

    def call_text(self, path: str) -> str:
        self.conn.request("GET", path, headers={"Authorization": f"Bearer {self.token}"})
        return self.conn.getresponse().read().decode()

    def deploy(self, name: str, path: Path, run_cmd: str, **extra: Any) -> str:
        dep = self.call("POST", "/v1/deployments", {"name": name, "source": "local",
                                                     "path": str(path), "run_cmd": run_cmd,
                                                     **extra})
        return str(dep["service_id"])

    @property
    def process(self) -> psutil.Process:
        return psutil.Process(self.proc.pid)

    def close(self) -> None:
        """Delete every deployment (their apps would outlive the agent), then stop it."""
        with contextlib.suppress(Exception):
            for _ in range(20):  # pages of 500 (bounded, should a delete not take)
                deployments = self.call("GET", "/v1/deployments?limit=500")["data"]
                if not deployments:
                    break
                for dep in deployments:
                    self.call("DELETE", f"/v1/deployments/{dep['id']}")
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        self.log.close()


class Supervisord:
    """supervisord with one program per (name, command, env), none started automatically."""

    def __init__(self, work: Path, programs: dict[str, tuple[str, Path, dict[str, str]]],
                 binary: str = SUPERVISORD) -> None:
        self.port = free_port()
        self.logs = work / "supervisor-logs"
        self.logs.mkdir()
        sections = [textwrap.dedent(f"""
            [supervisord]
            nodaemon=true
            logfile={work}/supervisord.log
            pidfile={work}/supervisord.pid
            childlogdir={self.logs}
            [inet_http_server]
            port=127.0.0.1:{self.port}
            [rpcinterface:supervisor]
            supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
        """)]
        for name, (command, cwd, env) in programs.items():
            environment = ",".join(f'{k}="{v}"' for k, v in env.items())
            sections.append(textwrap.dedent(f"""
                [program:{name}]
                command={command}
                directory={cwd}
                autostart=false
                autorestart=true
                startsecs=1
                stopasgroup=true
                killasgroup=true
                stdout_logfile={self.logs}/{name}.out
                stdout_logfile_maxbytes=64MB
                stderr_logfile={self.logs}/{name}.err
            """) + (f"environment={environment}\n" if environment else ""))
        conf = work / "supervisord.conf"
        conf.write_text("\n".join(sections))
        self.out = (work / "supervisord.stdout").open("ab")
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=self.out,
                                     stderr=self.out)
        self.rpc = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{self.port}/RPC2")
        wait_for(self._up, timeout=60)

    def _up(self) -> bool:
        try:
            return self.rpc.supervisor.getState()["statename"] == "RUNNING"  # type: ignore[index]
        except OSError:
            return False

    @property
    def process(self) -> psutil.Process:
        return psutil.Process(self.proc.pid)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.rpc.supervisor.stopAllProcesses()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self.out.close()


# -- the measurements ---------------------------------------------------------------------------

def start_latency(agent: Agent, sup: Supervisord, app: Path, agent_port: int, sup_port: int,
                  runs: int) -> dict[str, list[float]]:
    """Seconds from the start call until the port accepts, per supervisor and direct."""
    result: dict[str, list[float]] = {"direct": [], "agent": [], "supervisord": []}
    direct_port = free_port()
    for _ in range(runs):
        t0 = time.monotonic()
        proc = subprocess.Popen([PYTHON, str(app / "listener.py")],
                                env={**os.environ, "PORT": str(direct_port)})
        result["direct"].append(wait_port(direct_port) - t0)
        proc.kill()
        proc.wait()

        t0 = time.monotonic()
        agent.call("POST", "/v1/services/latency/start")
        result["agent"].append(wait_port(agent_port) - t0)
        agent.call("POST", "/v1/services/latency/stop?wait=true")

        t0 = time.monotonic()
        sup.rpc.supervisor.startProcess("latency", False)
        result["supervisord"].append(wait_port(sup_port) - t0)
        sup.rpc.supervisor.stopProcess("latency", True)
    return result


def sample_idle(procs: dict[str, psutil.Process], seconds: float) -> dict[str, dict[str, float]]:
    """RSS (max over the window) and CPU seconds used during ``seconds`` of idling (from the
    scheduler's clock: see ``_report.cpu_seconds``)."""
    before = {name: cpu_seconds(p.pid) for name, p in procs.items()}
    rss = {name: 0.0 for name in procs}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for name, p in procs.items():
            rss[name] = max(rss[name], p.memory_info().rss)
        time.sleep(1)
    out = {}
    for name, p in procs.items():
        cpu = cpu_seconds(p.pid) - before[name]
        out[name] = {"rss_mb": rss[name] / 1e6, "cpu_s": cpu, "cpu_pct": cpu / seconds * 100}
    return out


def status_latency(agent: Agent, sup: Supervisord, names: list[str],
                   calls: int) -> dict[str, list[float]]:
    rng = random.Random(1)
    result: dict[str, list[float]] = {"agent": [], "supervisord": [], "agent_health": []}
    for _ in range(calls):
        name = rng.choice(names)
        t0 = time.perf_counter()
        agent.call("GET", f"/v1/services/{name}/status")
        result["agent"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        agent.call("GET", "/v1/health")
        result["agent_health"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        sup.rpc.supervisor.getProcessInfo(name)
        result["supervisord"].append(time.perf_counter() - t0)
    return result


def capture_throughput(agent: Agent, sup: Supervisord, root: Path, lines: int) -> dict[str, float]:
    """Lines per second from the start call until the app's last line is in the log file."""
    last = f"{lines - 1}"
    t0 = time.monotonic()
    agent.deploy("flood", root / "flood", f"exec {PYTHON} flood.py",
                 env={"LINES": str(lines)}, restart={"mode": "never"})
    active = agent.state / "apps/flood/logs/app.log"
    wait_for(lambda: _tail_has(active, f"stdout line {last}\n"), interval=0.005)
    agent_s = time.monotonic() - t0
    t0 = time.monotonic()
    sup.rpc.supervisor.startProcess("flood", False)
    sup_log = sup.logs / "flood.out"
    wait_for(lambda: _tail_has(sup_log, f"line {last}\n"), interval=0.005)
    sup_s = time.monotonic() - t0
    return {"agent": lines / agent_s, "supervisord": lines / sup_s}


def _tail_has(path: Path, text: str) -> bool:
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - 4096))
            return f.read().endswith(text.encode())
    except FileNotFoundError:
        return False


def follow_latency(agent: Agent, root: Path, lines: int) -> list[float]:
    """Seconds from a write (stamped in the line) until a follower of the API reads it."""
    agent.deploy("stamped", root / "stamped", f"exec {PYTHON} stamped.py",
                 env={"LINES": str(lines + 100), "RATE": "1000"})
    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=60)
    conn.request("GET", "/v1/services/stamped/logs?follow=true&tail=0&stream=stdout",
                 headers={"Authorization": f"Bearer {agent.token}"})
    resp = conn.getresponse()
    latencies: list[float] = []
    while len(latencies) < lines:
        raw = resp.readline()
        if not raw:
            break
        now = time.time()
        latencies.append(now - float(raw.decode().split(" ")[2]))
    conn.close()
    return latencies


# -- the run ----------------------------------------------------------------------------------

def _setup(work: Path, services: int, lines: int) -> tuple[Path, dict[str, Any]]:
    root = work / "apps"
    apps = {"latency": LISTENER, "flood": FLOOD, "stamped": STAMPED}
    for name, code in apps.items():
        (root / name).mkdir(parents=True)
        (root / name / f"{name}.py").write_text(code)
    (root / "latency" / "listener.py").write_text(LISTENER)
    (root / "idle").mkdir()
    return root, apps


@contextlib.contextmanager
def _running(work: Path, services: int, lines: int, follow_lines: int,
             ports: tuple[int, int],
             supervisord: str) -> Iterator[tuple[Agent, Supervisord, Path]]:
    root, _ = _setup(work, services, lines)
    programs: dict[str, tuple[str, Path, dict[str, str]]] = {
        "latency": (f"{PYTHON} listener.py", root / "latency", {"PORT": str(ports[1])}),
        "flood": (f"{PYTHON} flood.py", root / "flood", {"LINES": str(lines)}),
    }
    for i in range(services):
        programs[f"idle{i}"] = ("sleep 1000000", root / "idle", {})
    agent = Agent(work, root)
    sup = Supervisord(work, programs, supervisord)
    try:
        yield agent, sup, root
    finally:
        agent.close()
        sup.close()


# The figures are for 200 idle services over a minute: the quick mode keeps those and
# shortens the rest.
QUICK_ARGS = ["--services", "200", "--idle", "60", "--starts", "5", "--status-calls", "1000",
              "--lines", "50000", "--follow-lines", "1000"]


def collect(argv: list[str] | None = None) -> Section:
    """Run the benchmark and return its rows and details (see bench/_report.py)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idle sampling")
    parser.add_argument("--starts", type=int, default=20)
    parser.add_argument("--status-calls", type=int, default=2000)
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--follow-lines", type=int, default=5000)
    parser.add_argument("--supervisord", default=SUPERVISORD,
                        help="the supervisord to compare with (default: %(default)s)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="dployr-bench-supervise-"))
    agent_port, sup_port = free_port(), free_port()
    rows: list[tuple[str, str, str, str]] = []
    out: list[Row] = []
    try:
        with _running(work, args.services, args.lines, args.follow_lines,
                      (agent_port, sup_port), args.supervisord) as (agent, sup, root):
            agent.deploy("latency", root / "latency", f"exec {PYTHON} listener.py",
                         port=agent_port, fixed_port=True)
            wait_for(lambda: agent.call("GET", "/v1/services/latency")["state"] == "running")
            agent.call("POST", "/v1/services/latency/stop?wait=true")
            lat = start_latency(agent, sup, root / "latency", agent_port, sup_port, args.starts)
            direct = statistics.median(lat["direct"])
            a_over = statistics.median(lat["agent"]) - direct
            s_over = statistics.median(lat["supervisord"]) - direct
            rows.append(("start latency, median (s)", f"{statistics.median(lat['agent']):.4f}",
                         f"{statistics.median(lat['supervisord']):.4f}",
                         f"direct {direct:.4f}"))
            rows.append(("start overhead over direct (ms)", f"{a_over * 1000:.1f}",
                         f"{s_over * 1000:.1f}", "target <= 20 ms"))
            out.append(Row("start overhead over the app started directly",
                           f"{a_over * 1000:.1f} ms", "supervisord", f"{s_over * 1000:.1f} ms",
                           None, "<= 20 ms", a_over * 1000 <= 20))

            names = []
            for i in range(args.services):
                agent.deploy(f"idle{i}", root / "idle", "exec sleep 1000000")
                names.append(f"idle{i}")
            for name in names:
                sup.rpc.supervisor.startProcess(name, False)
            wait_for(lambda: all(s["state"] == "running" for s in
                                 agent.call("GET", "/v1/services?limit=500")["data"]
                                 if s["name"].startswith("idle")), timeout=300)
            wait_for(lambda: all(p["statename"] == "RUNNING" for p in
                                 sup.rpc.supervisor.getAllProcessInfo()  # type: ignore[union-attr]
                                 if p["name"].startswith("idle")), timeout=300)
            idle = sample_idle({"agent": agent.process, "supervisord": sup.process}, args.idle)
            rows.append((f"{args.services} idle: RSS (MB)", f"{idle['agent']['rss_mb']:.1f}",
                         f"{idle['supervisord']['rss_mb']:.1f}",
                         f"ratio {idle['agent']['rss_mb'] / idle['supervisord']['rss_mb']:.2f}"))
            a_idle, s_idle = idle["agent"], idle["supervisord"]
            out.append(Row(f"RSS with {args.services} idle services", f"{a_idle['rss_mb']:.1f} MB",
                           "supervisord", f"{s_idle['rss_mb']:.1f} MB",
                           a_idle["rss_mb"] / s_idle["rss_mb"], "no worse",
                           a_idle["rss_mb"] <= s_idle["rss_mb"]))
            out.append(Row(f"CPU with {args.services} idle services ({args.idle:g} s)",
                           f"{a_idle['cpu_pct']:.3f} %", "supervisord",
                           f"{s_idle['cpu_pct']:.3f} %",
                           a_idle["cpu_pct"] / s_idle["cpu_pct"] if s_idle["cpu_pct"] else None,
                           "no worse", a_idle["cpu_pct"] <= s_idle["cpu_pct"]))
            rows.append((f"{args.services} idle: CPU over {args.idle:g}s (%)",
                         f"{idle['agent']['cpu_pct']:.3f}", f"{idle['supervisord']['cpu_pct']:.3f}",
                         f"cpu s {idle['agent']['cpu_s']:.3f} vs "
                         f"{idle['supervisord']['cpu_s']:.3f} (scheduler clock)"))

            st = status_latency(agent, sup, names, args.status_calls)
            a50, s50 = statistics.median(st["agent"]), statistics.median(st["supervisord"])
            h50 = statistics.median(st["agent_health"])
            rows.append(("status call p50 (ms)", f"{a50 * 1000:.2f}", f"{s50 * 1000:.2f}",
                         f"ratio {a50 / s50:.2f}; the agent's GET /v1/health: {h50 * 1000:.2f}"))
            out.append(Row("status call p50", f"{a50 * 1000:.2f} ms",
                           "supervisord getProcessInfo", f"{s50 * 1000:.2f} ms", a50 / s50,
                           "no worse", a50 <= s50))
            rows.append(("status call p99 (ms)", f"{pct(st['agent'], 0.99) * 1000:.2f}",
                         f"{pct(st['supervisord'], 0.99) * 1000:.2f}", ""))

            before = {s["name"]: s["pid"] for s in agent.call("GET", "/v1/services?limit=500")["data"]}
            back = agent.kill_and_restart()
            after = {s["name"]: s["pid"] for s in agent.call("GET", "/v1/services?limit=500")["data"]}
            same = sum(1 for name, pid in before.items() if after.get(name) == pid)
            out.append(Row(f"kill -9 and restart with {args.services} services, until it answers",
                           f"{back:.2f} s", "-", "-", None,
                           f"{same}/{len(before)} adopted with the same pid",
                           same == len(before)))
            rows.append((f"kill -9 + restart with {args.services} services (s)", f"{back:.2f}",
                         "n/a", f"{same}/{len(before)} adopted with the same pid"))

            tp = capture_throughput(agent, sup, root, args.lines)
            rows.append(("log capture (lines/s)", f"{tp['agent']:.0f}", f"{tp['supervisord']:.0f}",
                         f"ratio {tp['agent'] / tp['supervisord']:.2f} (higher is better)"))

            out.append(Row("log capture throughput", f"{tp['agent']:,.0f} lines/s", "supervisord",
                           f"{tp['supervisord']:,.0f} lines/s", tp["agent"] / tp["supervisord"],
                           "higher is better"))
            fl = follow_latency(agent, root, args.follow_lines)
            rows.append(("follow latency p50 (ms)", f"{statistics.median(fl) * 1000:.2f}", "n/a",
                         f"{len(fl)} lines at 1000/s"))
            rows.append(("follow latency p99 (ms)", f"{pct(fl, 0.99) * 1000:.2f}", "n/a",
                         "target < 50 ms; supervisord has no push follow"))
            out.append(Row("log follow latency p99 (line written until a follower has it)",
                           f"{pct(fl, 0.99) * 1000:.2f} ms", "supervisord: no push follow", "-",
                           None, "< 50 ms", pct(fl, 0.99) < 0.05))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    width = max(len(r[0]) for r in rows)
    lines = [f"{'measure':<{width}}  {'agent':>10}  {'supervisord':>12}  note"]
    for name, a, s, note in rows:
        lines.append(f"{name:<{width}}  {a:>10}  {s:>12}  {note}")
    detail = ("| measure | agent | supervisord | note |\n|---|---|---|---|\n"
              + "\n".join(f"| {n} | {a} | {s} | {note} |" for n, a, s, note in rows))
    print("\n".join(lines), file=sys.stderr)
    return Section("supervise", "Supervision against supervisord",
                   "python -m bench.supervise " + " ".join(argv or []), out, detail)


def main(argv: list[str] | None = None) -> int:
    return run_module(collect, argv)


if __name__ == "__main__":
    sys.exit(main())
