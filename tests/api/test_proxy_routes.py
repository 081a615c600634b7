"""The proxy routes API: CRUD, validation, roles, events (built-in backend, no traffic)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from agent.app import AdminSeed, create_app
from agent.keys import BUS_KEY, DB_KEY, ROUTES_KEY
from agent.testing import MemoryServiceLocator
from tests.conftest import bearer, login
from tests.support.agent import ADMIN_EMAIL, ADMIN_PASSWORD, make_config

Factory = Callable[..., Any]


@pytest.fixture
async def api(aiohttp_client: Factory, tmp_path: Path) -> tuple[TestClient, dict[str, str]]:
    """The agent with services 'svc-a' and 'svc-b' known to the locator; admin headers."""
    locator = MemoryServiceLocator()
    locator.add("svc-a")
    locator.add("svc-b")
    app = create_app(make_config(tmp_path / "state"), locator=locator,
                     admin=AdminSeed(ADMIN_EMAIL, ADMIN_PASSWORD))
    client = await aiohttp_client(app)
    return client, bearer((await login(client))["access_token"])


async def _post(client: TestClient, headers: dict[str, str], **body: Any) -> tuple[int, Any]:
    resp = await client.post("/v1/proxy/routes", json=body, headers=headers)
    return resp.status, await resp.json()


async def test_create_get_list_delete_round_trip(api: tuple[TestClient, dict[str, str]]) -> None:
    """A route is created as the seed's body, listed, fetched, deleted, then gone."""
    client, headers = api
    status, route = await _post(client, headers, domain="Example.COM.", service_id="svc-a",
                                port=3000)
    assert status == 201, route
    assert route["id"].startswith("rte_")
    assert (route["domain"], route["path_prefix"], route["service_id"], route["port"]) == \
        ("example.com", "/", "svc-a", 3000)
    assert route["created_at"].endswith(("Z", "+00:00"))

    resp = await client.get(f"/v1/proxy/routes/{route['id']}", headers=headers)
    assert resp.status == 200 and await resp.json() == route
    resp = await client.get("/v1/proxy/routes", headers=headers)
    assert (await resp.json())["data"] == [route]

    resp = await client.delete(f"/v1/proxy/routes/{route['id']}", headers=headers)
    assert resp.status == 204
    for method in ("GET", "DELETE"):
        resp = await client.request(method, f"/v1/proxy/routes/{route['id']}", headers=headers)
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "not_found"


async def test_list_pages_and_filters_by_service(api: tuple[TestClient, dict[str, str]]) -> None:
    """Routes come back in pages (limit + cursor) and can be filtered by service."""
    client, headers = api
    ids = []
    for i, service in enumerate(("svc-a", "svc-b", "svc-a")):
        status, route = await _post(client, headers, domain=f"r{i}.example.com",
                                    service_id=service)
        assert status == 201
        ids.append(route["id"])
    resp = await client.get("/v1/proxy/routes?limit=2", headers=headers)
    page = await resp.json()
    assert [r["id"] for r in page["data"]] == ids[:2] and page["next_cursor"] == ids[1]
    resp = await client.get(f"/v1/proxy/routes?limit=2&cursor={ids[1]}", headers=headers)
    page = await resp.json()
    assert [r["id"] for r in page["data"]] == ids[2:] and page["next_cursor"] is None
    resp = await client.get("/v1/proxy/routes?service_id=svc-a", headers=headers)
    assert [r["id"] for r in (await resp.json())["data"]] == [ids[0], ids[2]]


@pytest.mark.parametrize(("domain", "stored"), [
    ("bücher.example", "xn--bcher-kva.example"),
    ("\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25.com", "example.com"),  # full-width
    ("xn--bcher-kva.example", "xn--bcher-kva.example"),
    ("*.Example.com", "*.example.com"),
    ("a-b.c0.example", "a-b.c0.example"),
    ("localhost", "localhost"),
])
async def test_domains_are_stored_canonical(api: tuple[TestClient, dict[str, str]], domain: str,
                                            stored: str) -> None:
    """Unicode is IDNA-encoded, case folded, a leading wildcard label kept."""
    client, headers = api
    status, route = await _post(client, headers, domain=domain, service_id="svc-a")
    assert status == 201, route
    assert route["domain"] == stored


@pytest.mark.parametrize("domain", [
    "exa mple.com", "-a.example.com", "a-.example.com", "a..example.com", ".example.com",
    "a_b.example.com", "a.*.example.com", "*example.com", "a*.example.com", "*", "*.",
    "example.*", "x" * 64 + ".com", ".".join(["a" * 60] * 5), "xn--zz.example",
    "1.2.3.4", "example.com/path", "http://example.com", "", "bü cher.example", "☃" * 64 + ".x",
])
async def test_invalid_domains_are_refused(api: tuple[TestClient, dict[str, str]],
                                           domain: str) -> None:
    """Bad labels, misplaced wildcards, too long, bad IDNA, IPs: 400 naming 'domain'."""
    client, headers = api
    status, body = await _post(client, headers, domain=domain, service_id="svc-a")
    assert status == 400, body
    assert body["error"]["code"] == "invalid_request"
    assert body["error"]["details"]["field"] == "domain"
    assert body["error"]["details"]["issue"]


@pytest.mark.parametrize(("body", "field"), [
    ({"port": 0}, "port"), ({"port": 65536}, "port"), ({"port": "80"}, "port"),
    ({"port": 80.5}, "port"), ({"service_id": "nope"}, "service_id"),
    ({"service_id": ""}, "service_id"), ({"path_prefix": "api"}, "path_prefix"),
    ({"path_prefix": "/a/../b"}, "path_prefix"), ({"path_prefix": "/a%20b"}, "path_prefix"),
    ({"path_prefix": "/a*"}, "path_prefix"), ({"path_prefix": "/a?b"}, "path_prefix"),
    ({"extra": 1}, "extra"),
])
async def test_invalid_fields_are_refused(api: tuple[TestClient, dict[str, str]],
                                          body: dict[str, Any], field: str) -> None:
    """Bad port, unknown service, bad path prefix, unknown field: 400 naming the field."""
    client, headers = api
    status, answer = await _post(client, headers, **{"domain": "ok.example.com",
                                                     "service_id": "svc-a", **body})
    assert status == 400, answer
    assert answer["error"]["details"]["field"] == field


async def test_duplicate_domain_and_prefix_is_409(api: tuple[TestClient, dict[str, str]]) -> None:
    """The same domain and path prefix twice is a conflict, however they are spelled."""
    client, headers = api
    assert (await _post(client, headers, domain="dup.example.com", service_id="svc-a"))[0] == 201
    status, body = await _post(client, headers, domain="DUP.example.com.", service_id="svc-b",
                               path_prefix="/")
    assert status == 409 and body["error"]["code"] == "conflict"
    assert (await _post(client, headers, domain="dup.example.com", service_id="svc-b",
                        path_prefix="/api/"))[0] == 201
    status, _ = await _post(client, headers, domain="dup.example.com", service_id="svc-a",
                            path_prefix="//api")
    assert status == 409


async def test_path_prefixes_are_normalized(api: tuple[TestClient, dict[str, str]]) -> None:
    """Trailing and doubled slashes are folded into one canonical prefix."""
    client, headers = api
    status, route = await _post(client, headers, domain="p.example.com", service_id="svc-a",
                                path_prefix="//api//v1/")
    assert status == 201 and route["path_prefix"] == "/api/v1"


async def test_roles_viewers_read_admins_write(client: TestClient,
                                               role_headers: dict[str, dict[str, str]]) -> None:
    """Viewers and developers may list routes; only admins create or delete them."""
    for role in ("viewer", "developer", "admin"):
        resp = await client.get("/v1/proxy/routes", headers=role_headers[role])
        assert resp.status == 200, role
    for role in ("viewer", "developer"):
        resp = await client.post("/v1/proxy/routes", headers=role_headers[role],
                                 json={"domain": "x.example.com", "service_id": "s"})
        assert resp.status == 403, role
        resp = await client.delete("/v1/proxy/routes/rte_x", headers=role_headers[role])
        assert resp.status == 403, role
    resp = await client.get("/v1/proxy/routes")
    assert resp.status == 401


async def test_changes_are_events_in_the_outbox(api: tuple[TestClient, dict[str, str]]) -> None:
    """route.created and route.deleted are written with the change and published."""
    client, headers = api
    app = client.server.app
    sub = app[BUS_KEY].subscribe()
    _, route = await _post(client, headers, domain="ev.example.com", service_id="svc-a", port=80)
    await client.delete(f"/v1/proxy/routes/{route['id']}", headers=headers)
    rows = app[DB_KEY].query("SELECT type, data FROM events WHERE type LIKE 'route.%' ORDER BY seq")
    assert [r["type"] for r in rows] == ["route.created", "route.deleted"]
    published = [await sub.get(), await sub.get()]
    assert [e.type for e in published] == ["route.created", "route.deleted"]
    assert published[0].data == {"route_id": route["id"], "domain": "ev.example.com",
                                 "path_prefix": "/", "service_id": "svc-a", "port": 80}


async def test_deleting_a_services_routes(api: tuple[TestClient, dict[str, str]]) -> None:
    """delete_routes_for_service removes that service's routes only, each with its event."""
    client, headers = api
    for name, service in (("a1", "svc-a"), ("a2", "svc-a"), ("b1", "svc-b")):
        await _post(client, headers, domain=f"{name}.example.com", service_id=service)
    routes = client.server.app[ROUTES_KEY]
    deleted = await routes.delete_routes_for_service("svc-a")
    assert sorted(r.domain for r in deleted) == ["a1.example.com", "a2.example.com"]
    assert [r.domain for r in routes.all()] == ["b1.example.com"]
    rows = client.server.app[DB_KEY].query("SELECT type FROM events WHERE type = 'route.deleted'")
    assert len(rows) == 2


async def test_proxy_status_reports_the_builtin_listener(
        api: tuple[TestClient, dict[str, str]]) -> None:
    """GET /v1/proxy/status says which backend runs, where, and how many routes it serves."""
    client, headers = api
    await _post(client, headers, domain="s.example.com", service_id="svc-a")
    resp = await client.get("/v1/proxy/status", headers=headers)
    body = await resp.json()
    assert resp.status == 200, body
    assert body["backend"] == "builtin" and body["reachable"] and body["in_sync"]
    assert body["routes"] == 1 and body["listen"][0].startswith("127.0.0.1:")
    assert body["error"] is None


async def test_openapi_describes_the_routes_endpoints(client: TestClient) -> None:
    """The OpenAPI document lists the proxy routes operations."""
    spec = await (await client.get("/v1/openapi.json")).json()
    assert {"get", "post"} <= set(spec["paths"]["/v1/proxy/routes"])
    assert {"get", "delete"} <= set(spec["paths"]["/v1/proxy/routes/{id}"])
