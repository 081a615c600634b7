"""The error envelope for each error class, and client input never causing a 5xx."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from agent.api.routing import ENDPOINTS_KEY
from agent.app import AdminSeed, create_app
from tests.conftest import Client, bearer, login
from tests.support.agent import ADMIN_EMAIL, ADMIN_PASSWORD, make_config
from tests.support.api import assert_error, made_up_path
from tests.support.logs import captured_agent_log

_JSON = {"Content-Type": "application/json"}

BAD_BODIES: dict[str, bytes] = {
    "malformed": b'{"name": ',
    "trailing_garbage": b'{"name": "x"} x',
    "invalid_utf8": b'{"name": "\xff\xfe"}',
    "invalid_utf8_outside_strings": b"\xff{}",
    "lone_surrogate": b'{"name": "ok", "description": "\\ud800"}',
    "deeply_nested_array": b"[" * 100_000 + b"]" * 100_000,
    "deeply_nested_object": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "nested_in_field": b'{"name": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
    "array": b"[]",
    "string": b'"text"',
    "number": b"42",
    "null": b"null",
    "true": b"true",
    "huge_number": b'{"name": 1e999999}',
    "huge_integer": b'{"name": ' + b"9" * 5000 + b"}",
    "wrong_type": b'{"name": 5, "password": 5, "email": 5, "role": 5, "refresh_token": 5}',
    "unknown_field": b'{"zzz_unknown": 1}',
    "nul_byte": b'{"name": "a\\u0000b", "email": "a\\u0000@b.c"}',
}


def _body_endpoints(client: TestClient) -> list[Any]:
    return [ep for ep in client.app[ENDPOINTS_KEY].values() if ep.body is not None]  # type: ignore[index]


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
async def test_bad_bodies_are_400_on_every_route(make_client: Callable[..., Any], case: str) -> None:
    """Every route with a body answers bad JSON with 400 invalid_request naming the field."""
    client: TestClient = await make_client(ratelimit={"enabled": False})
    admin = bearer((await login(client))["access_token"])
    for endpoint in _body_endpoints(client):
        resp = await client.request(endpoint.method, made_up_path(endpoint),
                                    data=BAD_BODIES[case], headers={**admin, **_JSON})
        where = f"{case}: {endpoint.method} {endpoint.path}"
        if resp.status == 404 and "{" in endpoint.path:
            continue  # the made-up resource was looked up first: fine, still not a 5xx
        assert resp.status == 400, f"{where}: {resp.status} {await resp.text()}"
        error = await assert_error(resp, 400, "invalid_request")
        assert error["details"]["field"] and error["details"]["issue"], where


async def test_validation_error_names_field_and_issue(client: Client, admin_headers: dict[str, str]) -> None:
    """A field failing validation is named in details.field with the reason in details.issue."""
    resp = await client.post("/v1/projects", json={"name": "Not A Label"}, headers=admin_headers)
    error = await assert_error(resp, 400, "invalid_request")
    assert error["details"]["field"] == "name"
    assert "pattern" in error["details"]["issue"]
    resp = await client.post("/v1/projects", json={"name": "ok", "color": "red"}, headers=admin_headers)
    error = await assert_error(resp, 400, "invalid_request")
    assert error["details"] == {"field": "color", "issue": "Unknown field"}
    resp = await client.post("/v1/projects", json={"name": 5}, headers=admin_headers)
    error = await assert_error(resp, 400, "invalid_request")
    assert error["details"]["field"] == "name"
    resp = await client.post("/v1/projects", json=[], headers=admin_headers)
    error = await assert_error(resp, 400, "invalid_request")
    assert error["details"] == {"field": "body", "issue": "Body must be a JSON object"}


async def test_secret_input_is_never_echoed(client: Client) -> None:
    """A rejected value (perhaps a password) does not appear in the error."""
    canary = "Canary-Secret-7f3a9"
    resp = await client.post("/v1/auth/login", json={"email": "x@example.com", "password": 12345,
                                                     "extra": canary})
    assert canary not in await resp.text()
    resp = await client.post("/v1/auth/login", json={"email": canary * 100, "password": canary})
    assert resp.status == 400 and canary not in await resp.text()


async def test_bad_query_parameters_are_400(client: Client, admin_headers: dict[str, str]) -> None:
    """limit and cursor are validated: 400 naming the parameter."""
    for query, field in [("limit=abc", "limit"), ("limit=0", "limit"), ("limit=100000", "limit"),
                         ("cursor=../../x", "cursor"), ("limit=", "limit")]:
        resp = await client.get(f"/v1/projects?{query}", headers=admin_headers)
        error = await assert_error(resp, 400, "invalid_request")
        assert error["details"]["field"] == field, query


async def test_401_envelope(client: Client) -> None:
    """No token: 401 unauthorized with WWW-Authenticate: Bearer."""
    resp = await client.get("/v1/projects")
    await assert_error(resp, 401, "unauthorized")
    assert resp.headers["WWW-Authenticate"] == "Bearer"


async def test_403_envelope(client: Client, role_headers: dict[str, dict[str, str]]) -> None:
    """A role too low: 403 forbidden naming the role needed."""
    resp = await client.get("/v1/users", headers=role_headers["developer"])
    error = await assert_error(resp, 403, "forbidden")
    assert error["details"] == {"required_role": "admin", "your_role": "developer"}


async def test_404_for_unknown_routes_and_resources(client: Client, admin_headers: dict[str, str]) -> None:
    """An unknown route and an unknown id both get 404 not_found in the envelope."""
    await assert_error(await client.get("/v1/nope"), 404, "not_found")
    await assert_error(await client.get("/nope/at/all", headers=admin_headers), 404, "not_found")
    await assert_error(await client.get("/v1/projects/prj_missing", headers=admin_headers),
                       404, "not_found")


async def test_405_lists_allowed_methods(client: Client, admin_headers: dict[str, str]) -> None:
    """A wrong method gets 405 with an Allow header and the methods in details."""
    resp = await client.put("/v1/projects", headers=admin_headers, json={})
    error = await assert_error(resp, 405, "method_not_allowed")
    assert set(resp.headers["Allow"].split(", ")) == {"GET", "POST"}
    assert set(error["details"]["allowed"]) == {"GET", "POST"}
    resp = await client.patch("/v1/health")
    await assert_error(resp, 405, "method_not_allowed")
    assert resp.headers["Allow"] == "GET"


async def test_409_on_conflict(client: Client, admin_headers: dict[str, str]) -> None:
    """A duplicate name gets 409 conflict naming the field."""
    await client.post("/v1/projects", json={"name": "dup"}, headers=admin_headers)
    resp = await client.post("/v1/projects", json={"name": "dup"}, headers=admin_headers)
    error = await assert_error(resp, 409, "conflict")
    assert error["details"]["field"] == "name"


async def test_413_for_a_2mb_body(client: Client, admin_headers: dict[str, str]) -> None:
    """A 2 MB body (over the 1 MiB default) gets 413 payload_too_large."""
    body = b'{"name": "x", "description": "' + b"a" * (2 * 1024 * 1024) + b'"}'
    resp = await client.post("/v1/projects", data=io.BytesIO(body), headers={**admin_headers, **_JSON})
    await assert_error(resp, 413, "payload_too_large")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/xml"])
async def test_415_for_other_content_types(client: Client, admin_headers: dict[str, str],
                                           content_type: str) -> None:
    """A body that is not application/json gets 415 unsupported_media_type."""
    resp = await client.post("/v1/projects", data=b'{"name": "x"}',
                             headers={**admin_headers, "Content-Type": content_type})
    await assert_error(resp, 415, "unsupported_media_type")


async def test_json_with_charset_is_accepted(client: Client, admin_headers: dict[str, str]) -> None:
    """application/json; charset=utf-8 is JSON."""
    resp = await client.post("/v1/projects", data=b'{"name": "charset"}',
                             headers={**admin_headers, "Content-Type": "application/json; charset=utf-8"})
    assert resp.status == 201


async def test_429_envelope(make_client: Callable[..., Any]) -> None:
    """Over the limit: 429 rate_limited with Retry-After."""
    client: TestClient = await make_client(ratelimit={"unauthenticated_per_hour": 1})
    await client.get("/v1/projects")
    resp = await client.get("/v1/projects")
    await assert_error(resp, 429, "rate_limited")
    assert int(resp.headers["Retry-After"]) > 0


async def test_500_hides_internals_and_logs_no_traceback(aiohttp_client: Any, state_dir: Path) -> None:
    """A crash is 500 with the request id only; the log has its type and place, no text."""
    secret_text = "db-password=Hunter2-Canary"

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError(secret_text)

    app = create_app(make_config(state_dir, logging={"access_log": True}),
                     admin=AdminSeed(ADMIN_EMAIL, ADMIN_PASSWORD))
    app.router.add_get("/v1/test-only/boom", boom)
    with captured_agent_log() as log:
        client: TestClient = await aiohttp_client(app)
        resp = await client.get("/v1/test-only/boom", headers={"X-Request-ID": "req-boom-1"})
        error = await assert_error(resp, 500, "internal_error")
        text = await resp.text()
    assert error["details"] == {"request_id": "req-boom-1"}
    assert resp.headers["X-Request-ID"] == "req-boom-1"
    assert secret_text not in text and "RuntimeError" not in text and "Traceback" not in text
    assert secret_text not in log.text and "Traceback" not in log.text
    [failure] = log.events("request_failed")
    assert failure["error_type"] == "RuntimeError" and failure["request_id"] == "req-boom-1"
    assert "test_errors.py" in failure["where"]
    [line] = [r for r in log.events("http_request") if r.get("path") == "/v1/test-only/boom"]
    assert line["status"] == 500 and line["request_id"] == "req-boom-1"
    assert line["method"] == "GET" and isinstance(line["duration_ms"], float)


async def test_request_id_on_every_response(client: Client, admin_headers: dict[str, str]) -> None:
    """Every response has X-Request-ID; a valid incoming one is echoed, a bad one replaced."""
    resp = await client.get("/v1/health")
    assert resp.headers["X-Request-ID"].startswith("req_")
    resp = await client.get("/v1/nope", headers={"X-Request-ID": "trace-abc.123_X"})
    assert resp.headers["X-Request-ID"] == "trace-abc.123_X"
    for bad in ("has space", "x" * 65, "semi;colon", ""):
        resp = await client.get("/v1/health", headers={"X-Request-ID": bad})
        assert resp.headers["X-Request-ID"] != bad and resp.headers["X-Request-ID"].startswith("req_")
    resp = await client.delete("/v1/projects/prj_missing", headers=admin_headers)
    assert resp.status == 404 and resp.headers["X-Request-ID"]


async def test_server_header_names_no_versions(client: Client) -> None:
    """The Server header does not reveal Python or aiohttp versions."""
    for resp in (await client.get("/v1/health"), await client.get("/v1/nope")):
        assert resp.headers["Server"] == "dployr-agent"


async def test_error_after_a_stream_started_truncates_it(aiohttp_client: Any, state_dir: Path) -> None:
    """A failure mid-stream truncates the stream (no second response inside it), logged safely."""
    import aiohttp

    from agent.api.middleware import prepare_stream

    async def stream_then_fail(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = "text/plain"
        await prepare_stream(request, resp)  # how the agent's streaming handlers start
        await resp.write(b"line 1\n")
        raise RuntimeError("stream-secret-canary")

    app = create_app(make_config(state_dir), admin=AdminSeed(ADMIN_EMAIL, ADMIN_PASSWORD))
    app.router.add_get("/v1/test-only/stream", stream_then_fail)
    with captured_agent_log() as log:
        client: TestClient = await aiohttp_client(app)
        resp = await client.get("/v1/test-only/stream")
        assert resp.status == 200 and resp.headers["X-Request-ID"]
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
        assert (await client.get("/v1/health")).status == 200
    assert [r["error_type"] for r in log.events("request_failed")] == ["RuntimeError"]
    assert "stream-secret-canary" not in log.text
