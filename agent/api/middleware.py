"""The request pipeline: request id -> error envelope -> auth -> rate limit -> canonical log line.

``error_middleware`` (outermost) binds the request id, turns every exception into the
seed's envelope and writes one log line per request. ``auth_middleware`` authenticates the
bearer token, charges the rate limit, and checks the endpoint's access level. The standard
headers (X-Request-ID, X-RateLimit-*) are added in ``on_response_prepare`` so that streamed
responses get them too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import json
import re
import secrets
import time
import traceback
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from agent.api.routing import ENDPOINTS_KEY, Endpoint
from agent.auth import Principal
from agent.errors import (
    AgentError,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    RateLimited,
    Unauthorized,
    error_for_status,
    from_exception,
)
from agent.keys import (
    AGENT_METRICS_KEY,
    AUTH_KEY,
    CONFIG_KEY,
    PRINCIPAL_KEY,
    RATE_DECISION_KEY,
    RATE_LIMITS_KEY,
    REQUEST_ID_KEY,
)

__all__ = ["add_standard_headers", "client_address", "error_middleware", "make_auth_middleware"]

log = structlog.get_logger("agent.api")

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_MAX_TOKEN_LENGTH = 4096
# Set when a response of this request was prepared (its status line is committed).
_STARTED_KEY = web.RequestKey("response_started", bool)
# Tokens we issue are URL-safe base64 and dots; anything else cannot be one of ours.
_TOKEN = re.compile(r"^[A-Za-z0-9._~+/=-]+$")


# Request ids only need to be unique, not sortable or secret: a random per-process prefix and
# a counter cost a fraction of ``new_id`` on a path that runs for every request.
_REQUEST_ID_PREFIX = "req_" + secrets.token_hex(5)
_request_counter = itertools.count(1)


def _request_id(request: web.Request) -> str:
    incoming = request.headers.get("X-Request-ID")
    if incoming and _REQUEST_ID.fullmatch(incoming):
        return incoming
    return f"{_REQUEST_ID_PREFIX}{next(_request_counter):010x}"


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


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "unknown"
    last = frames[-1]
    return f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno}:{last.name}"


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind the request id, render every error as the envelope, log one line per request."""
    request_id = _request_id(request)
    request[REQUEST_ID_KEY] = request_id
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.perf_counter()
    status = 500
    try:
        response = await _handle(request, handler)
        status = response.status
        return response
    except asyncio.CancelledError:
        status = 499  # the client went away
        raise
    finally:
        if (metrics := request.app.get(AGENT_METRICS_KEY)) is not None:
            resource = request.match_info.route.resource
            metrics.observe_request(request.method, resource.canonical if resource else "unmatched",
                                    status, time.perf_counter() - started)
        if request.app[CONFIG_KEY].logging.access_log:
            principal = request.get(PRINCIPAL_KEY)
            route = request.match_info.route.resource
            log.info("http_request", method=request.method,
                     route=route.canonical if route is not None else None,
                     path=request.path, status=status,
                     duration_ms=round((time.perf_counter() - started) * 1000, 2),
                     principal=principal.id if principal else None)


async def _handle(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Run the handler; any error becomes its envelope response.

    An error after a streamed response was started cannot become an envelope (the status is
    sent): it is logged and re-raised, and aiohttp closes the connection, which the client sees
    as a truncated stream.
    """
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = _translate_http(exc)
        if request.get(_STARTED_KEY):
            raise
    except AgentError as exc:
        error = exc
        if request.get(_STARTED_KEY):
            log.warning("stream_aborted", code=exc.code)
            raise
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        error = from_exception(exc)
        if error.status >= 500 or request.get(_STARTED_KEY):
            # The type and place only: an exception's text may carry secrets.
            log.error("request_failed", error_type=type(exc).__name__, where=_where(exc))
            error.details["request_id"] = request[REQUEST_ID_KEY]
        if request.get(_STARTED_KEY):
            raise
    return _error_response(error)


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


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if (scheme.lower() != "bearer" or not token or len(token) > _MAX_TOKEN_LENGTH
            or not _TOKEN.fullmatch(token)):
        raise Unauthorized("Malformed Authorization header; expected 'Bearer <token>'")
    return token


def make_auth_middleware(trusted_proxies: tuple[str, ...]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The auth and rate-limit middleware, with the trusted proxy networks parsed once."""
    trusted = tuple(ipaddress.ip_network(n, strict=False) for n in trusted_proxies)

    @web.middleware
    async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Authenticate, charge the rate limit, check the endpoint's access level."""
        app = request.app
        route_name = request.match_info.route.name
        endpoint: Endpoint | None = app[ENDPOINTS_KEY].get(route_name) if route_name else None
        principal: Principal | None = None
        auth_error: Unauthorized | None = None
        try:
            token = _bearer(request)
            if token is not None:
                principal = app[AUTH_KEY].authenticate(token)
        except Unauthorized as exc:
            auth_error = exc

        limits = app[RATE_LIMITS_KEY]
        if principal is not None:
            limiter, key = limits.authenticated, principal.rate_key
        else:
            limiter, key = limits.unauthenticated, "ip:" + client_address(request, trusted)
        charge = limits.enabled and (endpoint is None or endpoint.rate_limited)
        decision = limiter.charge(key) if charge else limiter.peek(key)
        request[RATE_DECISION_KEY] = decision
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
        return await handler(request)

    return auth_middleware



async def add_standard_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: X-Request-ID and X-RateLimit-* on every response."""
    request[_STARTED_KEY] = True
    # Set before aiohttp's default ("Python/3.x aiohttp/3.x"): no versions for scanners.
    response.headers["Server"] = "dployr-agent"
    request_id = request.get(REQUEST_ID_KEY)
    if request_id is not None:
        response.headers["X-Request-ID"] = request_id
    decision = request.get(RATE_DECISION_KEY)
    if decision is not None:
        for name, value in decision.headers().items():
            if name != "Retry-After" or response.status == 429:
                response.headers[name] = value
