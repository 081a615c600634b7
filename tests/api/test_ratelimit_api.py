"""Rate limits over HTTP: 60/h unauthenticated, 1000/h authenticated, headers on everything."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp.test_utils import TestClient

from agent.testing import FakeClock
from tests.conftest import bearer, login
from tests.support.api import assert_error

_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def _assert_rate_headers(resp: Any, limit: int) -> None:
    for name in _HEADERS:
        assert name in resp.headers, f"{name} missing on {resp.status}"
    assert int(resp.headers["X-RateLimit-Limit"]) == limit
    assert int(resp.headers["X-RateLimit-Remaining"]) >= 0
    assert int(resp.headers["X-RateLimit-Reset"]) >= 1_600_000_000


async def test_61st_unauthenticated_request_is_429(make_client: Callable[..., Any]) -> None:
    """60 requests without a token pass the limiter; the 61st in the hour gets 429."""
    clock = FakeClock()
    client: TestClient = await make_client(clock=clock)
    for n in range(60):
        resp = await client.get("/v1/projects")  # 401, but counted
        assert resp.status == 401
        assert int(resp.headers["X-RateLimit-Remaining"]) == 59 - n
    resp = await client.get("/v1/projects")
    error = await assert_error(resp, 429, "rate_limited")
    assert "60" in error["message"]
    assert int(resp.headers["Retry-After"]) == 60
    _assert_rate_headers(resp, 60)
    assert resp.headers["X-RateLimit-Remaining"] == "0"
    # Recovery: one request per minute comes back, the whole allowance after the hour.
    clock.advance(60)
    assert (await client.get("/v1/projects")).status == 401
    assert (await client.get("/v1/projects")).status == 429
    clock.advance(3600)
    resp = await client.get("/v1/projects")
    assert resp.status == 401 and resp.headers["X-RateLimit-Remaining"] == "59"


async def test_1001st_authenticated_request_is_429(make_client: Callable[..., Any]) -> None:
    """An authenticated principal gets 1000 requests an hour; the 1001st gets 429."""
    clock = FakeClock()
    client: TestClient = await make_client(clock=clock)
    headers = bearer((await login(client))["access_token"])
    for _ in range(999):
        resp = await client.get("/v1/auth/me", headers=headers)
        assert resp.status == 200
    resp = await client.get("/v1/auth/me", headers=headers)
    assert resp.status == 200 and resp.headers["X-RateLimit-Remaining"] == "0"
    resp = await client.get("/v1/auth/me", headers=headers)
    await assert_error(resp, 429, "rate_limited")
    assert int(resp.headers["Retry-After"]) == 4  # 3600 / 1000 = 3.6 s, rounded up
    _assert_rate_headers(resp, 1000)
    # Another session of the same user shares the principal's budget...
    other = bearer((await login(client))["access_token"])
    assert (await client.get("/v1/auth/me", headers=other)).status == 429
    # ...and time brings it back.
    clock.advance(3600)
    fresh = bearer((await login(client))["access_token"])  # the old access token expired too
    resp = await client.get("/v1/auth/me", headers=fresh)
    assert resp.status == 200 and resp.headers["X-RateLimit-Remaining"] == "999"


async def test_rate_headers_on_every_kind_of_response(make_client: Callable[..., Any]) -> None:
    """Success, every error status, 404 and 405 alike carry X-RateLimit-* and X-Request-ID."""
    client: TestClient = await make_client(server={"max_body_bytes": 4096})
    admin = bearer((await login(client))["access_token"])
    await client.post("/v1/users", headers=admin,
                      json={"email": "v@example.com", "password": "viewer-pass", "role": "viewer"})
    viewer = bearer((await login(client, "v@example.com", "viewer-pass"))["access_token"])
    project = await (await client.post("/v1/projects", json={"name": "one"}, headers=admin)).json()
    cases = [
        (200, "GET", "/v1/projects", admin, None, None),
        (201, "POST", "/v1/projects", admin, {"name": "two"}, None),
        (204, "DELETE", f"/v1/projects/{project['id']}", admin, None, None),
        (400, "POST", "/v1/projects", admin, {"name": "Not A Label"}, None),
        (401, "GET", "/v1/projects", {}, None, None),
        (403, "POST", "/v1/projects", viewer, {"name": "three"}, None),
        (404, "GET", "/v1/nothing-here", admin, None, None),
        (404, "GET", "/v1/projects/prj_unknown", admin, None, None),
        (405, "PUT", "/v1/projects", admin, None, None),
        (409, "POST", "/v1/projects", admin, {"name": "two"}, None),
        (413, "POST", "/v1/projects", admin, None, b"{" + b" " * 10_000 + b"}"),
        (415, "POST", "/v1/projects", {**admin, "Content-Type": "text/plain"}, None, b"name=x"),
        (200, "GET", "/v1/health", {}, None, None),
        (200, "GET", "/v1/openapi.json", {}, None, None),
    ]
    for status, method, path, headers, json_body, raw in cases:
        resp = await client.request(method, path, headers=headers, json=json_body, data=raw)
        await resp.read()
        assert resp.status == status, f"{method} {path}: {resp.status} {await resp.text()}"
        limit = 1000 if headers.get("Authorization") else 60
        _assert_rate_headers(resp, limit)
        assert resp.headers.get("X-Request-ID"), f"{method} {path}"


async def test_health_is_not_counted(make_client: Callable[..., Any]) -> None:
    """Health checks show the headers but do not use up the allowance."""
    client: TestClient = await make_client()
    for _ in range(100):
        resp = await client.get("/v1/health")
        assert resp.status == 200
    assert resp.headers["X-RateLimit-Remaining"] == "60"


async def test_forwarded_for_is_honoured_only_from_trusted_proxies(make_client: Callable[..., Any]) -> None:
    """Behind a trusted proxy each X-Forwarded-For client has its own budget."""
    client: TestClient = await make_client(server={"trusted_proxies": ["127.0.0.1/32", "10.0.0.0/8"]},
                                           ratelimit={"unauthenticated_per_hour": 3})
    first = {"X-Forwarded-For": "203.0.113.5"}
    for _ in range(3):
        assert (await client.get("/v1/projects", headers=first)).status == 401
    assert (await client.get("/v1/projects", headers=first)).status == 429
    # Another client behind the proxy is unaffected...
    assert (await client.get("/v1/projects", headers={"X-Forwarded-For": "203.0.113.6"})).status == 401
    # ...the nearest untrusted hop counts, so a spoofed left-most entry does not help...
    spoofed = {"X-Forwarded-For": "1.2.3.4, 203.0.113.5, 10.1.1.1"}
    assert (await client.get("/v1/projects", headers=spoofed)).status == 429


async def test_forwarded_for_is_ignored_from_untrusted_peers(make_client: Callable[..., Any]) -> None:
    """Without a trusted proxy, X-Forwarded-For cannot buy a fresh budget."""
    client: TestClient = await make_client(ratelimit={"unauthenticated_per_hour": 3})
    for n in range(3):
        resp = await client.get("/v1/projects", headers={"X-Forwarded-For": f"203.0.113.{n}"})
        assert resp.status == 401
    resp = await client.get("/v1/projects", headers={"X-Forwarded-For": "203.0.113.99"})
    assert resp.status == 429


async def test_limits_are_configurable_and_can_be_disabled(make_client: Callable[..., Any]) -> None:
    """ratelimit.enabled=false never answers 429."""
    client: TestClient = await make_client(ratelimit={"enabled": False, "unauthenticated_per_hour": 1})
    for _ in range(5):
        resp = await client.get("/v1/projects")
        assert resp.status == 401
    _assert_rate_headers(resp, 1)
