"""One request forwarded by the built-in proxy's fast path, pushed both ways.

An ``Exchange`` takes a pooled connection to the app (or connects, in a task, when none is
idle), writes the request head, then relays as things happen, with no task per request:

* the client's body pieces go upstream as they arrive (re-chunked when the client chunked
  them); until a connection is ready they are held, and past ``_PENDING_LIMIT`` the client's
  reading pauses; while the app's socket is full, the client's reading pauses too;
* the app's response goes to the client as it is parsed (``Connection`` in pushed mode), head
  and first piece in one write; while the client's socket is full, reading from the app
  pauses (``hold``);
* failures before the response started are answered in the API's envelope: 504 when the app
  is silent for ``read_timeout`` or cannot be reached within ``connect_timeout``, else 502.
  A request refused by its target, or an idempotent body-less one the app closed unanswered,
  goes once to the service's current target if that changed (a redeploy raced the lookup);
  a body-less idempotent request that met a stale pooled connection is tried once more.
  After the response started, a failure cuts the client connection (a truncated body is
  then visible as such).

The connection goes back to the pool only after a complete response on which the whole
request body was sent.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import structlog

from agent.errors import AgentError, BadGateway, GatewayTimeout, where
from agent.proxy.chunked import encode_chunk
from agent.proxy.connection import Connection
from agent.proxy.http1 import IDEMPOTENT, Head, UpstreamError
from agent.proxy.locator import ServiceLocator, Upstream
from agent.proxy.messages import OutFraming, error_response, response_head
from agent.proxy.routes import Route
from agent.proxy.upstream import UpstreamPool

__all__ = ["READ_PENDING", "READ_UPSTREAM", "Client", "Context", "Exchange"]

log = structlog.get_logger("agent.proxy")

_PENDING_LIMIT = 256 * 1024
_LAST_CHUNK = b"0\r\n\r\n"
#: Reasons the client's reading is paused for (bits; see ``Client.block_reading``).
READ_UPSTREAM = 1  # the app's socket is full
READ_PENDING = 2  # body held while connecting


class Context(Protocol):
    """What exchanges share: the pool, the locator, and whether the proxy is stopping."""

    pool: UpstreamPool
    locator: ServiceLocator
    closing: bool


class Client(Protocol):
    """The client connection an exchange answers on."""

    transport: asyncio.Transport
    writing_paused: bool

    def block_reading(self, reason: int) -> None: ...

    def unblock_reading(self, reason: int) -> None: ...

    def exchange_done(self, keep_alive: bool) -> None:
        """The answer is complete; the connection stays open if ``keep_alive``."""

    def exchange_broken(self) -> None:
        """The answer was cut short after it started: the connection must close."""




class Exchange:
    """One request/response between a client connection and an app (see the module doc)."""

    __slots__ = ("_body_complete", "_body_sent", "_chunked", "_client", "_conn", "_ctx",
                 "_finished", "_framing", "_has_body", "_head", "_http10", "_keep_alive", "_key",
                 "_method", "_out_head", "_pending", "_pending_size", "_route", "_stale_retried",
                 "_target", "_target_retried", "_task")

    def __init__(self, ctx: Context, client: Client, route: Route, target: Upstream,
                 method: str, head: bytes, *, has_body: bool, chunked: bool, http10: bool,
                 keep_alive: bool) -> None:
        """``head``: the request head for the app, framing included; ``chunked``: the body
        is re-encoded in chunks; ``keep_alive``: the client allows keep-alive."""
        self._ctx = ctx
        self._client = client
        self._method = method
        self._head = head
        self._has_body = has_body
        self._chunked = chunked
        self._http10 = http10
        self._keep_alive = keep_alive
        self._route = route
        self._target = target
        self._key = (target.host, target.port)
        self._conn: Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._body_complete = not has_body
        self._body_sent = False
        self._framing: OutFraming | None = None
        self._out_head = b""  # the response head, written with the first piece of body
        self._finished = False
        self._stale_retried = False
        self._target_retried = False

    # -- starting ------------------------------------------------------------------------------

    def start(self) -> None:
        """Send the request on an idle pooled connection now, or connect first."""
        conn = self._ctx.pool.take_idle(self._key)
        if conn is not None:
            self._attach(conn)
        else:
            self._task = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        try:
            conn = await self._ctx.pool.acquire(self._key)
        except TimeoutError:
            self._task = None
            self._answer(GatewayTimeout())
            return
        except (OSError, UpstreamError) as exc:
            self._task = None
            log.warning("proxy_upstream_failed", upstream=self._target.authority,
                        error_type=type(exc).__name__)
            if isinstance(exc, ConnectionRefusedError):
                self._retry_elsewhere()  # nothing was sent, body included
            else:
                self._answer(BadGateway())
            return
        except Exception as exc:  # a bug: answered, logged with its type and place only
            self._task = None
            log.error("proxy_request_failed", error_type=type(exc).__name__, where=where(exc))
            self._answer(AgentError())
            return
        self._task = None
        if self._finished:  # the client left while connecting: the connection is unused
            self._ctx.pool.release(self._key, conn, reuse=True)
            return
        self._attach(conn)

    def _attach(self, conn: Connection) -> None:
        self._conn = conn
        data = self._head
        if self._pending:
            data += b"".join(self._pending)
            self._pending.clear()
            self._pending_size = 0
            self._body_sent = True
            self._client.unblock_reading(READ_PENDING)
        conn.begin(self._method, self, data)
        if self._client.writing_paused:
            conn.hold()

    # -- the client's side ---------------------------------------------------------------------

    def request_body(self, piece: bytes) -> None:
        """A piece of the client's body (not empty)."""
        self._send(encode_chunk(piece) if self._chunked else piece)

    def request_end(self) -> None:
        """The client's body is complete."""
        self._body_complete = True
        if self._chunked:
            self._send(_LAST_CHUNK)

    def _send(self, data: bytes) -> None:
        if self._finished:
            return
        if self._conn is not None:
            self._conn.send(data)
            self._body_sent = True
            return
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size > _PENDING_LIMIT:
            self._client.block_reading(READ_PENDING)

    def client_writable(self, writable: bool) -> None:
        """The client's socket filled up (False) or drained (True)."""
        if self._conn is not None:
            if writable:
                self._conn.unhold()
            else:
                self._conn.hold()

    @property
    def answered(self) -> bool:
        """Whether the answer has started (or is complete): nothing else may be written."""
        return self._framing is not None or self._finished

    def abort(self) -> None:
        """The client went away: drop everything."""
        self._finished = True
        if self._task is not None:
            self._task.cancel()
            self._task = None
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.cancel()
            self._ctx.pool.release(self._key, conn, reuse=False)

    # -- the app's side (Sink) -----------------------------------------------------------------

    def upstream_head(self, head: Head) -> None:
        keep_alive = self._keep_alive and not self._ctx.closing
        self._out_head, self._framing = response_head(head, http10=self._http10,
                                                      keep_alive=keep_alive)

    def upstream_whole(self, head: Head, body: bytes) -> None:
        conn, self._conn = self._conn, None
        assert conn is not None
        keep_alive = self._keep_alive and not self._ctx.closing
        out, framing = response_head(head, http10=self._http10, keep_alive=keep_alive)
        self._client.transport.write(out + body if body else out)
        self._ctx.pool.release(self._key, conn, reuse=conn.reusable and self._body_complete)
        self._finish(framing.keep_alive)

    def upstream_body(self, piece: bytes) -> None:
        assert self._framing is not None
        data = encode_chunk(piece) if self._framing.chunked else piece
        if self._out_head:
            data = self._out_head + data
            self._out_head = b""
        self._client.transport.write(data)

    def upstream_flush(self) -> None:
        """The app paused: what is held back (a head without body yet) goes out now."""
        if self._out_head:
            self._client.transport.write(self._out_head)
            self._out_head = b""

    def upstream_writable(self, writable: bool) -> None:
        if writable:
            self._client.unblock_reading(READ_UPSTREAM)
        else:
            self._client.block_reading(READ_UPSTREAM)

    def upstream_done(self) -> None:
        conn, self._conn = self._conn, None
        framing = self._framing
        assert conn is not None and framing is not None
        tail = _LAST_CHUNK if framing.chunked else b""
        if self._out_head or tail:
            self._client.transport.write(self._out_head + tail)
            self._out_head = b""
        self._ctx.pool.release(self._key, conn, reuse=conn.reusable and self._body_complete)
        self._finish(framing.keep_alive)

    def upstream_failed(self, exc: BaseException) -> None:
        conn, self._conn = self._conn, None
        assert conn is not None
        self._ctx.pool.release(self._key, conn, reuse=False)
        if not isinstance(exc, (UpstreamError, OSError, TimeoutError)):
            log.error("proxy_request_failed", error_type=type(exc).__name__, where=where(exc))
        if self._finished:
            return
        if self._framing is not None:
            # Headers are gone already: cut the connection so the client sees a truncated
            # body instead of a complete-looking one.
            log.warning("proxy_upstream_body_failed", upstream=self._target.authority,
                        error_type=type(exc).__name__)
            self._finished = True
            self._client.exchange_broken()
            return
        if isinstance(exc, TimeoutError):
            self._answer(GatewayTimeout())
            return
        log.warning("proxy_upstream_failed", upstream=self._target.authority,
                    error_type=type(exc).__name__)
        # Closed without a byte of answer, before any body: the app did not act on it (as
        # HTTP clients reason when they retry).
        silent = not conn.received_any and not self._has_body
        idempotent = self._method in IDEMPOTENT
        if silent and idempotent and conn.reused and not self._stale_retried:
            self._stale_retried = True  # closed by the app while idle in the pool
            self.start()
        elif silent and idempotent:
            self._retry_elsewhere()
        else:
            self._answer(BadGateway())

    # -- ending --------------------------------------------------------------------------------

    def _retry_elsewhere(self) -> None:
        """Nothing was sent: the service's current target gets it if that has changed (the
        old release stopped between the lookup and the connection); else 502."""
        if not self._target_retried and not self._body_sent:
            self._target_retried = True
            route = self._route
            current = self._ctx.locator.target(route.service_id, route.port)
            if isinstance(current, Upstream) and current != self._target:
                self._target = current
                self._key = (current.host, current.port)
                self.start()
                return
        self._answer(BadGateway())

    def _answer(self, error: AgentError) -> None:
        if self._finished:
            return
        keep_alive = self._keep_alive and not self._ctx.closing
        self._client.transport.write(error_response(
            error, head_only=self._method == "HEAD", keep_alive=keep_alive))
        self._finish(keep_alive)

    def _finish(self, keep_alive: bool) -> None:
        self._finished = True
        self._pending.clear()
        self._client.unblock_reading(READ_UPSTREAM | READ_PENDING)
        self._client.exchange_done(keep_alive)
