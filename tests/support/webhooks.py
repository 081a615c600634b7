"""Real webhook receivers for the tests: aiohttp servers on 127.0.0.1 that verify every
delivery with the ``standardwebhooks`` library, plus a TCP canary that counts connections."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.support.agent import free_port


@dataclass
class Reply:
    """What the receiver answers to one request."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: str = "ok"
    delay: float = 0.0
    gate: asyncio.Event | None = None  # answer only once this is set (same event loop only)


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it."""

    path: str
    msg_id: str
    event_type: str
    attempt: int
    body: bytes
    headers: dict[str, str]
    payload: dict[str, Any] | None  # set when the signature verified
    error: str | None  # why verification failed

    @property
    def verified(self) -> bool:
        return self.error is None


def library_key(secret: str) -> str | bytes:
    """What a receiver passes to ``standardwebhooks.Webhook`` for a dployr secret (docs/api.md)."""
    return secret if secret.startswith("whsec_") else secret.encode()


class Receiver:
    """A webhook receiver. Paths get their own secret (``expect``) and scripted replies
    (``script``: answered in order, then ``default``). ``fresh_timestamps=False`` checks the
    signature only, for tests whose agent runs on a fake clock."""

    def __init__(self, *, fresh_timestamps: bool = True) -> None:
        self.fresh_timestamps = fresh_timestamps
        self.secrets: dict[str, str] = {}
        self.scripts: dict[str, list[Reply]] = {}
        self.defaults: dict[str, Reply] = {}
        self.received: list[Received] = []
        self.on_request: Callable[[Received], None] | None = None
        self.port = free_port()
        self._lock = threading.Lock()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def expect(self, path: str, secret: str) -> None:
        """Verify requests to ``path`` with ``secret``."""
        self.secrets[path] = secret

    def script(self, path: str, *replies: Reply, default: Reply | None = None) -> None:
        self.scripts[path] = list(replies)
        if default is not None:
            self.defaults[path] = default

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def verified_ids(self, path: str) -> list[str]:
        return [r.msg_id for r in self.at(path) if r.verified]

    def _verify(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[Any, str | None]:
        secret = self.secrets.get(path)
        if secret is None:
            return None, "no secret registered for this path"
        hook = Webhook(library_key(secret))
        try:
            if self.fresh_timestamps:
                return hook.verify(body, headers), None
            # The agent's clock is fake: check the signature, not the timestamp's freshness.
            stamp = datetime.fromtimestamp(int(headers["webhook-timestamp"]), tz=UTC)
            expected = hook.sign(headers["webhook-id"], stamp, body.decode())
            if expected not in headers["webhook-signature"].split(" "):
                raise WebhookVerificationError("No matching signature found")
            return json.loads(body), None
        except (WebhookVerificationError, KeyError, ValueError) as exc:
            return None, f"{type(exc).__name__}: {exc}"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        payload, error = self._verify(request.path, body, headers)
        record = Received(path=request.path, msg_id=headers.get("webhook-id", ""),
                          event_type=headers.get("dployr-event", ""),
                          attempt=int(headers.get("dployr-attempt", "0")), body=body,
                          headers=headers, payload=payload, error=error)
        with self._lock:
            self.received.append(record)
            script = self.scripts.get(request.path)
            reply = script.pop(0) if script else self.defaults.get(request.path, Reply())
        if self.on_request is not None:
            self.on_request(record)
        if reply.gate is not None:
            await reply.gate.wait()
        if reply.delay:
            await asyncio.sleep(reply.delay)
        return web.Response(status=reply.status, text=reply.body, headers=reply.headers)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


class ThreadedServer:
    """Runs an aiohttp application on 127.0.0.1:``port`` in a thread of its own, so that tests
    that block (a real agent driven with urllib) are never in its way."""

    def __init__(self, app: web.Application, port: int) -> None:
        self._app = app
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._runner: web.AppRunner | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._runner = web.AppRunner(self._app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        self._loop.run_until_complete(site.start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def start(self) -> ThreadedServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise AssertionError("the test server did not start")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class Canary:
    """A TCP listener on 127.0.0.1 that counts the connections made to it (there should be 0)."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.05)
        self.port: int = self._sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


def whsec(raw: bytes) -> str:
    """A ``whsec_`` secret for the given key bytes."""
    return "whsec_" + base64.b64encode(raw).decode()
