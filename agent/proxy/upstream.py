"""A lean HTTP/1.1 client for the built-in proxy: pooled keep-alive connections to the apps.

aiohttp's ClientSession spends about three quarters of a proxied request's CPU time (timers,
tracing hooks, cookie and redirect machinery the proxy does not use). This client does only
what a reverse proxy needs, on an ``asyncio.Protocol``:

* the request head is written as given, the body streamed from the client as it arrives
  (framed by its Content-Length, or chunked when the length is unknown);
* the response head is parsed and the body framed as RFC 9112 section 6.3 says (no body for
  HEAD, 1xx, 204 and 304; chunked; Content-Length; else until the connection closes);
  1xx interim responses are skipped; conflicting lengths, oversized or malformed heads are
  errors (the proxy answers 502);
* the body is handed out in pieces with flow control both ways (reading from the app pauses
  while the client is slower, writing waits for the socket to drain);
* a connection goes back to the pool only after a complete response with keep-alive; a stale
  pooled connection (closed by the app while idle) is retried once on a fresh one when
  nothing was received and the request is idempotent and has no body.

Timeouts: ``connect_timeout`` for the TCP connection, ``read_timeout`` for each wait on the
app (its response head, then each piece of its body). Both raise ``TimeoutError``; every
other failure raises ``UpstreamError``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Iterable

from aiohttp import StreamReader

from agent.proxy.connection import Connection
from agent.proxy.http1 import IDEMPOTENT, Head, UpstreamError, UpstreamNotSent, request_head

__all__ = ["UpstreamError", "UpstreamNotSent", "UpstreamPool", "UpstreamResponse"]



class UpstreamResponse:
    """The app's answer: status, headers, and the body read piece by piece.

    Use as an async context manager: leaving it returns the connection to the pool when the
    exchange is complete, and closes it otherwise.
    """

    def __init__(self, pool: UpstreamPool, key: tuple[str, int], conn: Connection,
                 head: Head, sender: asyncio.Task[None] | None) -> None:
        self._pool = pool
        self._key = key
        self._conn = conn
        self._sender = sender
        self.status = head.status
        self.reason = head.reason
        self.headers = head.headers
        self.content_length = head.length if not head.chunked else None
        self.has_body = head.length != 0

    async def read(self) -> bytes:
        """The whole body (for small responses)."""
        body = self._conn.take_complete_body()
        if body is not None:
            return body
        return b"".join([piece async for piece in self.iter_pieces()])

    async def iter_pieces(self) -> AsyncIterator[bytes]:
        while piece := await self._conn.read_piece():
            yield piece

    async def __aenter__(self) -> UpstreamResponse:
        return self

    async def __aexit__(self, *exc: object) -> None:
        complete = True
        sender = self._sender
        if sender is not None:
            if not sender.done():  # the app answered before taking the whole body
                sender.cancel()
                complete = False
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
            if sender.cancelled() or sender.exception() is not None:
                complete = False
        self._pool.release(self._key, self._conn, reuse=complete and self._conn.reusable)


class UpstreamPool:
    """Keep-alive connections per app address, at most ``limit`` at once (0: no limit)."""

    def __init__(self, *, connect_timeout: float, read_timeout: float, limit: int,
                 keepalive_timeout: float) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._limit = limit
        self._keepalive = keepalive_timeout
        self._idle: dict[tuple[str, int], list[Connection]] = {}
        self._open: dict[tuple[str, int], int] = {}
        self._waiters: dict[tuple[str, int], collections.deque[asyncio.Future[None]]] = {}
        self._closed = False
        self._sweeper: asyncio.TimerHandle | None = None
        self._running: asyncio.AbstractEventLoop | None = None

    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        # Looked up once: asyncio.get_running_loop() makes a getpid() system call each time
        # (Python 3.11), which showed in the proxy's profile.
        if self._running is None:
            self._running = asyncio.get_running_loop()
        return self._running

    async def request(self, host: str, port: int, method: str, target: str,
                      headers: Iterable[tuple[str, str]], body: StreamReader | None,
                      content_length: int | None) -> UpstreamResponse:
        """Send a request and return once the app's response head has arrived."""
        key = (host, port)
        head_bytes = request_head(method, target, headers, body is not None and
                                   content_length is None)
        for attempt in (0, 1):
            conn = await self.acquire(key)
            conn.begin(method)
            sender: asyncio.Task[None] | None = None
            try:
                assert conn.transport is not None
                conn.transport.write(head_bytes)
                if body is not None:
                    sender = asyncio.create_task(_send_body(conn, body, content_length))
                head = await conn.head()
                return UpstreamResponse(self, key, conn, head, sender)
            except UpstreamError:
                if sender is not None:
                    sender.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await sender
                self.release(key, conn, reuse=False)
                silent = not conn.received_any and body is None
                if attempt == 0 and silent and conn.reused and method in IDEMPOTENT:
                    continue  # closed by the app while idle in the pool: try a fresh one
                if silent:
                    raise UpstreamNotSent("the app closed the connection unanswered") from None
                raise
            except BaseException:
                if sender is not None:
                    sender.cancel()
                self.release(key, conn, reuse=False)
                raise
        raise UpstreamError("unreachable")

    def take_idle(self, key: tuple[str, int]) -> Connection | None:
        """A pooled connection to ``key`` that is still fresh and usable, if there is one
        (without waiting: the proxy's fast path)."""
        idle = self._idle.get(key)
        if not idle:
            return None
        now = (self._running or self._loop).time()
        while idle:
            conn = idle.pop()  # the most recently used: the likeliest to be alive
            transport = conn.transport
            if (now - conn.idle_since < self._keepalive and not conn.closed and not conn.tainted
                    and transport is not None and not transport.is_closing()):  # conn.usable
                conn.reused = True
                return conn
            self._discard(key, conn)
        return None

    async def acquire(self, key: tuple[str, int]) -> Connection:
        """A connection to ``key``: a pooled one, else a new one once fewer than ``limit``
        are open (waiting for one to be released). Raises ``TimeoutError`` when the connection
        cannot be made within ``connect_timeout``, ``OSError`` when it is refused, and
        ``UpstreamError`` once the pool is closed."""
        if self._closed:
            raise UpstreamError("the proxy is stopping")
        loop = self._loop
        idle = self.take_idle(key)
        if idle is not None:
            return idle
        if self._limit and self._open.get(key, 0) >= self._limit:
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.setdefault(key, collections.deque()).append(waiter)
            try:
                await waiter  # a connection of this app was released or closed
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._notify(key)  # woken, then cancelled: the slot goes to the next one
                raise
            return await self.acquire(key)
        self._open[key] = self._open.get(key, 0) + 1
        try:
            # asyncio.timeout, not wait_for: on 3.11 a wait_for cancelled just as the
            # connection is made drops it, and its socket stays open with nobody to close it.
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: Connection(loop, self._read_timeout), key[0], key[1])
        except BaseException:
            self._open[key] -= 1
            self._notify(key)
            raise
        return conn

    def release(self, key: tuple[str, int], conn: Connection, *, reuse: bool) -> None:
        """Return a connection after an exchange (closed unless ``reuse``)."""
        if reuse and not self._closed and not conn.closed:
            loop = self._running or self._loop
            conn.idle_since = loop.time()
            idle = self._idle.get(key)
            if idle is None:
                idle = self._idle[key] = []
            idle.append(conn)
            if self._sweeper is None:
                self._sweeper = loop.call_later(self._keepalive, self._sweep)
            if self._waiters:
                self._notify(key)
        else:
            self._discard(key, conn)

    def _discard(self, key: tuple[str, int], conn: Connection) -> None:
        if conn.transport is not None:
            conn.transport.close()
        self._open[key] = self._open.get(key, 1) - 1
        self._notify(key)

    def _sweep(self) -> None:
        """Close connections idle longer than the keep-alive timeout (one timer per pool,
        not one per request)."""
        self._sweeper = None
        now = self._loop.time()
        for key, idle in list(self._idle.items()):
            stale = [c for c in idle if now - c.idle_since >= self._keepalive]
            if stale:
                self._idle[key] = [c for c in idle if now - c.idle_since < self._keepalive]
                for conn in stale:
                    self._discard(key, conn)
        if any(self._idle.values()) and not self._closed:
            self._sweeper = self._loop.call_later(self._keepalive, self._sweep)

    def _notify(self, key: tuple[str, int]) -> None:
        waiters = self._waiters.get(key)
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        """Close every idle connection; connections in use close when released."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for conn in idle:
                if conn.transport is not None:
                    conn.transport.close()
        self._idle.clear()


async def _send_body(conn: Connection, body: StreamReader, content_length: int | None) -> None:
    """Stream the client's body to the app as it arrives.

    If the client's side fails, the app's connection is closed, which ends the exchange.
    """
    transport = conn.transport
    assert transport is not None
    chunked = content_length is None
    try:
        while True:
            piece = await body.readany()
            if not piece:
                break
            transport.write(b"%x\r\n%b\r\n" % (len(piece), piece) if chunked else piece)
            await conn.drain()
        if chunked:
            transport.write(b"0\r\n\r\n")
    except asyncio.CancelledError:
        raise
    except Exception:
        conn.abort(UpstreamError("the client's request body failed"))
        raise
