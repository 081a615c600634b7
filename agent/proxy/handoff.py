"""The aiohttp side of the built-in proxy: connections the fast path hands over.

Static sites (aiohttp's ``FileResponse``: ranges, conditional requests, HEAD) and WebSocket
upgrades (bridged message by message over aiohttp's client, so
``[proxy] websocket_max_message_bytes`` holds) are served here. ``downstream`` gives such a
connection away with the request head exactly as received and everything after it; aiohttp's
``RequestHandler`` keeps it from then on, so later requests on it (keep-alive) are answered
here too: proxied ones over the same ``UpstreamPool``, through ``pool.request``.

Errors are the API's envelope, as on the fast path: 404 unknown host or path, 405 writing
to a static site, 502 service down, 504 too slow.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable

import structlog
from aiohttp import ClientSession, web
from yarl import URL

from agent.errors import (
    AgentError,
    BadGateway,
    GatewayTimeout,
    MethodNotAllowed,
    NotFound,
    where,
)
from agent.proxy.headers import TrustedNetworks, forwarded_request_headers, response_headers
from agent.proxy.http1 import IDEMPOTENT
from agent.proxy.locator import ServiceLocator, StaticSite, Upstream
from agent.proxy.names import host_of
from agent.proxy.routes import Route
from agent.proxy.static import serve_static
from agent.proxy.table import RouteTable
from agent.proxy.upstream import UpstreamError, UpstreamNotSent, UpstreamPool, UpstreamResponse
from agent.proxy.websocket import bridge_websocket, is_websocket_upgrade

__all__ = ["AiohttpSide"]

log = structlog.get_logger("agent.proxy")

# Responses of known length up to this size are read whole: cheaper than a chunk loop.
_SMALL_BODY = 64 * 1024
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _NotSent(Exception):
    """The request never reached the upstream (refused, or closed before it was read)."""




def _error(error: AgentError) -> web.Response:
    body = json.dumps(error.to_dict(), separators=(",", ":")).encode()
    response = web.Response(status=error.status, body=body, content_type="application/json")
    response.headers.update(error.headers)
    return response


class AiohttpSide:
    """aiohttp's low-level server for handed-over connections (see the module doc)."""

    def __init__(self, *, table: Callable[[], RouteTable], locator: ServiceLocator,
                 pool: UpstreamPool, session: ClientSession, trusted: TrustedNetworks,
                 websocket_max_message: int, idle_timeout: float) -> None:
        self._table = table
        self._locator = locator
        self._pool = pool
        self._session = session
        self._trusted = trusted
        self._max_message = websocket_max_message
        # Bodies pass through as sent (no decompression), as on the fast path.
        self._server = web.Server(self._handle, handler_cancellation=False, access_log=None,
                                  keepalive_timeout=idle_timeout, auto_decompress=False)

    def adopt(self, transport: asyncio.Transport, data: bytes) -> None:
        """Serve ``transport`` from now on; ``data`` is what it has received and nobody
        has read yet (starting with a request head)."""
        protocol = self._server()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(data)

    async def shutdown(self, grace: float) -> None:
        """Let requests in progress finish (up to ``grace`` seconds), then close everything."""
        await self._server.shutdown(grace)

    # -- requests ------------------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            return await self._dispatch(request)
        except AgentError as exc:
            return _error(exc)
        except Exception as exc:
            # The type and place only, as the API does: the text may carry request data.
            log.error("proxy_request_failed", error_type=type(exc).__name__,
                      where=where(exc))
            return _error(AgentError())

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        # Not request.host: without a Host header it falls back to socket.getfqdn(), a DNS call.
        route = self._table().match(host_of(request.headers.get("Host", "")), request.path)
        if route is None:
            raise NotFound("No route for this host and path")
        target = self._locator.target(route.service_id, route.port)
        if target is None:
            raise BadGateway("The service is not running")
        if isinstance(target, StaticSite):
            return await self._static(request, target, route)
        try:
            return await self._forward(request, target)
        except _NotSent:
            # The old release stopped between the lookup and the connection (a redeploy):
            # ask again; a request that was not sent at all is safe to send to the new one.
            retry = self._locator.target(route.service_id, route.port)
            if isinstance(retry, Upstream) and retry != target:
                with contextlib.suppress(_NotSent):
                    return await self._forward(request, retry)
            raise BadGateway() from None

    async def _static(self, request: web.BaseRequest, site: StaticSite,
                      route: Route) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            error = MethodNotAllowed(f"Method {request.method} is not allowed here",
                                     details={"allowed": ["GET", "HEAD"]})
            error.headers["Allow"] = "GET, HEAD"
            raise error
        response = await serve_static(request, site.root, route.path_prefix)
        if response is None:
            raise NotFound("No such file")
        return response

    def _url(self, request: web.BaseRequest, upstream: Upstream) -> URL:
        rel = request.rel_url
        return URL.build(scheme="http", host=upstream.host, port=upstream.port,
                         path=rel.raw_path, query_string=rel.raw_query_string, encoded=True)

    def _target(self, request: web.BaseRequest) -> str:
        raw = request.raw_path
        if raw.startswith("/"):
            return raw  # as the client sent it: the app decodes it itself
        rel = request.rel_url  # absolute-form ("GET http://host/path"): keep path and query
        return rel.raw_path + ("?" + rel.raw_query_string if rel.raw_query_string else "")

    async def _forward(self, request: web.BaseRequest, upstream: Upstream) -> web.StreamResponse:
        websocket = is_websocket_upgrade(request)
        headers = forwarded_request_headers(
            request.headers, peer=request.remote, host=request.headers.get("Host", ""),
            scheme=request.scheme, trusted=self._trusted, websocket=websocket)
        if "Host" not in headers:  # an HTTP/1.0 client may send none; HTTP/1.1 needs one
            headers["Host"] = upstream.authority
        if websocket:
            return await bridge_websocket(request, self._session, self._url(request, upstream),
                                          headers, max_message=self._max_message)
        if request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(_CONTINUE)
        body = request.content if request.body_exists else None
        try:
            async with await self._pool.request(upstream.host, upstream.port, request.method,
                                                self._target(request), headers.items(), body,
                                                request.content_length) as answer:
                return await self._relay(request, answer)
        except TimeoutError:
            raise GatewayTimeout() from None
        except (UpstreamError, OSError) as exc:  # refused, reset, malformed answer
            log.warning("proxy_upstream_failed", upstream=upstream.authority,
                        error_type=type(exc).__name__)
            # Refused: nothing was sent, body included. Closed unanswered: safe to repeat
            # only for idempotent requests without a body (as HTTP clients retry).
            if isinstance(exc, ConnectionRefusedError) or (
                    isinstance(exc, UpstreamNotSent) and request.method in IDEMPOTENT):
                raise _NotSent() from None
            raise BadGateway() from None

    async def _relay(self, request: web.BaseRequest,
                     upstream: UpstreamResponse) -> web.StreamResponse:
        headers = response_headers(upstream.headers)
        length = upstream.content_length
        if not upstream.has_body or (length is not None and length <= _SMALL_BODY):
            body = await upstream.read()
            return web.Response(status=upstream.status, reason=upstream.reason,
                                headers=headers, body=body or None)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                      headers=headers)
        await response.prepare(request)
        try:
            async for piece in upstream.iter_pieces():
                await response.write(piece)
        except ConnectionResetError:
            return response  # the client went away; leaving the exchange drops the upstream
        except (UpstreamError, TimeoutError):
            # Headers are gone already: cut the connection so the client sees a truncated
            # body instead of a complete-looking one.
            log.warning("proxy_upstream_body_failed", status=upstream.status)
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response
