"""The first contact: health, login, a project, the envelope."""

from __future__ import annotations

from tests.conftest import Client, bearer, login


async def test_health_answers_without_auth(client: Client) -> None:
    """GET /v1/health needs no token and reports status, version and uptime."""
    resp = await client.get("/v1/health")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ok" and body["version"] and body["uptime_seconds"] >= 0


async def test_login_then_create_and_list_project(client: Client) -> None:
    """A logged-in admin creates a project and sees it listed."""
    tokens = await login(client)
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 3600
    headers = bearer(tokens["access_token"])
    resp = await client.post("/v1/projects", json={"name": "my-project"}, headers=headers)
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    resp = await client.get("/v1/projects", headers=headers)
    assert [p["id"] for p in (await resp.json())["data"]] == [created["id"]]
