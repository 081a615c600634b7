"""The HTTP server around the app: errors that happen before the app sees a request.

Requests that are not valid HTTP (a garbage request line, a header over 8 KiB, a bad
Content-Length) never reach the middleware: aiohttp answers them itself, in plain text that
quotes the offending bytes and names its version. ``AgentRunner`` makes those answers the same
envelope as every other error, with an ``X-Request-ID``, and without echoing the input.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from agent.errors import error_for_status

__all__ = ["AgentRunner"]


class _EnvelopeRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering protocol-level errors in the envelope."""

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
    def __call__(self) -> RequestHandler:
        return _EnvelopeRequestHandler(self, loop=self._loop, **self._kwargs)


class AgentRunner(web.AppRunner):
    """``web.AppRunner`` whose server answers malformed HTTP in the error envelope."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        kwargs: dict[str, Any] = dict(server._kwargs)
        return _Server(server.request_handler, request_factory=server.request_factory,
                       handler_cancellation=server.handler_cancellation, loop=server._loop,
                       **kwargs)
