"""The Caddy JSON the agent owns: one HTTP server and, with HTTPS, one TLS automation policy.

Pure functions of the routes and their targets, so the desired state can be compared with
what Caddy reports and the difference turned into admin API calls (``plan``). Every route
carries an ``@id`` (``<server>-<route id>``) so it can be replaced or removed alone.

The server mirrors the built-in proxy: routes ordered exact host first, then wildcard, then
longest path prefix (``sort_for_matching``); path matching on whole segments; a service with
nothing to serve answers 502; an unknown host gets the 404 catch-all; every error Caddy
raises itself (upstream down, file missing) is rendered as the API's envelope by the
server's error routes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.config import ProxyConfig
from agent.errors import (
    AgentError,
    BadGateway,
    Forbidden,
    GatewayTimeout,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
)
from agent.proxy.locator import StaticSite, Target, Upstream
from agent.proxy.routes import Route, sort_for_matching
from agent.records import record

__all__ = [
    "ACME_STAGING",
    "CaddySettings",
    "Op",
    "build_server",
    "build_tls_policy",
    "plan",
    "route_json",
]

ACME_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"
JsonObj = dict[str, Any]


@record
class CaddySettings:
    """The parts of ``[proxy]`` that shape Caddy's configuration."""

    server_name: str
    listen: tuple[str, ...]
    https: bool
    acme_email: str
    acme_staging: bool
    connect_timeout: float
    read_timeout: float
    keepalive_timeout: float
    max_connections: int
    trusted_proxies: tuple[str, ...]

    @classmethod
    def of(cls, config: ProxyConfig) -> CaddySettings:
        return cls(server_name=config.caddy_server_name, listen=config.caddy_listen,
                   https=config.https, acme_email=config.acme_email,
                   acme_staging=config.acme_staging, connect_timeout=config.connect_timeout,
                   read_timeout=config.read_timeout,
                   keepalive_timeout=config.upstream_keepalive_timeout,
                   max_connections=config.max_connections_per_upstream,
                   trusted_proxies=config.trusted_proxies)

    def route_id(self, route_id: str) -> str:
        return f"{self.server_name}-{route_id}"

    @property
    def catchall_id(self) -> str:
        return f"{self.server_name}-catchall"

    @property
    def policy_id(self) -> str:
        return f"{self.server_name}-acme"


def _duration(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def _envelope_response(error: AgentError, status: int | str | None = None) -> JsonObj:
    return {"handler": "static_response", "status_code": status or error.status,
            "headers": {"Content-Type": ["application/json"]},
            "body": json.dumps(error.to_dict(), separators=(",", ":"))}


def _path_matcher(prefix: str) -> list[str]:
    return [] if prefix == "/" else [prefix, prefix + "/*"]


def _upstream_handlers(upstream: Upstream, settings: CaddySettings) -> list[JsonObj]:
    handler: JsonObj = {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": upstream.authority}],
        # No "flush_interval": -1. Caddy already flushes every write of a response of unknown
        # length or of type text/event-stream, and an explicit -1 makes Caddy 2.6.2 wrap
        # requests in a context that panics the whole process on a config reload.
        "transport": {
            "protocol": "http",
            "dial_timeout": _duration(settings.connect_timeout),
            "response_header_timeout": _duration(settings.read_timeout),
            "read_timeout": _duration(settings.read_timeout),
            # All of these, or Caddy keeps Go's default of 2 idle connections per app and
            # reconnects under any concurrency (it fills in defaults only when keep_alive is
            # absent).
            "keep_alive": {"enabled": True, "probe_interval": "30s",
                           "idle_timeout": _duration(settings.keepalive_timeout),
                           "max_idle_conns_per_host": settings.max_connections or 1024},
        },
    }
    if settings.max_connections:
        handler["transport"]["max_conns_per_host"] = settings.max_connections
    if settings.trusted_proxies:
        handler["trusted_proxies"] = list(settings.trusted_proxies)
    return [handler]


def _static_handlers(site: StaticSite, prefix: str, hidden: Sequence[str]) -> list[JsonObj]:
    reads: list[JsonObj] = []
    if prefix != "/":
        reads.append({"handler": "rewrite", "strip_path_prefix": prefix})
    # ".*": dotfiles anywhere in the path; then symlinks leading out of the root, which
    # Caddy's file_server would otherwise follow.
    reads.append({"handler": "file_server", "root": str(site.root), "hide": [".*", *hidden]})
    refused = _envelope_response(MethodNotAllowed(
        "Method not allowed here", details={"allowed": ["GET", "HEAD"]}))
    refused["headers"]["Allow"] = ["GET, HEAD"]
    # Caddy 2.6's file_server answers any method; reads only, as the built-in proxy.
    return [{"handler": "subroute", "routes": [
        {"match": [{"method": ["GET", "HEAD"]}], "handle": reads},
        {"handle": [refused]},
    ]}]


def route_json(route: Route, target: Target | None, settings: CaddySettings,
               hidden: Sequence[str] = ()) -> JsonObj:
    """One Caddy route for a stored route and its service's current target.

    ``hidden``: for a static site, the paths of links out of its root (``escaping_links``).
    """
    matcher: JsonObj = {"host": [route.domain]}
    paths = _path_matcher(route.path_prefix)
    if paths:
        matcher["path"] = paths
    if target is None:
        handle = [_envelope_response(BadGateway("The service is not running"))]
    elif isinstance(target, StaticSite):
        handle = _static_handlers(target, route.path_prefix, hidden)
    else:
        handle = _upstream_handlers(target, settings)
    return {"@id": settings.route_id(route.id), "match": [matcher], "handle": handle,
            "terminal": True}


_ERRORS: tuple[AgentError, ...] = (
    NotFound("No such file"), MethodNotAllowed("Method not allowed here"),
    Forbidden("Access to this file is forbidden"), BadGateway(),
    ServiceUnavailable(), GatewayTimeout(),
)


def _error_routes() -> list[JsonObj]:
    routes: list[JsonObj] = [
        {"match": [{"expression": f"{{http.error.status_code}} == {error.status}"}],
         "handle": [_envelope_response(error)]}
        for error in _ERRORS
    ]
    routes.append({"handle": [_envelope_response(
        AgentError("The proxy could not serve this request"), "{http.error.status_code}")]})
    return routes


def build_server(routes: Sequence[Route], targets: Mapping[str, Target | None],
                 settings: CaddySettings,
                 hidden: Mapping[Path, Sequence[str]] | None = None) -> JsonObj:
    """The whole server object; ``targets`` keyed by route id, ``hidden`` by static root."""
    hidden = hidden or {}
    ordered = sort_for_matching(routes)
    caddy_routes = []
    for route in ordered:
        target = targets.get(route.id)
        links = hidden.get(target.root, ()) if isinstance(target, StaticSite) else ()
        caddy_routes.append(route_json(route, target, settings, links))
    caddy_routes.append({"@id": settings.catchall_id, "handle": [
        _envelope_response(NotFound("No route for this host and path"))]})
    server: JsonObj = {"listen": list(settings.listen), "routes": caddy_routes,
                       "errors": {"routes": _error_routes()}}
    if settings.https:
        wildcards = sorted({r.domain for r in routes if r.wildcard})
        if wildcards:
            # A wildcard certificate needs the DNS challenge, which the operator must set up.
            server["automatic_https"] = {"skip": wildcards}
    else:
        server["automatic_https"] = {"disable": True}
    return server


def build_tls_policy(routes: Sequence[Route], settings: CaddySettings) -> JsonObj | None:
    """The ACME policy for the routed names (email, staging CA), or None when not needed."""
    if not settings.https or not (settings.acme_email or settings.acme_staging):
        return None
    subjects = sorted({r.domain for r in routes if not r.wildcard})
    if not subjects:
        return None
    issuer: JsonObj = {"module": "acme"}
    if settings.acme_email:
        issuer["email"] = settings.acme_email
    if settings.acme_staging:
        issuer["ca"] = ACME_STAGING
    return {"@id": settings.policy_id, "subjects": subjects, "issuers": [issuer]}


@record
class Op:
    """One admin API call: ``method`` on ``path`` with an optional JSON body."""

    method: str
    path: str
    body: Any = None


def plan(actual: JsonObj, desired: JsonObj, server_path: str) -> list[Op] | None:
    """The ``@id`` calls that turn ``actual`` into ``desired``, or None when only replacing
    the whole server will do (anything but the routes differs, or routes were reordered)."""
    rest_actual = {k: v for k, v in actual.items() if k != "routes"}
    rest_desired = {k: v for k, v in desired.items() if k != "routes"}
    if rest_actual != rest_desired:
        return None
    have = actual.get("routes")
    want = desired["routes"]
    if not isinstance(have, list) or not all(isinstance(r, dict) and "@id" in r for r in have):
        return None
    have_by_id = {r["@id"]: r for r in have}
    want_by_id = {r["@id"]: r for r in want}
    if len(have_by_id) != len(have):
        return None
    ops = [Op("DELETE", f"/id/{rid}") for rid in have_by_id if rid not in want_by_id]
    kept = [rid for rid in have_by_id if rid in want_by_id]
    if kept != [r["@id"] for r in want if r["@id"] in have_by_id]:
        return None
    ops += [Op("PATCH", f"/id/{rid}", want_by_id[rid]) for rid in kept
            if have_by_id[rid] != want_by_id[rid]]
    ops += [Op("PUT", f"{server_path}/routes/{index}", route)
            for index, route in enumerate(want) if route["@id"] not in have_by_id]
    return ops
