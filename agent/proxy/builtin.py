"""The built-in reverse proxy: the agent's own listener (``[proxy] listen``).

Per request: canonical host from the Host header -> route (``RouteTable``, rebuilt from the
store when routes change) -> the service's current target, asked of the locator on every
request so a new release takes traffic at once. Two sides serve it:

* the fast path (``downstream.ClientConnection`` and ``exchange.Exchange``): an HTTP/1.1
  server protocol of its own relaying to the apps over a keep-alive ``UpstreamPool``, with
  no aiohttp request, response or task per request;
* the aiohttp side (``handoff.AiohttpSide``) for static sites and WebSocket upgrades, which
  the fast path hands whole connections to.

Bodies stream both ways with flow control; nothing larger than a few socket buffers is held.
Content is passed through untouched (no decompression, no cookies kept, no redirects
followed). Errors of the proxy itself are the API's envelope: 400 malformed request, 404
unknown host or path, 431 head too large, 502 service down or not running, 504 too slow. A
request refused by a release that has just stopped (a redeploy racing the lookup) is sent
once more to the service's current target.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from aiohttp import ClientSession, ClientTimeout, DummyCookieJar, TCPConnector

from agent.clock import Clock
from agent.config import ProxyConfig
from agent.listeners import bind_listener
from agent.proxy.backend import BackendName, ProxyStatus
from agent.proxy.core import ProxyCore
from agent.proxy.downstream import ClientConnection
from agent.proxy.handoff import AiohttpSide
from agent.proxy.headers import TrustedNetworks
from agent.proxy.locator import ServiceLocator
from agent.proxy.routes import RouteChange, RouteService
from agent.proxy.table import RouteTable
from agent.proxy.upstream import UpstreamPool
from agent.timers import next_multiple

__all__ = ["BuiltinProxy"]

log = structlog.get_logger("agent.proxy")

_SHUTDOWN_TIMEOUT = 10.0  # in-flight requests get this long to finish when the agent stops
_IDLE_TIMEOUT = 75.0  # a client connection waiting this long for a request is closed (nginx's)


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
        self._core: ProxyCore | None = None
        self._aiohttp: AiohttpSide | None = None
        self._session: ClientSession | None = None  # WebSockets only
        self._pool: UpstreamPool | None = None
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._listen: tuple[str, ...] = ()
        self._last_sync: float | None = None

    @property
    def name(self) -> BackendName:
        return "builtin"

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) actually bound (useful with port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the proxy is not listening")
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> None:
        config = self._config
        connector = TCPConnector(limit=0, limit_per_host=config.max_connections_per_upstream,
                                 keepalive_timeout=config.upstream_keepalive_timeout,
                                 use_dns_cache=True, ttl_dns_cache=10)
        session = ClientSession(
            connector=connector, cookie_jar=DummyCookieJar(), auto_decompress=False,
            timeout=ClientTimeout(total=None, sock_connect=config.connect_timeout,
                                  sock_read=config.read_timeout),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            raise_for_status=False, trust_env=False)
        pool = UpstreamPool(connect_timeout=config.connect_timeout,
                            read_timeout=config.read_timeout,
                            limit=config.max_connections_per_upstream,
                            keepalive_timeout=config.upstream_keepalive_timeout)
        side = AiohttpSide(table=lambda: self._table, locator=self._locator, pool=pool,
                           session=session, trusted=self._trusted,
                           websocket_max_message=config.websocket_max_message_bytes,
                           idle_timeout=_IDLE_TIMEOUT)
        core = ProxyCore(pool=pool, locator=self._locator, trusted=self._trusted,
                         handoff=side.adopt, idle_timeout=_IDLE_TIMEOUT)
        self._session, self._pool, self._aiohttp, self._core = session, pool, side, core
        self._reload()
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(lambda: ClientConnection(core),
                                                    sock=bind_listener(config.listen))
        except OSError:
            await self._close_clients()
            raise
        self._sweeper = loop.call_at(next_multiple(loop.time(), _IDLE_TIMEOUT / 5), self._sweep)
        bound_host, bound_port = self.address
        self._listen = (f"{bound_host}:{bound_port}",)
        log.info("proxy_listening", backend="builtin", address=self._listen[0],
                 routes=self._table.size)

    async def stop(self) -> None:
        """Stop listening; requests in progress get ``_SHUTDOWN_TIMEOUT`` to finish, idle
        connections close at once."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._server is not None:
            self._server.close()
            self._server = None
        core = self._core
        if core is not None:
            core.close_idle()
            aiohttp_done = (self._aiohttp.shutdown(_SHUTDOWN_TIMEOUT) if self._aiohttp
                            else asyncio.sleep(0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(core.drained.wait(), aiohttp_done),
                                       _SHUTDOWN_TIMEOUT + 1)
            for conn in list(core.connections):
                conn.transport.abort()
        await self._close_clients()

    async def _close_clients(self) -> None:
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
        return ProxyStatus(backend="builtin", reachable=self._server is not None,
                           in_sync=self._server is not None, listen=self._listen,
                           routes=self._table.size, last_sync=self._last_sync)

    def _reload(self) -> None:
        self._table = RouteTable(self._routes.all())
        if self._core is not None:
            self._core.table = self._table
        self._last_sync = self._clock.time()

    def _sweep(self) -> None:
        if self._core is None or self._server is None:
            return
        loop = asyncio.get_running_loop()
        self._core.sweep(loop.time())
        self._sweeper = loop.call_at(next_multiple(loop.time(), _IDLE_TIMEOUT / 5), self._sweep)
