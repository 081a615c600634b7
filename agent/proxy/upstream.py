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
  nothing was received and the request has no body.

Timeouts: ``connect_timeout`` for the TCP connection, ``read_timeout`` for each wait on the
app (its response head, then each piece of its body). Both raise ``TimeoutError``; every
other failure raises ``UpstreamError``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from aiohttp import StreamReader

__all__ = ["UpstreamError", "UpstreamNotSent", "UpstreamPool", "UpstreamResponse"]

MAX_HEAD = 64 * 1024
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024
_NO_BODY_STATUS = frozenset({204, 304})
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class UpstreamError(Exception):
    """The app's connection failed or its answer is not valid HTTP/1.1."""


class UpstreamNotSent(UpstreamError):
    """The app closed the connection without a byte of answer (so it did not act on it,
    for a request without a body, which it could not have read in full)."""


@dataclass(slots=True)
class _Head:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    keep_alive: bool
    length: int | None  # body length; None = chunked or until close
    chunked: bool


def _parse_head(raw: bytes, method: str) -> _Head:
    try:
        # Not surrogateescape: aiohttp writes response headers as strict UTF-8.
        text = raw.decode("utf-8", "replace")
        status_line, *lines = text.split("\r\n")
        version, _, rest = status_line.partition(" ")
        code, _, reason = rest.partition(" ")
        status = int(code)
    except ValueError:
        raise UpstreamError("malformed status line") from None
    if version not in ("HTTP/1.1", "HTTP/1.0") or not 100 <= status <= 999 or len(code) != 3:
        raise UpstreamError("malformed status line")
    headers: list[tuple[str, str]] = []
    lengths: set[str] = set()
    encodings: list[str] = []
    connection = ""
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or line[0] in " \t":
            raise UpstreamError("malformed header line")
        value = value.strip(" \t")
        lower = name.lower()
        if lower == "content-length":
            lengths.add(value)
        elif lower == "transfer-encoding":
            encodings += [e.strip().lower() for e in value.split(",") if e.strip()]
        elif lower == "connection":
            connection += "," + value.lower()
        headers.append((name, value))
    tokens = {t.strip() for t in connection.split(",")} if connection else set()
    keep_alive = ("close" not in tokens if version == "HTTP/1.1" else "keep-alive" in tokens)
    if method == "HEAD" or status < 200 or status in _NO_BODY_STATUS:
        return _Head(status, reason, headers, keep_alive, 0, False)
    if encodings:
        if encodings[-1] == "chunked":
            return _Head(status, reason, headers, keep_alive, None, True)
        return _Head(status, reason, headers, False, None, False)  # until close
    if lengths:
        if len(lengths) != 1 or not next(iter(lengths)).isdigit():
            raise UpstreamError("conflicting or invalid Content-Length")
        return _Head(status, reason, headers, keep_alive, int(next(iter(lengths))), False)
    return _Head(status, reason, headers, False, None, False)


class _Connection(asyncio.Protocol):
    """One TCP connection to an app; serves one exchange at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout: float) -> None:
        self._loop = loop
        self._read_timeout = read_timeout
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.idle_handle: asyncio.TimerHandle | None = None
        self._buffer = bytearray()
        self._method = "GET"
        self._head: _Head | None = None
        self._head_waiter: asyncio.Future[_Head] | None = None
        # body state
        self._pieces: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._remaining: int | None = None  # bytes left of a Content-Length body or chunk
        self._chunk_state = "size"  # size | data | data_crlf | trailers
        self._body_done = False
        self._error: BaseException | None = None
        self._data_waiter: asyncio.Future[None] | None = None
        self._paused_reading = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._paused_writing = False
        self._timer: asyncio.TimerHandle | None = None
        self.received_any = False

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.idle_handle is not None:
            self.idle_handle.cancel()
        if self._head is not None and self._remaining is None and not self._head.chunked \
                and not self._body_done:
            self._body_done = True  # a body delimited by the close
        elif not self._body_done or self._head is None:
            self._fail(UpstreamError("the app closed the connection"))
        self._wake()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(UpstreamError("the app closed the connection"))

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        if self._head is None:
            self._buffer += data
            self._parse_heads()
        else:
            self._feed_body(data)
        self._wake()

    # -- parsing -------------------------------------------------------------------------------

    def _parse_heads(self) -> None:
        while self._head is None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD:
                    self._fail(UpstreamError("response head too large"))
                return
            raw = bytes(self._buffer[:end])
            del self._buffer[:end + 4]
            try:
                head = _parse_head(raw, self._method)
            except UpstreamError as exc:
                self._fail(exc)
                return
            if head.status < 200:
                continue  # 100 Continue, 103 Early Hints: interim, skip
            self._head = head
            self._remaining = head.length
            if head.length == 0:
                self._body_done = True
            if self._head_waiter is not None and not self._head_waiter.done():
                self._head_waiter.set_result(head)
            rest = bytes(self._buffer)
            self._buffer.clear()
            if rest:
                self._feed_body(rest)

    def _feed_body(self, data: bytes) -> None:
        head = self._head
        assert head is not None
        if self._body_done:
            if data:  # bytes after a complete response: the connection cannot be trusted
                head.keep_alive = False
            return
        if head.chunked:
            self._feed_chunked(data)
        elif self._remaining is None:
            self._push(data)
        else:
            piece = data[: self._remaining]
            self._remaining -= len(piece)
            self._push(piece)
            if self._remaining == 0:
                self._body_done = True
                if len(data) > len(piece):
                    head.keep_alive = False

    def _feed_chunked(self, data: bytes) -> None:
        self._buffer += data
        while not self._body_done:
            if self._chunk_state == "data":
                assert self._remaining is not None
                if not self._buffer:
                    return
                piece = bytes(self._buffer[: self._remaining])
                del self._buffer[: len(piece)]
                self._remaining -= len(piece)
                self._push(piece)
                if self._remaining == 0:
                    self._chunk_state = "data_crlf"
                continue
            end = self._buffer.find(b"\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD:
                    self._fail(UpstreamError("chunk header too large"))
                return
            line = bytes(self._buffer[:end])
            del self._buffer[:end + 2]
            if self._chunk_state == "data_crlf":
                if line:
                    self._fail(UpstreamError("malformed chunk"))
                    return
                self._chunk_state = "size"
            elif self._chunk_state == "size":
                size_text = line.split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    self._fail(UpstreamError("malformed chunk size"))
                    return
                if size < 0 or len(size_text) > 16:
                    self._fail(UpstreamError("malformed chunk size"))
                    return
                if size == 0:
                    self._chunk_state = "trailers"
                else:
                    self._remaining = size
                    self._chunk_state = "data"
            elif not line:  # the empty line that ends the trailers
                self._body_done = True
                if self._buffer:
                    self._head.keep_alive = False  # type: ignore[union-attr]
                    self._buffer.clear()

    def _push(self, piece: bytes) -> None:
        if not piece:
            return
        self._pieces.append(piece)
        self._buffered += len(piece)
        if self._buffered > _HIGH_WATER and not self._paused_reading and self.transport:
            self._paused_reading = True
            self.transport.pause_reading()

    def abort(self, exc: BaseException) -> None:
        """End the exchange with ``exc`` and close the connection."""
        self._fail(exc)
        self._wake_with(exc)

    def _wake_with(self, exc: BaseException) -> None:
        if self._data_waiter is not None and not self._data_waiter.done():
            self._data_waiter.set_exception(exc)

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        if self._head_waiter is not None and not self._head_waiter.done():
            self._head_waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def _wake(self) -> None:
        if self._data_waiter is not None and not self._data_waiter.done():
            self._data_waiter.set_result(None)

    # -- the exchange --------------------------------------------------------------------------

    def _on_timeout(self) -> None:
        self._fail(TimeoutError("the app did not answer in time"))
        for waiter in (self._head_waiter, self._data_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_exception(TimeoutError("the app did not answer in time"))

    async def _wait(self, waiter: asyncio.Future[object]) -> None:
        self._timer = self._loop.call_later(self._read_timeout, self._on_timeout)
        try:
            await waiter
        finally:
            self._timer.cancel()

    def begin(self, method: str) -> None:
        """Reset for a new exchange on this (idle) connection."""
        self._method = method
        self._head = None
        self._head_waiter = self._loop.create_future()
        self._pieces.clear()
        self._buffered = 0
        self._remaining = None
        self._chunk_state = "size"
        self._body_done = False
        self.received_any = False

    async def drain(self) -> None:
        if self.closed:
            raise UpstreamError("the app closed the connection")
        if self._paused_writing:
            self._drain_waiter = self._loop.create_future()
            await self._drain_waiter

    async def head(self) -> _Head:
        assert self._head_waiter is not None
        if not self._head_waiter.done():
            await self._wait(self._head_waiter)  # type: ignore[arg-type]
        return self._head_waiter.result()

    async def read_piece(self) -> bytes:
        """The next piece of the body, b"" at its end."""
        while not self._pieces:
            if self._error is not None:
                raise self._error
            if self._body_done:
                return b""
            self._data_waiter = self._loop.create_future()
            await self._wait(self._data_waiter)  # type: ignore[arg-type]
        piece = self._pieces.popleft()
        self._buffered -= len(piece)
        if self._paused_reading and self._buffered < _LOW_WATER and self.transport:
            self._paused_reading = False
            self.transport.resume_reading()
        return piece

    @property
    def reusable(self) -> bool:
        return (not self.closed and self._error is None and self._body_done
                and self._head is not None and self._head.keep_alive and not self._pieces)


class UpstreamResponse:
    """The app's answer: status, headers, and the body read piece by piece.

    Use as an async context manager: leaving it returns the connection to the pool when the
    exchange is complete, and closes it otherwise.
    """

    def __init__(self, pool: UpstreamPool, key: tuple[str, int], conn: _Connection,
                 head: _Head, sender: asyncio.Task[None] | None) -> None:
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
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._open: dict[tuple[str, int], int] = {}
        self._waiters: dict[tuple[str, int], collections.deque[asyncio.Future[None]]] = {}
        self._closed = False

    async def request(self, host: str, port: int, method: str, target: str,
                      headers: Iterable[tuple[str, str]], body: StreamReader | None,
                      content_length: int | None) -> UpstreamResponse:
        """Send a request and return once the app's response head has arrived."""
        key = (host, port)
        head_bytes = _request_head(method, target, headers, body is not None and
                                   content_length is None)
        for attempt in (0, 1):
            conn = await self._acquire(key)
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
                if attempt == 0 and silent and conn.reused and method in _IDEMPOTENT:
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

    async def _acquire(self, key: tuple[str, int]) -> _Connection:
        if self._closed:
            raise UpstreamError("the proxy is stopping")
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.idle_handle is not None:
                conn.idle_handle.cancel()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                conn.reused = True
                return conn
            self._open[key] -= 1
        loop = asyncio.get_running_loop()
        if self._limit and self._open.get(key, 0) >= self._limit:
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.setdefault(key, collections.deque()).append(waiter)
            await waiter  # a connection of this app was released or closed
            return await self._acquire(key)
        self._open[key] = self._open.get(key, 0) + 1
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(loop, self._read_timeout),
                                       key[0], key[1]),
                self._connect_timeout)
        except BaseException:
            self._open[key] -= 1
            self._notify(key)
            raise
        return conn

    def release(self, key: tuple[str, int], conn: _Connection, *, reuse: bool) -> None:
        """Return a connection after an exchange (closed unless ``reuse``)."""
        if reuse and not self._closed and not conn.closed:
            conn.idle_handle = asyncio.get_running_loop().call_later(
                self._keepalive, self._expire, key, conn)
            self._idle.setdefault(key, []).append(conn)
        else:
            if conn.transport is not None:
                conn.transport.close()
            self._open[key] = self._open.get(key, 1) - 1
        self._notify(key)

    def _expire(self, key: tuple[str, int], conn: _Connection) -> None:
        idle = self._idle.get(key, [])
        if conn in idle:
            idle.remove(conn)
            self._open[key] -= 1
            if conn.transport is not None:
                conn.transport.close()
            self._notify(key)

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
        for idle in self._idle.values():
            for conn in idle:
                if conn.idle_handle is not None:
                    conn.idle_handle.cancel()
                if conn.transport is not None:
                    conn.transport.close()
        self._idle.clear()


def _request_head(method: str, target: str, headers: Iterable[tuple[str, str]],
                  chunked: bool) -> bytes:
    lines = [f"{method} {target} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in headers]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    # surrogateescape: the bytes the client sent, as aiohttp's parser decoded them.
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


async def _send_body(conn: _Connection, body: StreamReader, content_length: int | None) -> None:
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
