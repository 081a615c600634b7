"""One keep-alive TCP connection to an app, as an ``asyncio.Protocol``.

It carries one exchange at a time, in one of two modes chosen by ``begin``:

* pulled (``begin(method)``): write the request, ``await head()``, then ``read_piece()`` until
  b"". The body is buffered only up to a high-water mark: past it, reading from the app pauses
  until the consumer catches up. ``read_timeout`` bounds every wait on the app.
* pushed (``begin(method, sink)``): the parsed response goes straight to a ``Sink`` as it
  arrives (head, body pieces, end or failure), with no task or future per exchange: the
  built-in proxy's fast path. The sink throttles with ``hold``/``unhold`` and learns when the
  app's socket is full through ``upstream_writable``. ``read_timeout`` bounds the app's
  silence (no byte in either direction) while the exchange runs.

A connection is ``reusable`` only after a complete response that allows keep-alive and
nothing unexpected after it.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Protocol, cast

from agent.proxy.chunked import ChunkedDecoder, ChunkedError
from agent.proxy.http1 import MAX_HEAD, Head, UpstreamError, parse_head

__all__ = ["Connection", "Sink"]

_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024


class Sink(Protocol):
    """Receives a pushed exchange. Each method is called on the loop, from the connection's
    callbacks; ``upstream_done`` and ``upstream_failed`` end the exchange (exactly one of them
    is called, once, after which the connection no longer refers to the sink)."""

    def upstream_head(self, head: Head) -> None: ...

    def upstream_whole(self, head: Head, body: bytes) -> None:
        """The whole answer at once (instead of head, body and done); ends the exchange."""

    def upstream_body(self, piece: bytes) -> None: ...

    def upstream_flush(self) -> None:
        """Called after each read that did not end the exchange."""

    def upstream_done(self) -> None: ...

    def upstream_failed(self, exc: BaseException) -> None: ...

    def upstream_writable(self, writable: bool) -> None: ...


class Connection(asyncio.Protocol):
    """One TCP connection to an app; serves one exchange at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout: float) -> None:
        self._loop = loop
        self._read_timeout = read_timeout
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0  # loop time it went back to the pool
        self._buffer = bytearray()
        self._method = "GET"
        self._head: Head | None = None
        self._head_waiter: asyncio.Future[Head] | None = None
        self.sink: Sink | None = None
        # body state
        self._pieces: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._remaining: int | None = None  # bytes left of a Content-Length body
        self._chunks: ChunkedDecoder | None = None
        self._body_done = False
        self._error: BaseException | None = None
        self._data_waiter: asyncio.Future[None] | None = None
        self._paused_reading = False
        self._held = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._paused_writing = False
        self._timer: asyncio.TimerHandle | None = None
        self._activity = 0.0
        self.received_any = False
        self.tainted = False  # sent bytes nobody asked for: never reuse

    @property
    def usable(self) -> bool:
        """Whether an idle connection may carry another exchange."""
        return (not self.closed and not self.tainted and self.transport is not None
                and not self.transport.is_closing())

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports implement asyncio.Transport
        # without deriving from it (an assert here failed every proxied request on uvloop).
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._head is not None and self._remaining is None and self._chunks is None \
                and not self._body_done:
            self._body_done = True  # a body delimited by the close
        elif not self._body_done or self._head is None:
            self._fail(UpstreamError("the app closed the connection"))
        self._wake()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(UpstreamError("the app closed the connection"))
        self._settle()

    def pause_writing(self) -> None:
        self._paused_writing = True
        if self.sink is not None:
            self.sink.upstream_writable(False)

    def resume_writing(self) -> None:
        self._paused_writing = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)
        if self.sink is not None:
            self.sink.upstream_writable(True)

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        if self.sink is not None:
            self._activity = self._loop.time()
        try:
            if self._head is not None:
                self._feed_body(data)
            elif not self._buffer and 0 <= (end := data.find(b"\r\n\r\n")) <= MAX_HEAD:
                self._take_head(data[:end], data[end + 4:])  # the usual case: no copying
                if self._head is None and self._buffer:
                    self._parse_heads()  # an interim response came first
            else:
                self._buffer += data
                self._parse_heads()
        except Exception as exc:  # a bug in a sink must not leave the exchange hanging
            self._fail(exc)
        if self.sink is not None:
            self._settle()
        else:
            self._wake()

    # -- parsing -------------------------------------------------------------------------------

    def _parse_heads(self) -> None:
        while self._head is None and self._error is None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD:
                    self._fail(UpstreamError("response head too large"))
                return
            raw = bytes(self._buffer[:end])
            rest = bytes(self._buffer[end + 4:])
            self._buffer.clear()
            self._take_head(raw, rest)

    def _take_head(self, raw: bytes, rest: bytes) -> None:
        """A complete response head ``raw`` (without its blank line), then what followed."""
        try:
            head = parse_head(raw, self._method)
        except UpstreamError as exc:
            self._fail(exc)
            return
        if head.status < 200:  # 100 Continue, 103 Early Hints: interim, skip
            self._buffer += rest
            return
        self._head = head
        self._remaining = head.length
        if head.chunked:
            self._chunks = ChunkedDecoder()
        if head.length == 0:
            self._body_done = True
        sink = self.sink
        if sink is not None:
            if head.length == len(rest):  # the whole answer in one read: the usual small one
                self._remaining = 0
                self._body_done = True
                self._detach()
                sink.upstream_whole(head, rest)
                return
            sink.upstream_head(head)
        elif self._head_waiter is not None and not self._head_waiter.done():
            self._head_waiter.set_result(head)
        if rest:
            self._feed_body(rest)

    def _feed_body(self, data: bytes) -> None:
        head = self._head
        assert head is not None
        if self._body_done:
            if data:  # bytes after a complete response: the connection cannot be trusted
                head.keep_alive = False
                self.tainted = True
            return
        if self._chunks is not None:
            try:
                pieces = self._chunks.feed(data)
            except ChunkedError as exc:
                self._fail(UpstreamError(f"malformed chunked body: {exc}"))
                return
            for piece in pieces:
                self._push(piece)
            if self._chunks.done:
                self._body_done = True
                if self._chunks.tail:
                    head.keep_alive = False
        elif self._remaining is None:
            self._push(data)
        else:
            piece = data[: self._remaining] if len(data) > self._remaining else data
            self._remaining -= len(piece)
            self._push(piece)
            if self._remaining == 0:
                self._body_done = True
                if len(data) > len(piece):
                    head.keep_alive = False

    def _push(self, piece: bytes) -> None:
        if not piece or self._error is not None:
            return
        if self.sink is not None:
            self.sink.upstream_body(piece)
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
        self._settle()

    def cancel(self) -> None:
        """Pushed mode: drop the exchange without telling the sink, and close the connection
        (the client went away)."""
        self._detach()
        self._fail(UpstreamError("the exchange was cancelled"))

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
        if self.sink is None and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _wake(self) -> None:
        if self._data_waiter is not None and not self._data_waiter.done():
            self._data_waiter.set_result(None)

    def _settle(self) -> None:
        """Pushed mode: tell the sink how the exchange ended, if it has (last thing done in
        a callback, so the sink may at once hand this connection to the next exchange)."""
        sink = self.sink
        if sink is None:
            return
        if self._error is not None:
            self._detach()
            sink.upstream_failed(self._error)
        elif self._body_done:
            self._detach()
            sink.upstream_done()
        elif self._head is not None:
            sink.upstream_flush()

    def _detach(self) -> None:
        self.sink = None  # the silence timer, if armed, lapses when it next fires
        if self._held:
            self.unhold()

    # -- the exchange --------------------------------------------------------------------------

    def _on_timeout(self) -> None:
        self._fail(TimeoutError("the app did not answer in time"))
        for waiter in (self._head_waiter, self._data_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_exception(TimeoutError("the app did not answer in time"))

    def _check_silence(self) -> None:
        """Pushed mode's timer: fail once the app has been silent for ``read_timeout``
        (time spent held back by a slow client does not count)."""
        self._timer = None
        if self.sink is None or self.closed:
            return
        now = self._loop.time()
        if self._held:
            self._activity = now
        left = self._activity + self._read_timeout - now
        if left > 0:
            self._timer = self._loop.call_at(now + left, self._check_silence)
            return
        self._fail(TimeoutError("the app did not answer in time"))
        self._settle()

    async def _wait(self, waiter: asyncio.Future[object]) -> None:
        timer = self._loop.call_later(self._read_timeout, self._on_timeout)
        try:
            await waiter
        finally:
            timer.cancel()

    def begin(self, method: str, sink: Sink | None = None, data: bytes = b"") -> None:
        """Reset for a new exchange on this (idle) connection; pushed to ``sink`` if given,
        with ``data`` (the request head, maybe more) written at once."""
        self._method = method
        self._head = None
        self._pieces.clear()
        self._buffered = 0
        self._remaining = None
        self._chunks = None
        self._body_done = False
        self.received_any = False
        self.sink = sink
        if sink is None:
            self._head_waiter = self._loop.create_future()
        else:
            self._head_waiter = None
            self._activity = self._loop.time()
            if self._timer is None:
                # One timer per connection, not per exchange: it re-arms itself while
                # exchanges keep the connection busy, and lapses once it is idle.
                self._timer = self._loop.call_at(self._activity + self._read_timeout,
                                                 self._check_silence)
            if data and self.transport is not None and not self.closed:
                self.transport.write(data)

    def send(self, data: bytes) -> None:
        """Pushed mode: write request bytes (counts as activity for the timeout)."""
        if self.transport is not None and not self.closed:
            self.transport.write(data)
            self._activity = self._loop.time()

    def hold(self) -> None:
        """Pushed mode: stop reading from the app (the client cannot take more yet)."""
        if not self._held and self.transport is not None:
            self._held = True
            self.transport.pause_reading()

    def unhold(self) -> None:
        """Undo ``hold``."""
        if self._held:
            self._held = False
            self._activity = self._loop.time()
            if self.transport is not None and not self._paused_reading:
                self.transport.resume_reading()

    async def drain(self) -> None:
        if self.closed:
            raise UpstreamError("the app closed the connection")
        if self._paused_writing:
            self._drain_waiter = self._loop.create_future()
            await self._drain_waiter

    async def head(self) -> Head:
        assert self._head_waiter is not None
        if not self._head_waiter.done():
            await self._wait(self._head_waiter)  # type: ignore[arg-type]
        return self._head_waiter.result()

    def take_complete_body(self) -> bytes | None:
        """The whole body if it has fully arrived already (the common small case), else None."""
        if not self._body_done or self._error is not None:
            return None
        body = b"".join(self._pieces)
        self._pieces.clear()
        self._buffered = 0
        return body

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
            if not self._held:
                self.transport.resume_reading()
        return piece

    @property
    def reusable(self) -> bool:
        return (not self.closed and self._error is None and self._body_done
                and self._head is not None and self._head.keep_alive and not self._pieces)
