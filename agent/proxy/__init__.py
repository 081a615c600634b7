"""Proxy routes: the built-in reverse proxy and the Caddy backend.

``RouteService`` stores routes; a ``ProxyBackend`` (``BuiltinProxy`` or ``CaddyBackend``,
chosen by ``[proxy] backend``) serves them; a ``ServiceLocator`` says where each service's
traffic goes now. Only the configured backend's modules are imported (``make_backend``):
an agent on the built-in proxy never loads the Caddy client, and the reverse.
"""

from __future__ import annotations

from agent.clock import Clock
from agent.config import ProxyConfig
from agent.proxy.backend import BackendName, ProxyBackend, ProxyStatus
from agent.proxy.locator import ServiceLocator, StaticSite, Target, Upstream
from agent.proxy.routes import Route, RouteChange, RouteService

__all__ = [
    "BackendName",
    "ProxyBackend",
    "ProxyStatus",
    "Route",
    "RouteChange",
    "RouteService",
    "ServiceLocator",
    "StaticSite",
    "Target",
    "Upstream",
    "make_backend",
]


def make_backend(config: ProxyConfig, routes: RouteService, locator: ServiceLocator,
                 clock: Clock) -> ProxyBackend:
    """The backend ``[proxy] backend`` names, subscribed to route changes."""
    backend: ProxyBackend
    if config.backend == "caddy":
        from agent.proxy.caddy import CaddyBackend

        backend = CaddyBackend(config, routes, locator, clock)
    else:
        from agent.proxy.builtin import BuiltinProxy

        backend = BuiltinProxy(config, routes, locator, clock)
    routes.add_listener(backend.routes_changed)
    return backend
