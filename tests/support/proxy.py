"""Real parts for the proxy tests: small aiohttp backends and a Caddy the test starts itself."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from agent.proxy import Upstream
from tests.support.agent import eventually, free_port

CHUNK = bytes(range(256)) * 256  # 64 KiB of a known pattern


def pattern(size: int) -> bytes:
    """``size`` bytes of the download pattern (what ``/download`` sends)."""
    whole, rest = divmod(size, len(CHUNK))
    return CHUNK * whole + CHUNK[:rest]


class Backend:
    """An aiohttp app on a free loopback port: echo, streams, WebSocket echo.

    ``slow_release`` holds ``/slow`` after its first chunk (``slow_started`` then set);
    ``upload_started`` is set when
    ``/upload`` has received its first chunk, which ``upload_release`` then holds back.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = free_port()
        self.requests = 0
        self.slow_release = asyncio.Event()
        self.slow_started = asyncio.Event()
        self.upload_started = asyncio.Event()
        self.upload_release: asyncio.Event | None = None
        self.stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/slow", self._slow)
        app.router.add_get("/download", self._download)
        app.router.add_post("/upload", self._upload)
        app.router.add_get("/gzip", self._gzip)
        app.router.add_get("/hop", self._hop)
        app.router.add_get("/sleep", self._sleep)
        app.router.add_route("*", "/{tail:.*}", self._info)
        self.app = app

    @property
    def upstream(self) -> Upstream:
        return Upstream("127.0.0.1", self.port)

    async def start(self) -> Backend:
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()
        return self

    async def stop(self) -> None:
        """Graceful stop: in-flight requests finish, new connections are refused."""
        self.stopping.set()  # ends /sleep early
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _info(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.read()
        return web.json_response({
            "backend": self.name, "method": request.method, "path": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()], "body_size": len(body)})

    async def _slow(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first-chunk\n")
        self.slow_started.set()
        await self.slow_release.wait()
        await response.write(b"last-chunk\n")
        await response.write_eof()
        return response

    async def _download(self, request: web.Request) -> web.StreamResponse:
        size = int(request.query["size"])
        response = web.StreamResponse()
        if request.query.get("length") == "1":
            response.content_length = size
        await response.prepare(request)
        sent = 0 if request.method == "GET" else size  # HEAD: headers only
        while sent < size:
            piece = CHUNK[: min(len(CHUNK), size - sent)]
            await response.write(piece)
            sent += len(piece)
        await response.write_eof()
        return response

    async def _upload(self, request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_any():
            if size == 0:
                self.upload_started.set()
                if self.upload_release is not None:
                    await self.upload_release.wait()
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({"backend": self.name, "size": size,
                                  "sha256": digest.hexdigest(),
                                  "content_length": request.headers.get("Content-Length")})

    async def _gzip(self, request: web.Request) -> web.Response:
        return web.Response(body=gzip.compress(b"compressed " * 1000),
                            headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})

    async def _hop(self, request: web.Request) -> web.Response:
        response = web.Response(text="hop")
        response.headers["Connection"] = "X-Private"
        response.headers["X-Private"] = "must not leave"
        response.headers["Keep-Alive"] = "timeout=5"
        response.headers.add("Set-Cookie", "a=1")
        response.headers.add("Set-Cookie", "b=2")
        return response

    async def _sleep(self, request: web.Request) -> web.Response:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), float(request.query.get("s", "30")))
        return web.Response(text="late")

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("echo.v1",))
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                if msg.data == "close-4001":
                    await ws.close(code=4001, message=b"asked")
                    break
                await ws.send_str(f"{self.name}:{msg.data}")
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        return ws


class CaddyProcess:
    """``/usr/bin/caddy run`` with its admin API on a free loopback port and HTTP only.

    Its config, data and autosave live under ``workdir``; it starts with nothing but the
    admin endpoint (or ``extra`` config), as a Caddy restarted without ``--resume`` does.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.admin_port = free_port()
        self.listen_port = free_port()  # where the agent tells it to serve the routes
        self.process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self, extra: dict[str, Any] | None = None) -> None:
        config = {"admin": {"listen": f"127.0.0.1:{self.admin_port}"},
                  "logging": {"logs": {"default": {"level": "WARN"}}}, **(extra or {})}
        path = self.workdir / "caddy.json"
        path.write_text(json.dumps(config))
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.workdir),
               "XDG_CONFIG_HOME": str(self.workdir / "config"),
               "XDG_DATA_HOME": str(self.workdir / "data")}
        with (self.workdir / "caddy.log").open("ab") as log:
            self.process = subprocess.Popen(["caddy", "run", "--config", str(path)], env=env,
                                            stdout=log, stderr=log)

    async def wait_ready(self) -> None:
        async def answers() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"caddy exited:\n{self.log()}")
            try:
                async with aiohttp.ClientSession() as session, \
                        session.get(f"{self.admin_url}/config/") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(answers, timeout=20, message="caddy's admin API")

    def log(self) -> str:
        path = self.workdir / "caddy.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self) -> None:
        """SIGKILL, as a crash would; wait for it to be gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    async def config(self, path: str = "/config/") -> Any:
        async with aiohttp.ClientSession() as session, \
                session.get(f"{self.admin_url}{path}") as resp:
            return await resp.json()


async def stop_all(backends: list[Backend]) -> None:
    for backend in backends:
        with contextlib.suppress(Exception):
            await backend.stop()


class RawClient:
    """One TCP connection to a proxy, written and read as bytes: for what HTTP client
    libraries will not send (pipelining, half-closes, malformed requests)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, url: str) -> RawClient:
        host, _, port = url.removeprefix("http://").rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, *, head_request: bool = False,
                       ) -> tuple[int, dict[str, str], bytes]:
        """The next response: status, headers (lower-case names; repeats joined), body."""
        raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout=20)
        while raw.startswith(b"HTTP/1.1 100"):
            raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout=20)
        status_line, *lines = raw[:-4].decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        status = int(status_line.split(" ")[1])
        if head_request or status in (204, 304):
            return status, headers, b""
        if "content-length" in headers:
            body = await asyncio.wait_for(
                self.reader.readexactly(int(headers["content-length"])), timeout=20)
        elif headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                body += (await self.reader.readexactly(size + 2))[:-2]  # data, then CRLF
                if size == 0:
                    break
        else:
            body = await asyncio.wait_for(self.reader.read(), timeout=20)
        return status, headers, body

    async def closed(self) -> bool:
        """Whether the proxy closed the connection (after anything still unread)."""
        try:
            rest = await asyncio.wait_for(self.reader.read(), timeout=20)
        except ConnectionResetError:
            return True
        return rest == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()
