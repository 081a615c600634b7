"""One keep-alive TCP connection to an app, as an ``asyncio.Protocol``.

It carries one exchange at a time: ``begin``, write the request, ``head()``, then
``read_piece()`` until b"". The body is buffered only up to a high-water mark: past it,
reading from the app pauses until the consumer catches up. ``read_timeout`` bounds every
wait on the app. A connection is ``reusable`` only after a complete response that allows
keep-alive and nothing unexpected after it.
"""

from __future__ import annotations

import asyncio
import collections
from typing import cast

from agent.proxy.http1 import MAX_HEAD, Head, UpstreamError, parse_head

__all__ = ["Connection"]

_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024


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
                head = parse_head(raw, self._method)
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
                self.tainted = True
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
            self.transport.resume_reading()
        return piece

    @property
    def reusable(self) -> bool:
        return (not self.closed and self._error is None and self._body_done
                and self._head is not None and self._head.keep_alive and not self._pieces)
