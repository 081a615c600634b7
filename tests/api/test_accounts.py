"""Users and machine tokens over the API (admin only)."""

from __future__ import annotations

from tests.conftest import Client, bearer, login
from tests.support.agent import ADMIN_EMAIL
from tests.support.api import assert_error


async def test_add_list_and_remove_users(client: Client, admin_headers: dict[str, str]) -> None:
    """An admin adds a user who can log in, sees them listed, removes them: their token dies."""
    resp = await client.post("/v1/users", headers=admin_headers,
                             json={"email": "Dev@Example.COM", "password": "dev-password",
                                   "role": "developer"})
    assert resp.status == 201
    user = await resp.json()
    assert user["email"] == "Dev@example.com" and user["role"] == "developer"
    assert "password" not in user and "password_hash" not in user
    users = (await (await client.get("/v1/users", headers=admin_headers)).json())["data"]
    assert {u["email"] for u in users} == {ADMIN_EMAIL, "Dev@example.com"}
    assert all(set(u) == {"id", "email", "role", "created_at"} for u in users)

    token = (await login(client, "dev@example.com", "dev-password"))["access_token"]
    assert (await client.get("/v1/auth/me", headers=bearer(token))).status == 200
    assert (await client.delete(f"/v1/users/{user['id']}", headers=admin_headers)).status == 204
    await assert_error(await client.get("/v1/auth/me", headers=bearer(token)), 401, "unauthorized")
    await assert_error(await client.delete(f"/v1/users/{user['id']}", headers=admin_headers),
                       404, "not_found")


async def test_duplicate_email_is_409(client: Client, admin_headers: dict[str, str]) -> None:
    """Adding an email that exists (in any letter case) gets 409."""
    resp = await client.post("/v1/users", headers=admin_headers,
                             json={"email": ADMIN_EMAIL.upper(), "password": "long-enough"})
    await assert_error(resp, 409, "conflict")


async def test_weak_password_and_bad_email_are_400(client: Client, admin_headers: dict[str, str]) -> None:
    """A password under the minimum length or a malformed email gets 400 naming the field."""
    resp = await client.post("/v1/users", headers=admin_headers,
                             json={"email": "a@example.com", "password": "short"})
    assert (await assert_error(resp, 400, "invalid_request"))["details"]["field"] == "password"
    resp = await client.post("/v1/users", headers=admin_headers,
                             json={"email": "not-an-email", "password": "long-enough"})
    assert (await assert_error(resp, 400, "invalid_request"))["details"]["field"] == "email"
    resp = await client.post("/v1/users", headers=admin_headers,
                             json={"email": "a@example.com", "password": "long-enough", "role": "root"})
    assert (await assert_error(resp, 400, "invalid_request"))["details"]["field"] == "role"


async def test_last_admin_cannot_be_removed(client: Client, admin_headers: dict[str, str]) -> None:
    """Removing the only admin is refused with 409; with a second admin it works."""
    me = await (await client.get("/v1/auth/me", headers=admin_headers)).json()
    resp = await client.delete(f"/v1/users/{me['id']}", headers=admin_headers)
    await assert_error(resp, 409, "conflict")
    await client.post("/v1/users", headers=admin_headers,
                      json={"email": "second@example.com", "password": "long-enough", "role": "admin"})
    assert (await client.delete(f"/v1/users/{me['id']}", headers=admin_headers)).status == 204


async def test_tokens_are_shown_once_and_listed_without_secret(client: Client,
                                                              admin_headers: dict[str, str]) -> None:
    """A created token is in the 201 response (no-store) only; the list shows its metadata."""
    resp = await client.post("/v1/tokens", headers=admin_headers, json={"name": "control-plane"})
    assert resp.status == 201 and resp.headers["Cache-Control"] == "no-store"
    created = await resp.json()
    assert created["role"] == "developer" and created["token"].startswith("dpl_")
    listing = await (await client.get("/v1/tokens", headers=admin_headers)).json()
    assert [t["id"] for t in listing["data"]] == [created["id"]]
    assert "token" not in listing["data"][0] and created["token"] not in str(listing)
    assert listing["data"][0]["revoked_at"] is None

    assert (await client.delete(f"/v1/tokens/{created['id']}", headers=admin_headers)).status == 204
    listing = await (await client.get("/v1/tokens", headers=admin_headers)).json()
    assert listing["data"][0]["revoked_at"] is not None
    await assert_error(await client.delete(f"/v1/tokens/{created['id']}", headers=admin_headers),
                       404, "not_found")


async def test_token_names_are_validated(client: Client, admin_headers: dict[str, str]) -> None:
    """A token name must be short printable text."""
    for name in ("", " lead", "x" * 101, "new\nline"):
        resp = await client.post("/v1/tokens", headers=admin_headers, json={"name": name})
        assert (await assert_error(resp, 400, "invalid_request"))["details"]["field"] == "name"
