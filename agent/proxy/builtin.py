"""The built-in reverse proxy: aiohttp on its own listener (``[proxy] listen``).

Per request: canonical host from the Host header -> route (``RouteTable``, rebuilt from the
store when routes change) -> the service's current target, asked of the locator on every
request so a new release takes traffic at once -> a static file, a WebSocket bridge (over
aiohttp's client), or an HTTP exchange over the keep-alive ``UpstreamPool``. A request
refused by a release that has just stopped (a redeploy racing the lookup) is sent once more
to the service's current target.

Bodies stream both ways: the request body goes upstream piece by piece as it arrives, the
response body comes back the same way (small responses with a known length are read whole,
which is cheaper). Nothing larger than a few socket buffers is ever held. Content is passed
through untouched (no decompression, no cookies kept, no redirects followed). Errors of the
proxy itself are the API's envelope: 404 for an unknown host or path, 502 when the service is
down or not running, 504 when it does not answer in time.

It runs on aiohttp's low-level server (``web.Server``) rather than a ``web.Application``:
there is one handler and no routing, middleware or signals to pay for on each request.
"""

from __future__ import annotations

import contextlib
import json
import traceback

import structlog
from aiohttp import ClientSession, ClientTimeout, DummyCookieJar, TCPConnector, web
from yarl import URL

from agent.clock import Clock
from agent.config import ProxyConfig, parse_listen
from agent.errors import AgentError, BadGateway, GatewayTimeout, MethodNotAllowed, NotFound
from agent.proxy.backend import BackendName, ProxyStatus
from agent.proxy.headers import TrustedNetworks, forwarded_request_headers, response_headers
from agent.proxy.locator import ServiceLocator, StaticSite, Upstream
from agent.proxy.names import host_of
from agent.proxy.routes import Route, RouteChange, RouteService
from agent.proxy.static import serve_static
from agent.proxy.table import RouteTable
from agent.proxy.upstream import UpstreamError, UpstreamNotSent, UpstreamPool, UpstreamResponse
from agent.proxy.websocket import bridge_websocket, is_websocket_upgrade

__all__ = ["BuiltinProxy"]

log = structlog.get_logger("agent.proxy")

# Responses of known length up to this size are read whole: cheaper than a chunk loop.
_SMALL_BODY = 64 * 1024
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_SHUTDOWN_TIMEOUT = 10.0


class _NotSent(Exception):
    """The request never reached the upstream (refused, or closed before it was read)."""


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "unknown"
    last = frames[-1]
    return f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno}:{last.name}"


def _error(error: AgentError) -> web.Response:
    body = json.dumps(error.to_dict(), separators=(",", ":")).encode()
    response = web.Response(status=error.status, body=body, content_type="application/json")
    response.headers.update(error.headers)
    return response


class BuiltinProxy:
    """``ProxyBackend`` served by the agent's own process."""

    def __init__(self, config: ProxyConfig, routes: RouteService, locator: ServiceLocator,
                 clock: Clock) -> None:
        self._config = config
        self._routes = routes
        self._locator = locator
        self._clock = clock
        self._trusted = TrustedNetworks(config.trusted_proxies)
        self._table = RouteTable()
        self._session: ClientSession | None = None  # WebSockets only
        self._pool: UpstreamPool | None = None
        self._runner: web.ServerRunner | None = None
        self._listen: tuple[str, ...] = ()
        self._last_sync: float | None = None

    @property
    def name(self) -> BackendName:
        return "builtin"

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) actually bound (useful with port 0)."""
        if self._runner is None or not self._runner.addresses:
            raise RuntimeError("the proxy is not listening")
        host, port = self._runner.addresses[0][:2]
        return str(host), int(port)

    async def start(self) -> None:
        config = self._config
        connector = TCPConnector(limit=0, limit_per_host=config.max_connections_per_upstream,
                                 keepalive_timeout=config.upstream_keepalive_timeout,
                                 use_dns_cache=True, ttl_dns_cache=10)
        self._session = ClientSession(
            connector=connector, cookie_jar=DummyCookieJar(), auto_decompress=False,
            timeout=ClientTimeout(total=None, sock_connect=config.connect_timeout,
                                  sock_read=config.read_timeout),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            raise_for_status=False, trust_env=False)
        self._pool = UpstreamPool(connect_timeout=config.connect_timeout,
                                  read_timeout=config.read_timeout,
                                  limit=config.max_connections_per_upstream,
                                  keepalive_timeout=config.upstream_keepalive_timeout)
        self._reload()
        server = web.Server(self._handle, handler_cancellation=False)
        # In-flight requests get this long to finish when the agent stops.
        runner = web.ServerRunner(server, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        await runner.setup()
        host, port = parse_listen(config.listen)
        site = web.TCPSite(runner, host, port, reuse_address=True, backlog=1024)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            await self._session.close()
            await self._pool.close()
            raise
        self._runner = runner
        bound_host, bound_port = self.address
        self._listen = (f"{bound_host}:{bound_port}",)
        log.info("proxy_listening", backend="builtin", address=self._listen[0],
                 routes=self._table.size)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def routes_changed(self, change: RouteChange) -> None:
        self._reload()

    async def refresh(self, service_id: str) -> None:
        """Nothing to do: the target is looked up on every request."""

    def status(self) -> ProxyStatus:
        return ProxyStatus(backend="builtin", reachable=self._runner is not None,
                           in_sync=self._runner is not None, listen=self._listen,
                           routes=self._table.size, last_sync=self._last_sync)

    def _reload(self) -> None:
        self._table = RouteTable(self._routes.all())
        self._last_sync = self._clock.time()

    # -- requests ------------------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            return await self._dispatch(request)
        except AgentError as exc:
            return _error(exc)
        except Exception as exc:
            # The type and place only, as the API does: the text may carry request data.
            log.error("proxy_request_failed", error_type=type(exc).__name__,
                      where=_where(exc))
            return _error(AgentError())

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        # Not request.host: without a Host header it falls back to socket.getfqdn(), a DNS call.
        route = self._table.match(host_of(request.headers.get("Host", "")), request.path)
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
        session, pool = self._session, self._pool
        if session is None or pool is None:
            raise BadGateway("The proxy is stopping")
        websocket = is_websocket_upgrade(request)
        headers = forwarded_request_headers(
            request.headers, peer=request.remote, host=request.headers.get("Host", ""),
            scheme=request.scheme, trusted=self._trusted, websocket=websocket)
        if "Host" not in headers:  # an HTTP/1.0 client may send none; HTTP/1.1 needs one
            headers["Host"] = upstream.authority
        if websocket:
            return await bridge_websocket(request, session, self._url(request, upstream),
                                          headers,
                                          max_message=self._config.websocket_max_message_bytes)
        if request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(_CONTINUE)
        body = request.content if request.body_exists else None
        try:
            async with await pool.request(upstream.host, upstream.port, request.method,
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
                    isinstance(exc, UpstreamNotSent) and request.method in _IDEMPOTENT):
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
