"""The outbound WebSocket to the control plane (``[upstream]``), kept up for as long as the
agent runs. The agent needs no inbound port: everything travels over this one connection.

On each connection: ``hello``; every task response not yet acknowledged; then, concurrently,
``update`` every ``update_interval`` (numbered), outbox events from the acknowledged cursor
(``consumer_cursors.name = 'upstream'``, moved by ``event_ack``), and the messages of the
control plane. On any failure: reconnect after an exponential backoff with jitter
(``reconnect_min_delay`` doubling up to ``reconnect_max_delay``, each wait drawn between half
and all of it; the backoff restarts after a connection that lasted a minute). Heartbeats are
WebSocket pings every ``heartbeat`` seconds; a missing pong closes the connection. TLS is
verified (against ``ca_file`` when given). The token is sent as ``Authorization: Bearer`` and
never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import ssl
import time
from typing import Any

import aiohttp
import structlog
from yarl import URL

from agent import __version__
from agent.clock import Clock
from agent.config import InstanceConfig, UpstreamConfig
from agent.events import Event, EventBus
from agent.ids import new_id
from agent.store import Database, Tx
from agent.upstream.protocol import (
    PROTOCOL_VERSION,
    EventAck,
    ProtocolError,
    TaskAck,
    TaskMessage,
    error_message,
    event_message,
    iso,
    parse_incoming,
)
from agent.upstream.providers import UpstreamProviders, collect
from agent.upstream.tasks import TaskRunner

__all__ = ["CAPABILITIES", "CURSOR_NAME", "UpstreamLink"]

log = structlog.get_logger("agent.upstream")

CURSOR_NAME = "upstream"
CAPABILITIES = ("tasks", "events", "updates")
_EVENT_WINDOW = 256  # events sent but not yet acknowledged, at most
_STABLE_AFTER = 60.0  # seconds up after which the reconnect backoff starts over
_MAX_MESSAGE = 16 * 1_048_576


def _where(url: str) -> str:
    """The URL without credentials, path or query, for logs."""
    parsed = URL(url)
    return f"{parsed.scheme}://{parsed.host}:{parsed.port}"


class UpstreamLink:
    """The control-plane connection. ``start`` it in a cleanup context; it runs until ``stop``."""

    def __init__(self, db: Database, bus: EventBus, clock: Clock, config: UpstreamConfig, *,
                 instance: InstanceConfig, base_url: str, providers: UpstreamProviders,
                 rng: random.Random | None = None) -> None:
        self._db = db
        self._bus = bus
        self._clock = clock
        self._config = config
        self._instance = instance
        self.providers = providers
        self._rng = rng or random.Random()
        self._boot_id = new_id("boot")
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._send_lock = asyncio.Lock()
        self._acked_seq = 0
        self._ack_event = asyncio.Event()
        self._update_seq = 0
        self._task: asyncio.Task[None] | None = None
        self.instance_id = ""
        self.connections = 0  # successful handshakes so far
        self.last_error: str | None = None  # why the last connection attempt failed
        self.runner = TaskRunner(db, clock, config, base_url, self.send)

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed

    async def start(self) -> None:
        """Read or create the instance id and the event cursor, then connect in the background."""
        self.instance_id, self._acked_seq = await self._db.write(self._prepare)
        await self.runner.start()
        self._task = asyncio.create_task(self._run(), name="upstream-link")

    async def stop(self) -> None:
        """Close the connection and stop running tasks."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.runner.stop()

    @staticmethod
    def _prepare(tx: Tx) -> tuple[str, int]:
        tx.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('instance_id', ?)",
                   (new_id("ins"),))
        instance_id = tx.execute("SELECT value FROM meta WHERE key = 'instance_id'").fetchone()[0]
        # A first start forwards the events from now on, not the whole history.
        tx.execute("INSERT OR IGNORE INTO consumer_cursors (name, last_seq)"
                   " SELECT ?, COALESCE(MAX(seq), 0) FROM events", (CURSOR_NAME,))
        seq = tx.execute("SELECT last_seq FROM consumer_cursors WHERE name = ?",
                         (CURSOR_NAME,)).fetchone()[0]
        return str(instance_id), int(seq)

    async def send(self, message: dict[str, Any]) -> bool:
        """Send one message if connected; False when it could not be sent now."""
        ws = self._ws
        if ws is None or ws.closed:
            return False
        try:
            async with self._send_lock:
                await ws.send_str(json.dumps(message, separators=(",", ":")))
        except (ConnectionError, aiohttp.ClientError, RuntimeError):
            return False
        return True

    def _ssl(self) -> ssl.SSLContext | None:
        if not self._config.url.startswith("wss://"):
            return None
        ca_file = self._config.ca_file
        return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)

    def _backoff(self, failures: int) -> float:
        ceiling = min(self._config.reconnect_max_delay,
                      self._config.reconnect_min_delay * 2 ** min(failures, 30))
        return self._rng.uniform(ceiling / 2, ceiling)

    async def _run(self) -> None:
        failures = 0
        headers = {"User-Agent": f"dployr-agent/{__version__}"}
        token = self._config.token.get_secret_value()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        where = _where(self._config.url)
        async with aiohttp.ClientSession(trust_env=False) as session:
            while True:
                began = time.monotonic()
                try:
                    async with session.ws_connect(
                            self._config.url, headers=headers, ssl=self._ssl() or True,
                            heartbeat=self._config.heartbeat, max_msg_size=_MAX_MESSAGE,
                            autoping=True) as ws:
                        self.connections += 1
                        log.info("upstream_connected", url=where, instance_id=self.instance_id)
                        reason = await self._serve(ws)
                        log.warning("upstream_disconnected", url=where, reason=reason,
                                    close_code=ws.close_code)
                except asyncio.CancelledError:
                    raise
                except aiohttp.WSServerHandshakeError as exc:
                    self.last_error = f"handshake refused with HTTP {exc.status}"
                    log.warning("upstream_connect_failed", url=where, status=exc.status)
                except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                    self.last_error = type(exc).__name__
                    log.warning("upstream_connect_failed", url=where, error_type=type(exc).__name__)
                failures = 0 if time.monotonic() - began >= _STABLE_AFTER else failures + 1
                delay = self._backoff(failures)
                log.info("upstream_reconnecting", delay=round(delay, 2))
                await asyncio.sleep(delay)

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> str:
        """Run one connection until it ends; return why it ended."""
        self._ws = ws
        helpers: list[asyncio.Task[None]] = []
        try:
            await self.send(self._hello())
            for response in self.runner.unacknowledged():
                await self.send(response)
            helpers = [asyncio.create_task(self._pump_events(), name="upstream-events"),
                       asyncio.create_task(self._send_updates(), name="upstream-updates")]
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await self._receive(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await self.send(error_message("unsupported", "binary frames are not used"))
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    return f"error ({type(ws.exception()).__name__})"
            return "closed"
        finally:
            self._ws = None
            for helper in helpers:
                helper.cancel()
            for helper in helpers:
                with contextlib.suppress(asyncio.CancelledError):
                    await helper
            if not ws.closed:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2):  # an unresponsive peer must not stall a stop
                        await ws.close()

    def _hello(self) -> dict[str, Any]:
        return {"type": "hello", "protocol": PROTOCOL_VERSION, "instance_id": self.instance_id,
                "boot_id": self._boot_id, "name": self._instance.name,
                "labels": dict(self._instance.labels), "version": __version__,
                "capabilities": list(CAPABILITIES), "sent_at": iso(self._clock.time()),
                "last_event_seq": self._acked_seq}

    async def _receive(self, data: str) -> None:
        try:
            message = parse_incoming(json.loads(data))
        except ValueError:
            await self.send(error_message("invalid_message", "not valid JSON"))
            return
        except ProtocolError as exc:
            await self.send(error_message("invalid_message", str(exc), exc.ref))
            return
        if isinstance(message, TaskMessage):
            self.runner.accept(message)
        elif isinstance(message, TaskAck):
            await self.runner.acknowledge(message.ids)
        elif isinstance(message, EventAck):
            await self._acknowledge_events(message.seq)

    async def _acknowledge_events(self, seq: int) -> None:
        if seq <= self._acked_seq:
            return
        self._acked_seq = seq
        await self._db.write(lambda tx: tx.execute(
            "UPDATE consumer_cursors SET last_seq = ? WHERE name = ? AND last_seq < ?",
            (seq, CURSOR_NAME, seq)))
        self._ack_event.set()

    async def _send_updates(self) -> None:
        while True:
            parts = await collect(self.providers)
            self._update_seq += 1
            await self.send({"type": "update", "seq": self._update_seq,
                             "sent_at": iso(self._clock.time()), **parts})
            await asyncio.sleep(self._config.update_interval)

    async def _pump_events(self) -> None:
        """Send outbox events after the acknowledged cursor, at most a window ahead of it."""
        sent = self._acked_seq
        subscription = self._bus.subscribe(maxsize=1)
        try:
            while True:
                self._ack_event.clear()
                room = _EVENT_WINDOW - (sent - self._acked_seq)
                rows = self._db.query("SELECT seq, id, type, created_at, data FROM events"
                                      " WHERE seq > ? ORDER BY seq LIMIT ?",
                                      (sent, max(room, 0))) if room > 0 else []
                for row in rows:
                    event = Event(seq=row["seq"], id=row["id"], type=row["type"],
                                  timestamp=row["created_at"], data=json.loads(row["data"]))
                    if not await self.send(event_message(event)):
                        return
                    sent = event.seq
                waits = [asyncio.ensure_future(subscription.get()),
                         asyncio.ensure_future(self._ack_event.wait())]
                try:
                    await asyncio.wait(waits, timeout=5.0, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiter in waits:
                        waiter.cancel()
        finally:
            subscription.close()
