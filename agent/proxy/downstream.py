"""The built-in proxy's client side: an HTTP/1.1 server ``asyncio.Protocol`` of its own.

Per connection, requests are taken one at a time: the head is cut at its blank line and
parsed by ``httptools`` (llhttp: strict about framing, so a request's length can only be read
one way); the body is framed by this module (Content-Length, or chunked via
``ChunkedDecoder``), so exactly the bytes of one message are consumed. Bytes after it (a
pipelined request) wait in a buffer until the answer is complete; past ``_PIPELINE_LIMIT``
the connection stops reading. Then:

* no route for the Host and path: 404; the service has nothing to serve: 502; a malformed
  request: 400; a head over ``MAX_REQUEST_HEAD``: 431 (both close the connection), all in
  the API's error envelope;
* a static site or a WebSocket upgrade: the connection, with the head exactly as received and
  everything after it, is handed to the aiohttp side (``handoff``), which keeps it;
* else an ``Exchange`` forwards the request to the service's current target.

Keep-alive follows the client (HTTP/1.1 unless ``Connection: close``; HTTP/1.0 with
``keep-alive``). A client that half-closes after its request still gets the answer, then the
connection closes. Connections idle for ``idle_timeout`` (or that take that long to send a
head) are closed by a sweep.
"""

from __future__ import annotations

import asyncio
from typing import cast

import httptools
import structlog

from agent.errors import (
    AgentError,
    BadGateway,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    where,
)
from agent.proxy.chunked import ChunkedDecoder, ChunkedError
from agent.proxy.core import ProxyCore
from agent.proxy.exchange import Exchange
from agent.proxy.locator import Upstream
from agent.proxy.messages import (
    BadTarget,
    HeadTooLarge,
    error_response,
    split_target,
    upstream_request_head,
)
from agent.proxy.names import host_of

__all__ = ["MAX_REQUEST_HEAD", "ClientConnection"]

log = structlog.get_logger("agent.proxy")

MAX_REQUEST_HEAD = 32 * 1024
_PIPELINE_LIMIT = 256 * 1024
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_READ_PIPELINE = 4  # a reason to pause reading (see exchange.READ_*)
_HEAD, _BODY, _WAIT, _CLOSED, _HANDED = range(5)
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")}
# Lengths of the request fields read here: others are skipped without lower-casing them.
_NOTED_LENGTHS = frozenset(map(len, ("host", "content-length", "transfer-encoding", "expect",
                                     "upgrade", "connection", "x-forwarded-for",
                                     "x-forwarded-host", "x-forwarded-proto")))



class ClientConnection(asyncio.Protocol):
    """One client connection (see the module doc)."""

    def __init__(self, core: ProxyCore) -> None:
        self._core = core
        self._loop = asyncio.get_running_loop()
        self.transport = cast(asyncio.Transport, None)
        self._peer: str | None = None
        self._parser: httptools.HttpRequestParser | None = None
        self._buffer = b""
        self._state = _HEAD
        self._exchange: Exchange | None = None
        self._body_left = 0
        self._chunks: ChunkedDecoder | None = None
        self._close_after_body = False
        self._blocks = 0
        self.writing_paused = False
        self._eof = False
        self._parsing = False
        self._since = 0.0
        # filled by the parser's callbacks
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._head_done = False
        self._keep_alive = False

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) else None
        self._since = self._loop.time()
        self._core.opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = _CLOSED
        if self._exchange is not None:
            exchange, self._exchange = self._exchange, None
            exchange.abort()
        self._forget()

    def _forget(self) -> None:
        self._core.closed(self)

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self._exchange is not None:
            self._exchange.client_writable(False)

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self._exchange is not None:
            self._exchange.client_writable(True)

    def eof_received(self) -> bool:
        """Half-close: complete requests are still answered (then the connection closes);
        a partial one is dropped."""
        self._eof = True
        if self._state == _HEAD and self._exchange is None and self._buffer:
            self._next_requests()  # closes once no complete request is left
        return self._state == _WAIT

    def data_received(self, data: bytes) -> None:
        try:
            state = self._state
            if state == _BODY:
                self._feed_body(data)
            elif state == _HEAD:
                self._buffer = self._buffer + data if self._buffer else data
                self._parse_heads()
            elif state == _WAIT:
                self._buffer += data
                if len(self._buffer) > _PIPELINE_LIMIT:
                    self.block_reading(_READ_PIPELINE)
        except Exception as exc:
            self._crashed(exc)

    def _crashed(self, exc: Exception) -> None:
        """A bug: logged with the type and place only (the text may hold request data)."""
        log.error("proxy_request_failed", error_type=type(exc).__name__, where=where(exc))
        if self._exchange is not None:
            exchange, self._exchange = self._exchange, None
            exchange.abort()
            self._close()
        else:
            self._reject(AgentError())

    # -- reading requests ----------------------------------------------------------------------

    def _next_requests(self) -> None:
        """Take up buffered (pipelined) requests after an answer."""
        try:
            self._parse_heads()
        except Exception as exc:
            self._crashed(exc)

    def _parse_heads(self) -> None:
        """Read the requests in the buffer, one at a time (see the module doc)."""
        if self._parsing:
            return  # re-entered through a drained body: the outer loop goes on
        self._parsing = True
        try:
            self._parse_loop()
        finally:
            self._parsing = False

    def _parse_loop(self) -> None:
        while self._state == _HEAD and self._exchange is None:
            buf = self._buffer
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_REQUEST_HEAD:
                    self._reject(HeadTooLarge())
                    return
                if b"\n\n" not in buf:  # else bare LF line ends: let the parser refuse them
                    if self._eof:
                        self._close()
                    return
                end = len(buf) - 4
            elif end + 4 > MAX_REQUEST_HEAD:
                self._reject(HeadTooLarge())
                return
            head = buf[:end + 4]
            self._buffer = buf[end + 4:]
            parser = self._parser
            if parser is None:
                parser = self._parser = httptools.HttpRequestParser(self)
            self._url = b""
            self._headers = []
            self._head_done = False
            try:
                parser.feed_data(head)
            except httptools.HttpParserUpgrade:
                self._parser = None  # llhttp stops at an upgrade: a fresh one for what follows
            except httptools.HttpParserError:
                self._reject(InvalidRequest("Malformed HTTP request"))
                return
            if self._head_done:
                self._request(parser, head)

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        self._head_done = True
        # Now: llhttp forgets what the Connection header said once the message is complete.
        self._keep_alive = self._parser is not None and self._parser.should_keep_alive()

    def _request(self, parser: httptools.HttpRequestParser, raw_head: bytes) -> None:
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method) or raw_method.decode("ascii", "replace")
        http10 = parser.get_http_version() == "1.0"
        keep_alive = self._keep_alive and not self._core.closing
        host: str | None = None
        length = 0
        chunked = expect = prior = False
        upgrade = connection = ""
        for name, value in self._headers:
            if len(name) not in _NOTED_LENGTHS:
                continue
            lower = name.lower()
            if lower.startswith("x-forwarded-"):
                prior = True
            elif lower == "host":
                if host is not None:
                    return self._reject(InvalidRequest("More than one Host header"))
                host = value
            elif lower == "content-length":
                length = int(value)  # llhttp checked it is one number
            elif lower == "transfer-encoding":
                chunked = True  # llhttp checked that chunked is the final coding
            elif lower == "expect":
                expect = value.strip().lower() == "100-continue"
            elif lower == "upgrade":
                upgrade = value.strip().lower()
            elif lower == "connection":
                connection += "," + value.lower()
        if host is None and not http10:
            return self._reject(InvalidRequest("An HTTP/1.1 request needs a Host header"))
        if method == "CONNECT":
            return self._reject(MethodNotAllowed("CONNECT is not supported"))
        try:
            target, path = split_target(self._url)
        except BadTarget as exc:
            return self._reject(InvalidRequest(f"Malformed request target: {exc}"))
        has_body = chunked or length > 0
        if has_body:
            self._parser = None  # llhttp would read the body: the next head gets a fresh one
        core = self._core
        route = core.table.match(host_of(host) if host else "", path)
        if route is None:
            return self._answer(NotFound("No route for this host and path"), method, keep_alive,
                                has_body, length, chunked)
        where = core.locator.target(route.service_id, route.port)
        if where is None:
            return self._answer(BadGateway("The service is not running"), method, keep_alive,
                                has_body, length, chunked)
        if (upgrade == "websocket" and method == "GET"
                and "upgrade" in {t.strip() for t in connection.split(",")}):
            return self._handoff(raw_head)
        if not isinstance(where, Upstream):
            return self._handoff(raw_head)  # a static site
        head = upstream_request_head(
            raw_head, self._headers, method=method, origin_form=self._url[:1] == b"/",
            target=target, http10=http10, host=host, authority=where.authority,
            chunked=chunked, connection=connection, prior=prior, peer=self._peer,
            trusted=core.trusted)
        if expect and has_body and not http10:
            self.transport.write(_CONTINUE)
        exchange = self._exchange = Exchange(
            core, self, route, where, method, head,
            has_body=has_body, chunked=chunked, http10=http10, keep_alive=keep_alive)
        if has_body:
            self._state = _BODY
            self._chunks = ChunkedDecoder() if chunked else None
            self._body_left = length
            exchange.start()
            if self._buffer:
                data, self._buffer = self._buffer, b""
                self._feed_body(data)
        else:
            self._state = _WAIT
            exchange.start()

    def _start_body(self, has_body: bool, length: int, chunked: bool) -> None:
        if not has_body:
            self._state = _WAIT if self._exchange is not None else _HEAD
            return
        self._state = _BODY
        self._chunks = ChunkedDecoder() if chunked else None
        self._body_left = length

    def _feed_body(self, data: bytes) -> None:
        exchange = self._exchange
        if self._chunks is not None:
            try:
                pieces = self._chunks.feed(data)
            except ChunkedError:
                if exchange is not None and exchange.answered:
                    self._exchange = None
                    exchange.abort()
                    return self._close()
                if exchange is not None:
                    self._exchange = None
                    exchange.abort()
                return self._reject(InvalidRequest("Malformed chunked request body"))
            if exchange is not None:
                for piece in pieces:
                    exchange.request_body(piece)
            if self._chunks.done:
                self._body_done(self._chunks.tail)
            return
        left = self._body_left
        if len(data) > left:
            piece, rest = data[:left], data[left:]
        else:
            piece, rest = data, b""
        self._body_left = left - len(piece)
        if piece and exchange is not None:
            exchange.request_body(piece)
        if not self._body_left:
            self._body_done(rest)

    def _body_done(self, rest: bytes) -> None:
        self._chunks = None
        self._buffer = rest
        if self._exchange is not None:
            self._state = _WAIT
            self._exchange.request_end()
            if len(self._buffer) > _PIPELINE_LIMIT:
                self.block_reading(_READ_PIPELINE)
            return
        self._state = _HEAD  # the answer went out already; this body was only drained
        if self._close_after_body:
            self._close()
        else:
            self._parse_heads()

    # -- answering -----------------------------------------------------------------------------

    def _answer(self, error: AgentError, method: str, keep_alive: bool, has_body: bool,
                length: int, chunked: bool) -> None:
        """The proxy's own answer to a well-formed request; its body, if any, is drained."""
        self.transport.write(error_response(error, head_only=method == "HEAD",
                                            keep_alive=keep_alive))
        self._since = self._loop.time()
        self._close_after_body = not keep_alive
        self._start_body(has_body, length, chunked)
        if not keep_alive and not has_body:
            self._close()
        elif has_body and self._buffer:
            data, self._buffer = self._buffer, b""
            self._feed_body(data)

    def _reject(self, error: AgentError) -> None:
        """Answer a request that cannot be read further, then close."""
        if self._state in (_CLOSED, _HANDED):
            return
        if self._exchange is None:
            self.transport.write(error_response(error, head_only=False, keep_alive=False))
        self._close()

    def _handoff(self, raw_head: bytes) -> None:
        data, self._buffer = raw_head + self._buffer, b""
        self._state = _HANDED
        self._forget()
        if self._blocks:
            self._blocks = 0
            self.transport.resume_reading()
        self._core.handoff(self.transport, data)

    def exchange_done(self, keep_alive: bool) -> None:
        self._exchange = None
        self._since = self._loop.time()
        keep_alive = keep_alive and not self._core.closing
        if self._state == _BODY:  # answered before the body was all here: drain it
            self._close_after_body = not keep_alive
            return
        if not keep_alive:
            self._close()
            return
        self._state = _HEAD
        self.unblock_reading(_READ_PIPELINE)
        if self._buffer:
            # Not now: this runs inside the app connection's callback.
            self._loop.call_soon(self._next_requests)
        elif self._eof:
            self._close()

    def exchange_broken(self) -> None:
        self._exchange = None
        self._close()

    # -- flow and closing ----------------------------------------------------------------------

    def block_reading(self, reason: int) -> None:
        if not self._blocks and self._state not in (_CLOSED, _HANDED):
            self.transport.pause_reading()
        self._blocks |= reason

    def unblock_reading(self, reason: int) -> None:
        if self._blocks & reason:
            self._blocks &= ~reason
            if not self._blocks and self._state not in (_CLOSED, _HANDED):
                self.transport.resume_reading()

    def close_if_idle(self, before: float) -> None:
        """Close the connection if no answer is under way and it has been waiting for a
        request since before ``before`` (loop time)."""
        if self._exchange is None and self._state == _HEAD and self._since < before:
            self._close()

    def _close(self) -> None:
        if self._state != _HANDED:
            self._state = _CLOSED
            self.transport.close()
