"""The request pipeline, in one middleware: request id -> auth -> rate limit -> handler ->
error envelope -> metrics and the canonical log line.

``make_api_middleware`` captures everything it needs from the app when it is built (the
auth service, the limiters, the endpoint table, the metrics, the access log setting), so a
request costs no ``app[...]`` lookups; what it learns about each route (the endpoint, the
route pattern, its metric series) is computed on the route's first request and kept.

The standard headers (X-Request-ID, X-RateLimit-*, Server) are stamped by the middleware on
the response the handler returns, on error responses and on raised HTTP exceptions. A handler
that streams prepares its response through ``prepare_stream``, which stamps it first. (An
``on_response_prepare`` signal would do the same for every response, but costs about 5% of a
small request's time, for the one streaming endpoint that needs it.)
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware
from aiohttp.web_urldispatcher import AbstractRoute

from agent import logconfig
from agent.api.routing import ENDPOINTS_KEY, Endpoint
from agent.auth import AuthService, Principal
from agent.errors import (
    AgentError,
    Forbidden,
    InsufficientStorage,
    MethodNotAllowed,
    NotFound,
    RateLimited,
    Unauthorized,
    error_for_status,
    from_exception,
    where,
)
from agent.keys import PRINCIPAL_KEY, REQUEST_ID_KEY
from agent.metrics.prometheus import AgentMetrics, RequestSeries
from agent.ratelimit import Decision, RateLimits
from agent.records import record

__all__ = ["client_address", "make_api_middleware", "prepare_stream"]

log = structlog.get_logger("agent.api")

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_MAX_TOKEN_LENGTH = 4096
# Tokens we issue are URL-safe base64 and dots; anything else cannot be one of ours.
_TOKEN = re.compile(r"^[A-Za-z0-9._~+/=-]+$")

# Request ids only need to be unique, not sortable or secret: a random per-process prefix and
# a counter cost a fraction of ``new_id`` on a path that runs for every request.
_REQUEST_ID_PREFIX = "req_" + secrets.token_hex(5)
_request_counter = itertools.count(1)

_set_request_id = logconfig.REQUEST_ID.set


class _Exchange:
    """What the middleware and the prepare hook share about one request."""

    __slots__ = ("decision", "request_id", "started")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.decision: Decision | None = None
        self.started = False  # a response was prepared: its status line is committed


_EXCHANGE_KEY = web.RequestKey("exchange", _Exchange)


@dataclass(slots=True)
class _RouteInfo:
    """What the middleware needs about one route, worked out once."""

    endpoint: Endpoint | None
    pattern: str | None  # the route pattern (``/v1/projects/{id}``), None when unmatched
    series: dict[tuple[str, int], RequestSeries] = field(default_factory=dict)


def _error_response(error: AgentError) -> web.Response:
    response = web.json_response(error.to_dict(), status=error.status, dumps=_compact)
    response.headers.update(error.headers)
    return response


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _translate_http(exc: web.HTTPException) -> AgentError:
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        err: AgentError = MethodNotAllowed(f"Method {exc.method} is not allowed here",
                                           details={"allowed": sorted(exc.allowed_methods)})
        err.headers["Allow"] = allowed
        return err
    if isinstance(exc, web.HTTPNotFound):
        return NotFound("No such endpoint")
    return error_for_status(exc.status)




def client_address(request: web.Request, trusted: tuple[_Network, ...]) -> str:
    """The client's address: the peer, or the nearest untrusted X-Forwarded-For hop when the
    peer is a trusted proxy."""
    peer = request.remote or "unknown"
    if not trusted or not _in(peer, trusted):
        return peer
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _in(hop, trusted):
            return hop
    return hops[0] if hops else peer


def _in(address: str, networks: tuple[_Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


_BEARER_CACHE_SIZE = 4096


def _bearer(header: str, seen: dict[str, str]) -> str:
    """The token of an ``Authorization: Bearer <token>`` header; Unauthorized if malformed.

    ``seen`` remembers well-formed headers (a client sends the same one on every request),
    and hands back the same token string each time, whose hash is then already known.
    """
    token = seen.get(header)
    if token is not None:
        return token
    token = _parse_bearer(header)
    if len(seen) >= _BEARER_CACHE_SIZE:
        seen.clear()
    seen[header] = token
    return token


def _parse_bearer(header: str) -> str:
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if (scheme.lower() != "bearer" or not token or len(token) > _MAX_TOKEN_LENGTH
            or not _TOKEN.fullmatch(token)):
        raise Unauthorized("Malformed Authorization header; expected 'Bearer <token>'")
    return token


@record
class _Settings:
    auth: AuthService
    limits: RateLimits
    endpoints: dict[str, Endpoint]
    trusted: tuple[_Network, ...]
    metrics: AgentMetrics | None
    access_log: bool
    bearers: dict[str, str] = field(default_factory=dict)  # header -> token, see _bearer


def make_api_middleware(app: web.Application, *, auth: AuthService, limits: RateLimits,
                        trusted_proxies: tuple[str, ...], metrics: AgentMetrics | None,
                        access_log: bool) -> Middleware:
    """The agent's one middleware for ``app`` (its endpoints must be registered already).

    For every request: bind the request id; authenticate the bearer token; charge the rate
    limit (per principal, or per client address without a valid token); check the endpoint's
    access level; run the handler; turn any error into the envelope; count the request in
    the metrics and write the canonical ``http_request`` log line.
    """
    settings = _Settings(
        auth=auth, limits=limits, endpoints=app[ENDPOINTS_KEY],
        trusted=tuple(ipaddress.ip_network(n, strict=False) for n in trusted_proxies),
        metrics=metrics, access_log=access_log)
    routes: dict[AbstractRoute, _RouteInfo] = {}
    unmatched = _RouteInfo(endpoint=None, pattern=None)

    def route_info(route: AbstractRoute) -> _RouteInfo:
        resource = route.resource
        if resource is None:  # 404 and 405 get a new system route each time: never kept
            return unmatched
        info = _RouteInfo(endpoint=settings.endpoints.get(route.name or ""),
                          pattern=resource.canonical)
        routes[route] = info
        return info

    @web.middleware
    async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        incoming = request.headers.get("X-Request-ID")
        if incoming is not None and _REQUEST_ID.fullmatch(incoming):
            request_id = incoming
        else:
            request_id = f"{_REQUEST_ID_PREFIX}{next(_request_counter):010x}"
        exchange = _Exchange(request_id)
        request[_EXCHANGE_KEY] = exchange
        request[REQUEST_ID_KEY] = request_id
        # Each request runs in its own task (a copy of the connection's context): setting the
        # variable here never leaks into another request.
        _set_request_id(request_id)
        route = request.match_info.route
        info = routes.get(route) or route_info(route)
        principal: Principal | None = None
        status = 500
        try:
            try:
                principal = _admit(request, settings, info.endpoint, exchange)
                response = await handler(request)
            except web.HTTPException as exc:
                if exc.status < 400 or exchange.started:
                    raise
                error = _translate_http(exc)
            except AgentError as exc:
                error = exc
                if exchange.started:
                    log.warning("stream_aborted", code=exc.code)
                    raise
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = from_exception(exc)
                if isinstance(error, InsufficientStorage) and not exchange.started:
                    # Expected while the disk is full: the client gets 507, reads go on.
                    log.warning("request_refused_disk_full", where=where(exc))
                elif error.status >= 500 or exchange.started:
                    # The type and place only: an exception's text may carry secrets.
                    log.error("request_failed", error_type=type(exc).__name__, where=where(exc))
                    error.details["request_id"] = request_id
                if exchange.started:
                    raise
            else:
                status = response.status
                if not response.prepared:
                    _stamp(response.headers, exchange, status)
                return response
            status = error.status
            response = _error_response(error)
            _stamp(response.headers, exchange, status)
            return response
        except web.HTTPException as exc:  # a redirect, or an error inside a started stream
            status = exc.status
            if not exchange.started:
                _stamp(exc.headers, exchange, status)
            raise
        except asyncio.CancelledError:
            status = 499  # the client went away
            raise
        finally:
            elapsed = time.perf_counter() - started
            if settings.metrics is not None:
                _observe(settings.metrics, info, request.method, status, elapsed)
            if settings.access_log:
                _log_access(request, info, status, elapsed, principal, request_id)

    return api_middleware


def _admit(request: web.Request, settings: _Settings, endpoint: Endpoint | None,
           exchange: _Exchange) -> Principal | None:
    """Authenticate, charge the rate limit and check the access level; raise if refused."""
    principal: Principal | None = None
    auth_error: Unauthorized | None = None
    header = request.headers.get("Authorization")
    if header is not None:
        try:
            principal = settings.auth.authenticate(_bearer(header, settings.bearers))
        except Unauthorized as exc:
            auth_error = exc

    limits = settings.limits
    if principal is not None:
        limiter, key = limits.authenticated, principal.rate_key
    else:
        limiter, key = limits.unauthenticated, "ip:" + client_address(request, settings.trusted)
    charge = limits.enabled and (endpoint is None or endpoint.rate_limited)
    decision = limiter.charge(key) if charge else limiter.peek(key)
    exchange.decision = decision
    if not decision.allowed:
        raise RateLimited(f"Rate limit of {decision.limit} requests per hour exceeded",
                          headers={"Retry-After": str(decision.retry_after)})

    if endpoint is not None and endpoint.access != "public":
        if principal is None:
            raise auth_error or Unauthorized()
        if not principal.allows(endpoint.access):
            raise Forbidden(f"This action needs the {endpoint.access} role",
                            details={"required_role": endpoint.access,
                                     "your_role": principal.role})
    if principal is not None:
        request[PRINCIPAL_KEY] = principal
    return principal


def _observe(metrics: AgentMetrics, info: _RouteInfo, method: str, status: int,
             seconds: float) -> None:
    series = info.series.get((method, status))
    if series is None:
        series = metrics.request_series(method, info.pattern or "unmatched", status)
        if len(info.series) < 64:  # methods x statuses seen on this route: small, but bounded
            info.series[(method, status)] = series
    series.observe(seconds)


def _log_access(request: web.Request, info: _RouteInfo, status: int, elapsed: float,
                principal: Principal | None, request_id: str) -> None:
    principal_id = principal.id if principal is not None else None
    fast = logconfig.access_log()
    if fast is not None:
        fast.write(request.method, info.pattern, request.path, status, elapsed, principal_id,
                   request_id)
    else:
        log.info("http_request", method=request.method, route=info.pattern, path=request.path,
                 status=status, duration_ms=round(elapsed * 1000, 2), principal=principal_id)


async def prepare_stream(request: web.Request, response: web.StreamResponse) -> None:
    """Prepare a response a handler streams itself, with the standard headers on it. After
    this, an error can no longer become an envelope: the status line has been sent."""
    exchange = request.get(_EXCHANGE_KEY)
    if exchange is not None:
        _stamp(response.headers, exchange, response.status)
        exchange.started = True
    await response.prepare(request)


def _stamp(headers: MutableMapping[str, str], exchange: _Exchange, status: int) -> None:
    """X-Request-ID, X-RateLimit-* (and Retry-After on a 429) and Server on one response."""
    # Replaces aiohttp's default ("Python/3.x aiohttp/3.x"): no versions for scanners.
    headers["Server"] = "dployr-agent"
    headers["X-Request-ID"] = exchange.request_id
    decision = exchange.decision
    if decision is not None:
        headers["X-RateLimit-Limit"] = str(decision.limit)
        headers["X-RateLimit-Remaining"] = str(decision.remaining)
        headers["X-RateLimit-Reset"] = str(decision.reset_at)
        if not decision.allowed and status == 429:
            headers["Retry-After"] = str(decision.retry_after)
