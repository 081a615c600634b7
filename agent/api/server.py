"""The HTTP server around the app: what happens to a connection before the app sees a request.

Requests that are not valid HTTP (a garbage request line, a header over 8 KiB, a bad
Content-Length) never reach the middleware: aiohttp answers them itself, in plain text that
quotes the offending bytes and names its version. ``AgentRunner`` makes those answers the same
envelope as every other error, with an ``X-Request-ID``, and without echoing the input.

It also bounds the time a client may take to send a request's head (request line and
headers): aiohttp has no such timeout of its own, so a client that sends its headers one byte
at a time (slowloris) would hold a connection until the keep-alive timeout. The deadline
starts when the connection opens, and again when the first byte of a later request on a
kept-alive connection arrives; it ends when the head is complete (the body has no deadline
here: streaming uploads may be slow). A connection that misses it is closed without an
answer. An idle kept-alive connection that sends nothing is the keep-alive timeout's business,
and so is the rare head pipelined behind a request still being handled (bytes that arrive then
cannot be told from that request's body).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from agent.errors import error_for_status

__all__ = ["AgentRunner"]

log = structlog.get_logger("agent.server")


class _AgentRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering protocol-level errors in the envelope and
    closing connections whose request head does not arrive within ``header_timeout``."""

    __slots__ = ("_head_count", "_head_handle", "header_timeout")

    def __init__(self, *args: Any, header_timeout: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self._head_handle: asyncio.TimerHandle | None = None
        self._head_count = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_handle is not None and self._request_count != self._head_count:
            self._disarm_head_deadline()  # the head it was armed for is complete
        if data and self._head_handle is None and self._awaiting_head():
            self._arm_head_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def _awaiting_head(self) -> bool:
        """Between requests: no parsed request queued and none being handled, so bytes that
        arrive now belong to the head of the next request."""
        return not self._messages and not self._request_in_progress

    def _arm_head_deadline(self) -> None:
        if self.header_timeout is None:
            return
        self._head_count = self._request_count
        self._head_handle = self._loop.call_later(self.header_timeout, self._head_deadline)

    def _disarm_head_deadline(self) -> None:
        if self._head_handle is not None:
            self._head_handle.cancel()
            self._head_handle = None

    def _head_deadline(self) -> None:
        self._head_handle = None
        if self._request_count != self._head_count or not self._awaiting_head():
            return  # the head arrived in time
        if self.transport is not None and not self.transport.is_closing():
            log.debug("request_head_timeout", timeout=self.header_timeout)
            self.force_close()
            self.transport.close()

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        # The base class logs (type only, through our logging bridge), refuses if a response
        # was already started, and builds a plain-text answer that we replace.
        super().handle_error(request, status, exc, None)
        error = error_for_status(status)
        if status == 400:
            error.message = "Malformed HTTP request"
        body = json.dumps(error.to_dict(), separators=(",", ":")).encode()
        response = web.Response(status=status, body=body, content_type="application/json")
        response.headers["Server"] = "dployr-agent"
        response.headers["X-Request-ID"] = "req_protocol_error"
        response.force_close()
        return response


class _Server(web.Server):
    header_timeout: float | None = None

    def __call__(self) -> RequestHandler:
        return _AgentRequestHandler(self, loop=self._loop, header_timeout=self.header_timeout,
                                    **self._kwargs)


class AgentRunner(web.AppRunner):
    """``web.AppRunner`` whose server answers malformed HTTP in the error envelope and closes
    connections that take longer than ``header_timeout`` seconds to send a request head
    (None: no limit but the keep-alive timeout)."""

    def __init__(self, app: web.Application, *, header_timeout: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._header_timeout = header_timeout

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        kwargs: dict[str, Any] = dict(server._kwargs)
        wrapped = _Server(server.request_handler, request_factory=server.request_factory,
                          handler_cancellation=server.handler_cancellation, loop=server._loop,
                          **kwargs)
        wrapped.header_timeout = self._header_timeout
        return wrapped
