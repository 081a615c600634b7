"""The role matrix, generated from the app's endpoint registry so that every route is covered,
including routes added later by other modules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from agent.api.routing import ENDPOINTS_KEY, Endpoint
from agent.auth import ROLES, role_allows
from tests.conftest import bearer, login
from tests.support.agent import ADMIN_EMAIL, ADMIN_PASSWORD
from tests.support.api import assert_error, made_up_path

_TIMEOUT = aiohttp.ClientTimeout(total=10)
_PASSWORDS = {"admin": ADMIN_PASSWORD, "developer": "developer-pass", "viewer": "viewer-pass"}
_EMAILS = {"admin": ADMIN_EMAIL, "developer": "developer@example.com", "viewer": "viewer@example.com"}


async def _matrix_client(make_client: Callable[..., Any]) -> TestClient:
    # Rate limits are tested on their own; here they would only get in the way.
    client: TestClient = await make_client(ratelimit={"enabled": False})
    admin = bearer((await login(client))["access_token"])
    for role in ("developer", "viewer"):
        resp = await client.post("/v1/users", headers=admin,
                                 json={"email": _EMAILS[role], "password": _PASSWORDS[role], "role": role})
        assert resp.status == 201, await resp.text()
    return client


async def _call(client: TestClient, endpoint: Endpoint, headers: dict[str, str]) -> aiohttp.ClientResponse:
    kwargs: dict[str, Any] = {"headers": headers, "timeout": _TIMEOUT}
    if endpoint.body is not None:
        kwargs["json"] = {}
    resp = await client.request(endpoint.method, made_up_path(endpoint), **kwargs)
    await resp.read()
    return resp


def _endpoints(client: TestClient) -> list[Endpoint]:
    endpoints = list(client.app[ENDPOINTS_KEY].values())  # type: ignore[index]
    assert len(endpoints) >= 14  # the foundation's own; others add theirs
    return endpoints


async def test_no_token_gets_401_on_every_non_public_route(make_client: Callable[..., Any]) -> None:
    """Every route that is not public answers 401 with WWW-Authenticate: Bearer without a token."""
    client = await _matrix_client(make_client)
    for endpoint in _endpoints(client):
        if endpoint.access == "public":
            continue
        resp = await _call(client, endpoint, {})
        assert resp.status == 401, f"{endpoint.method} {endpoint.path}: {resp.status}"
        await assert_error(resp, 401, "unauthorized")
        assert resp.headers["WWW-Authenticate"] == "Bearer"


async def test_roles_are_enforced_on_every_route(make_client: Callable[..., Any]) -> None:
    """A role below the route's level gets 403 forbidden; a permitted role never 401/403/500."""
    client = await _matrix_client(make_client)
    checked = 0
    for endpoint in _endpoints(client):
        for role in ROLES:
            # A fresh session per call: a permitted call may end it (logout).
            token = (await login(client, _EMAILS[role], _PASSWORDS[role]))["access_token"]
            resp = await _call(client, endpoint, bearer(token))
            where = f"{role} {endpoint.method} {endpoint.path} ({endpoint.access})"
            if endpoint.access != "public" and not role_allows(role, endpoint.access):
                error = await assert_error(resp, 403, "forbidden")
                assert error["details"]["required_role"] == endpoint.access, where
            else:
                assert resp.status not in (401, 403), f"{where}: {resp.status}"
                assert resp.status != 500, f"{where}: 500 {await resp.text()}"
            checked += 1
    assert checked == 3 * len(_endpoints(client))


async def test_public_routes_need_no_token(make_client: Callable[..., Any]) -> None:
    """Public routes never answer 401 or 403 to a caller without a token."""
    client = await _matrix_client(make_client)
    for endpoint in _endpoints(client):
        if endpoint.access == "public":
            resp = await _call(client, endpoint, {})
            assert resp.status not in (401, 403), f"{endpoint.method} {endpoint.path}"


async def test_viewer_reads_but_cannot_write_projects(make_client: Callable[..., Any]) -> None:
    """Concretely: a viewer lists projects but gets 403 creating one; a developer creates it."""
    client = await _matrix_client(make_client)
    viewer = bearer((await login(client, _EMAILS["viewer"], _PASSWORDS["viewer"]))["access_token"])
    developer = bearer((await login(client, _EMAILS["developer"], _PASSWORDS["developer"]))["access_token"])
    assert (await client.get("/v1/projects", headers=viewer)).status == 200
    await assert_error(await client.post("/v1/projects", json={"name": "web"}, headers=viewer),
                       403, "forbidden")
    assert (await client.post("/v1/projects", json={"name": "web"}, headers=developer)).status == 201
    await assert_error(await client.get("/v1/users", headers=developer), 403, "forbidden")
