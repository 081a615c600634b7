"""Helpers for service tests: small apps written by the tests, a harness around the API, and
cleanup of every process a test's agent started."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from agent.supervisor import procfs
from tests.support.agent import eventually

PYTHON = sys.executable

#: An HTTP server on $PORT: answers GREETING (default "hello"); 500 while ./unhealthy exists.
SERVER_APP = textwrap.dedent('''
    import http.server, os, sys
    port = int(os.environ["PORT"])
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            code = 500 if os.path.exists("unhealthy") else 200
            body = os.environ.get("GREETING", "hello").encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"listening on {port}", flush=True)
    print("ready", file=sys.stderr, flush=True)
    server.serve_forever()
''')

#: Prints "tick N" every TICK seconds (default 0.05), forever.
TICKER_APP = textwrap.dedent('''
    import os, time
    n = 0
    delay = float(os.environ.get("TICK", "0.05"))
    while True:
        n += 1
        print(f"tick {n}", flush=True)
        time.sleep(delay)
''')


def write_app(root: Path, name: str, files: dict[str, str]) -> Path:
    """Create ``root/name`` with the given files; return the directory."""
    app = root / name
    app.mkdir(parents=True, exist_ok=True)
    for filename, text in files.items():
        (app / filename).write_text(text)
    return app


def wrappers_of(state_dir: Path) -> list[procfs.ProcStat]:
    """Live session leaders started by an agent whose state dir is ``state_dir``."""
    prefix = str(state_dir)
    found = []
    for proc in procfs.iter_processes():
        if proc.zombie or proc.pid != proc.session:
            continue
        argv = procfs.read_cmdline(proc.pid)
        if len(argv) >= 7 and argv[3] in ("dployr-app", "dployr-build") \
                and argv[5].startswith(prefix):
            found.append(proc)
    return found


def session_of(pid: int) -> list[procfs.ProcStat]:
    """Live processes of the session led by ``pid``."""
    return [p for p in procfs.iter_processes() if p.session == pid and not p.zombie]


def kill_apps(state_dir: Path) -> None:
    """SIGKILL every process of every app a test agent started (test cleanup)."""
    for leader in wrappers_of(state_dir):
        for proc in session_of(leader.pid):
            with contextlib.suppress(OSError):
                os.kill(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(leader.pid, os.WNOHANG)


def alive(pid: int) -> bool:
    stat = procfs.read_stat(pid)
    return stat is not None and not stat.zombie


class Harness:
    """An agent under ``aiohttp_client`` with an admin token, and shortcuts to its API."""

    def __init__(self, client: TestClient, headers: dict[str, str], apps_root: Path,
                 state_dir: Path, remake: Callable[..., Any]) -> None:
        self.client = client
        self.headers = headers
        self.apps_root = apps_root
        self.state_dir = state_dir
        self._remake = remake

    async def restart_agent(self) -> None:
        """Stop this agent (apps keep running) and start a new one on the same state."""
        await self.client.close()
        self.client = await self._remake()

    async def request(self, method: str, path: str, *, expect: int | None = None,
                      **kwargs: Any) -> Any:
        resp = await self.client.request(method, path, headers=self.headers, **kwargs)
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        if expect is not None:
            assert resp.status == expect, (resp.status, body)
        return body

    async def deploy(self, name: str, run_cmd: str, *, files: dict[str, str] | None = None,
                     expect: int = 201, **extra: Any) -> dict[str, Any]:
        """Create a local deployment of an app directory written from ``files``."""
        path = write_app(self.apps_root, name, files or {})
        body = {"name": name, "source": "local", "path": str(path), "run_cmd": run_cmd, **extra}
        result: dict[str, Any] = await self.request("POST", "/v1/deployments", json=body,
                                                    expect=expect)
        return result

    async def status(self, service: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", f"/v1/services/{service}/status",
                                                    expect=200)
        return result

    async def action(self, service: str, verb: str, *, wait: bool = False) -> dict[str, Any]:
        query = "?wait=true" if wait else ""
        result: dict[str, Any] = await self.request(
            "POST", f"/v1/services/{service}/{verb}{query}", expect=200)
        return result

    async def wait_state(self, service: str, *states: str, timeout: float = 20.0,
                         where: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        """Poll the status until the state is one of ``states`` (and ``where`` holds)."""

        async def check() -> dict[str, Any] | None:
            status = await self.status(service)
            if status["state"] in states and (where is None or where(status)):
                return status
            return None

        result: dict[str, Any] = await eventually(
            check, timeout=timeout, interval=0.05, message=f"{service} to be {states}")
        return result

    async def logs(self, service: str, query: str = "") -> str:
        resp = await self.client.get(f"/v1/services/{service}/logs{query}", headers=self.headers)
        assert resp.status == 200, await resp.text()
        return await resp.text()
