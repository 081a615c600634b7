"""Deployments from git through the API: small apps committed to real repositories, an agent
under ``aiohttp_client`` whose proxy serves them, and shortcuts to drive and watch deploys."""

from __future__ import annotations

import asyncio
import contextlib
import json
import textwrap
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from agent.keys import PROXY_KEY
from tests.support.agent import eventually

#: A Python app on $PORT answering the content of VERSION (a file in the repository) and the
#: env var GREETING; ``/pid`` answers its pid. On SIGTERM it stops accepting and finishes the
#: requests in flight, as a well-behaved app does.
PY_APP = textwrap.dedent('''
    import http.server, os, signal, sys, threading
    port = int(os.environ["PORT"])
    version = open("VERSION").read().strip()
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/pid":
                body = str(os.getpid())
            else:
                body = f"{version} {os.environ.get('GREETING', 'hello')}"
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        def log_message(self, *args):
            pass
    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = False
        block_on_close = True
    server = Server(("127.0.0.1", port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"version {version} listening on {port}", flush=True)
    server.serve_forever()
    server.server_close()
''')

#: The same app for Node.js (no dependencies): answers VERSION, GREETING and the Node.js version.
NODE_SERVER = textwrap.dedent('''
    const http = require('http');
    const fs = require('fs');
    const version = fs.readFileSync('VERSION', 'utf8').trim();
    const server = http.createServer((req, res) => {
      const body = req.url === '/node' ? process.version
        : `${version} ${process.env.GREETING || 'hello'} ${process.env.NODE_ENV || '-'}`;
      res.end(body);
    });
    server.listen(Number(process.env.PORT), '127.0.0.1', () =>
      console.log(`version ${version} listening on ${process.env.PORT}`));
    process.on('SIGTERM', () => server.close(() => process.exit(0)));
''')


def node_files(version: str, *, port_from_env: bool = True) -> dict[str, str]:
    """A Node.js app: package.json with a start script, server.js, VERSION."""
    package = {"name": "app", "version": "1.0.0", "private": True,
               "scripts": {"start": "node server.js"}}
    return {"package.json": json.dumps(package) + "\n", "server.js": NODE_SERVER,
            "VERSION": version + "\n"}


def py_files(version: str) -> dict[str, str]:
    return {"app.py": PY_APP, "VERSION": version + "\n"}


class Deployer:
    """An agent under ``aiohttp_client`` with an admin token, and shortcuts for deploys."""

    def __init__(self, client: TestClient, headers: dict[str, str], state_dir: Path, *,
                 proxy_url: str | None = None) -> None:
        self.client = client
        self.headers = headers
        self.state_dir = state_dir
        self._proxy_url = proxy_url  # Caddy's listener; default: the built-in proxy's

    async def request(self, method: str, path: str, *, expect: int | None = None,
                      **kwargs: Any) -> Any:
        resp = await self.client.request(method, path, headers=self.headers, **kwargs)
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        if expect is not None:
            assert resp.status == expect, (resp.status, body)
        return body

    async def create(self, body: dict[str, Any], expect: int = 202) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("POST", "/v1/deployments", json=body,
                                                    expect=expect)
        return result

    async def get(self, key: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", f"/v1/deployments/{key}", expect=200)
        return result

    async def settled(self, key: str, *, run_id: str | None = None,
                      timeout: float = 90.0) -> dict[str, Any]:
        """Poll the deployment until its newest run (or ``run_id``) succeeded or failed."""

        async def check() -> dict[str, Any] | None:
            dep = await self.get(key)
            detail = dep["status_detail"] or {}
            if run_id is not None and detail.get("run_id") != run_id:
                return None
            return dep if dep["status"] in ("succeeded", "failed") else None

        result: dict[str, Any] = await eventually(check, timeout=timeout, interval=0.05,
                                                  message=f"deployment {key} to settle")
        return result

    async def deploy(self, body: dict[str, Any], *, timeout: float = 90.0) -> dict[str, Any]:
        """Create and wait for the first deploy to succeed."""
        created = await self.create(body)
        assert created["status"] == "queued", created
        dep = await self.settled(created["id"], timeout=timeout)
        assert dep["status"] == "succeeded", dep["status_detail"]
        return dep

    async def put(self, key: str, body: dict[str, Any], expect: int = 202) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("PUT", f"/v1/deployments/{key}", json=body,
                                                    expect=expect)
        return result

    async def redeploy(self, key: str, body: dict[str, Any] | None = None, *,
                       timeout: float = 90.0) -> dict[str, Any]:
        """PUT and wait for that run to settle."""
        queued = await self.put(key, body or {})
        return await self.settled(key, run_id=queued["status_detail"]["run_id"], timeout=timeout)

    async def rollback(self, key: str, body: dict[str, Any] | None = None,
                       expect: int = 202) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(
            "POST", f"/v1/deployments/{key}/rollback", json=body or {}, expect=expect)
        return result

    async def releases(self, key: str) -> list[dict[str, Any]]:
        page = await self.request("GET", f"/v1/deployments/{key}/releases", expect=200)
        data: list[dict[str, Any]] = page["data"]
        return data

    async def deploy_log(self, key: str, query: str = "?tail=1000") -> str:
        text: str = await self.request("GET", f"/v1/deployments/{key}/logs{query}", expect=200)
        return text

    async def service(self, key: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", f"/v1/services/{key}/status",
                                                    expect=200)
        return result

    async def route(self, domain: str, service_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(
            "POST", "/v1/proxy/routes", json={"domain": domain, "service_id": service_id},
            expect=201)
        return result

    @property
    def proxy_url(self) -> str:
        if self._proxy_url is not None:
            return self._proxy_url
        host, port = self.client.app[PROXY_KEY].address  # type: ignore[attr-defined]
        return f"http://{host}:{port}"

    async def via_proxy(self, domain: str, path: str = "/") -> tuple[int, str]:
        """GET through the agent's proxy with Host ``domain``."""
        async with aiohttp.ClientSession() as session, session.get(
                self.proxy_url + path, headers={"Host": domain}) as resp:
            return resp.status, await resp.text()

    async def direct(self, key: str, path: str = "/") -> str:
        """GET the service's current run on its listen port."""
        port = (await self.service(key))["listen_port"]
        async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{port}{path}") as resp:
            assert resp.status == 200
            return await resp.text()


def remote_body(name: str, remote: str, **extra: Any) -> dict[str, Any]:
    """A ``source: remote`` body for a Python app (override anything with ``extra``)."""
    body: dict[str, Any] = {"name": name, "source": "remote", "runtime": "python",
                            "version": "3", "remote": remote, "branch": "main",
                            "run_cmd": "exec python app.py"}
    body.update(extra)
    return body


@dataclass
class Traffic:
    """What clients looping requests saw: answers counted by the first word of their body
    (the app's version), and every failure (a non-200 or a client error)."""

    seen: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def traffic(url: str, host: str, *, clients: int = 2) -> AsyncIterator[Traffic]:
    """``clients`` keep-alive clients request ``url`` with ``Host: host`` in a loop for the
    duration of the block."""
    seen = Traffic()
    stop = asyncio.Event()

    async def loop() -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                try:
                    async with session.get(url, headers={"Host": host}) as resp:
                        body = await resp.text()
                        if resp.status != 200:
                            seen.failures.append(f"{resp.status} {body[:200]}")
                        else:
                            seen.seen[body.split()[0] if body.split() else ""] += 1
                except aiohttp.ClientError as exc:
                    seen.failures.append(repr(exc))

    tasks = [asyncio.create_task(loop()) for _ in range(clients)]
    try:
        yield seen
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks)
