"""The canonical access line through the real middleware: fields, order, and what never appears."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from agent.app import AdminSeed, create_app
from tests.conftest import bearer, login
from tests.support.agent import ADMIN_EMAIL, ADMIN_PASSWORD, make_config
from tests.support.logs import captured_agent_log

FIELDS = ["method", "route", "path", "status", "duration_ms", "principal", "event", "request_id",
          "level", "timestamp"]


async def test_access_lines_carry_the_fields_and_no_secrets(aiohttp_client: Any,
                                                            state_dir: Path) -> None:
    """One line per request with the route pattern, the path without its query string, the
    status, the principal's id; no token, header or query value is ever written."""
    app = create_app(make_config(state_dir, logging={"access_log": True}),
                     admin=AdminSeed(ADMIN_EMAIL, ADMIN_PASSWORD))
    with captured_agent_log("info") as log:
        client: TestClient = await aiohttp_client(app)
        tokens = await login(client)
        token = tokens["access_token"]
        headers = {**bearer(token), "X-Request-ID": "trace-42", "Cookie": "session=cookie-canary"}
        resp = await client.get("/v1/projects?cursor=query_canary&limit=5", headers=headers)
        assert resp.status == 200
        me = await (await client.get("/v1/auth/me", headers=bearer(token))).json()
        await client.get("/v1/no-such-thing")
        await client.get("/v1/projects", headers=bearer("not.a-valid.token"))
        lines = log.events("http_request")
        text = log.text
    for secret in (token, tokens["refresh_token"], ADMIN_PASSWORD, "query_canary", "cookie-canary"):
        assert secret not in text
    assert all(list(line) == FIELDS for line in lines)
    by_path = {(line["path"], line["status"]): line for line in lines}
    listed = by_path[("/v1/projects", 200)]
    assert listed["route"] == "/v1/projects" and listed["method"] == "GET"
    assert listed["principal"] == me["id"] and listed["request_id"] == "trace-42"
    assert listed["level"] == "info" and isinstance(listed["duration_ms"], float)
    missing = by_path[("/v1/no-such-thing", 404)]
    assert missing["route"] is None and missing["principal"] is None
    refused = by_path[("/v1/projects", 401)]
    assert refused["principal"] is None and refused["request_id"].startswith("req_")
    login_line = by_path[("/v1/auth/login", 200)]
    assert login_line["route"] == "/v1/auth/login" and login_line["principal"] is None


async def test_access_log_off_writes_no_request_lines(aiohttp_client: Any, state_dir: Path) -> None:
    """[logging] access_log = false: requests are answered and nothing is logged for them."""
    app = create_app(make_config(state_dir, logging={"access_log": False}),
                     admin=AdminSeed(ADMIN_EMAIL, ADMIN_PASSWORD))
    with captured_agent_log("info") as log:
        client: TestClient = await aiohttp_client(app)
        assert (await client.get("/v1/health")).status == 200
        assert log.events("http_request") == []


async def test_lines_logged_during_a_request_carry_its_id_and_no_other(
        aiohttp_client: Any, state_dir: Path) -> None:
    """Two overlapping requests each log with their own request id; a line logged outside any
    request has none."""
    import asyncio

    import structlog
    from aiohttp import web

    both_inside = asyncio.Barrier(2)

    async def work(request: web.Request) -> web.Response:
        await both_inside.wait()  # the two requests are in flight at the same time
        structlog.get_logger("t").info("working", tag=request.query["tag"])
        return web.Response(text="ok")

    app = create_app(make_config(state_dir), admin=AdminSeed(ADMIN_EMAIL, ADMIN_PASSWORD))
    app.router.add_get("/v1/test-only/work", work)
    with captured_agent_log("info") as log:
        client: TestClient = await aiohttp_client(app)
        responses = await asyncio.gather(
            client.get("/v1/test-only/work?tag=a", headers={"X-Request-ID": "id-a"}),
            client.get("/v1/test-only/work?tag=b", headers={"X-Request-ID": "id-b"}))
        assert [r.status for r in responses] == [200, 200]
        structlog.get_logger("t").info("outside")
        lines = {r["event"] + r.get("tag", ""): r for r in log.records()}
    assert lines["workinga"]["request_id"] == "id-a"
    assert lines["workingb"]["request_id"] == "id-b"
    assert "request_id" not in lines["outside"]
