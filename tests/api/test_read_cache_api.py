"""The read cache on the hot path: session checks and list pages are reused until a commit,
and every revocation still takes effect on the very next request."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager

from agent.keys import DB_KEY
from agent.store import Database
from tests.conftest import Client, bearer, login
from tests.support.api import assert_error


@contextmanager
def statements(db: Database) -> Iterator[list[str]]:
    """The SQL the read connection runs inside the block."""
    seen: list[str] = []
    db.reader.set_trace_callback(seen.append)
    try:
        yield seen
    finally:
        db.reader.set_trace_callback(None)


async def _run_other_process(db: Database, sql: str) -> None:
    """Commit ``sql`` from a separate process, as ``dployr-agent`` CLI commands do."""
    script = textwrap.dedent(f"""
        import sqlite3
        conn = sqlite3.connect({str(db.path)!r}, isolation_level=None)
        conn.execute({sql!r})
        conn.close()
    """)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script)
    assert await proc.wait() == 0


async def test_session_check_is_not_repeated_without_a_commit(client: Client,
                                                              admin_headers: dict[str, str]) -> None:
    """Repeated requests with one token look the session up once, not once per request."""
    db = client.server.app[DB_KEY]
    assert (await client.get("/v1/auth/me", headers=admin_headers)).status == 200
    with statements(db) as seen:
        for _ in range(5):
            assert (await client.get("/v1/auth/me", headers=admin_headers)).status == 200
    assert not [s for s in seen if "FROM sessions" in s]


async def test_logout_takes_effect_on_the_very_next_request(client: Client) -> None:
    """A session used (and cached) a moment ago is refused right after its logout."""
    tokens = await login(client)
    other = await login(client)
    headers = bearer(tokens["access_token"])
    for _ in range(3):
        assert (await client.get("/v1/auth/me", headers=headers)).status == 200
    assert (await client.post("/v1/auth/logout", headers=headers)).status == 204
    await assert_error(await client.get("/v1/auth/me", headers=headers), 401, "unauthorized")
    assert (await client.get("/v1/auth/me", headers=bearer(other["access_token"]))).status == 200


async def test_refresh_reuse_revocation_takes_effect_on_the_next_request(client: Client) -> None:
    """After a refresh token is replayed, the session's newest access token (cached while in
    use) is refused on the next request."""
    first = await login(client)
    second = await (await client.post("/v1/auth/refresh",
                                      json={"refresh_token": first["refresh_token"]})).json()
    headers = bearer(second["access_token"])
    for _ in range(3):
        assert (await client.get("/v1/projects", headers=headers)).status == 200
    replay = await client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert replay.status == 401
    await assert_error(await client.get("/v1/projects", headers=headers), 401, "unauthorized")


async def test_user_removed_by_an_admin_is_refused_on_the_next_request(
        client: Client, admin_headers: dict[str, str]) -> None:
    """DELETE /v1/users/{id} ends the user's cached session at once."""
    resp = await client.post("/v1/users", headers=admin_headers,
                             json={"email": "gone@example.com", "password": "gone-password",
                                   "role": "developer"})
    user = await resp.json()
    headers = bearer((await login(client, "gone@example.com", "gone-password"))["access_token"])
    assert (await client.get("/v1/auth/me", headers=headers)).status == 200
    assert (await client.delete(f"/v1/users/{user['id']}", headers=admin_headers)).status == 204
    await assert_error(await client.get("/v1/auth/me", headers=headers), 401, "unauthorized")


async def test_session_revoked_by_another_process_is_refused_next(client: Client) -> None:
    """A revocation committed by another process (not through this agent) is seen by the
    very next request, though the session was cached."""
    tokens = await login(client)
    headers = bearer(tokens["access_token"])
    db = client.server.app[DB_KEY]
    for _ in range(3):
        assert (await client.get("/v1/auth/me", headers=headers)).status == 200
    await _run_other_process(db, "UPDATE sessions SET revoked_at = 1, revoked_reason = 'test'")
    await assert_error(await client.get("/v1/auth/me", headers=headers), 401, "unauthorized")


async def test_role_changed_by_another_process_applies_next(client: Client,
                                                            admin_headers: dict[str, str]) -> None:
    """The role in a cached session follows the store: demoted to viewer, the next write is 403."""
    db = client.server.app[DB_KEY]
    assert (await client.post("/v1/projects", headers=admin_headers,
                              json={"name": "before-demotion"})).status == 201
    await _run_other_process(db, "UPDATE users SET role = 'viewer'")
    resp = await client.post("/v1/projects", headers=admin_headers, json={"name": "after"})
    await assert_error(resp, 403, "forbidden")


async def test_list_page_is_reused_until_a_commit(client: Client,
                                                  admin_headers: dict[str, str]) -> None:
    """GET /v1/projects is served from the cache until a project is created, here or elsewhere."""
    db = client.server.app[DB_KEY]
    assert (await client.post("/v1/projects", headers=admin_headers,
                              json={"name": "first"})).status == 201
    first = await (await client.get("/v1/projects", headers=admin_headers)).read()
    with statements(db) as seen:
        for _ in range(3):
            assert await (await client.get("/v1/projects", headers=admin_headers)).read() == first
    assert not [s for s in seen if "FROM projects" in s]

    assert (await client.post("/v1/projects", headers=admin_headers,
                              json={"name": "second"})).status == 201
    names = [p["name"] for p in (await (await client.get("/v1/projects",
                                                          headers=admin_headers)).json())["data"]]
    assert names == ["first", "second"]

    await _run_other_process(db, "INSERT INTO projects (id, name, description, created_at, updated_at)"
                                 " VALUES ('prj_zzzzzzzzzzzzzzzzzzzzzz', 'third', '', 1, 1)")
    listing = await (await client.get("/v1/projects", headers=admin_headers)).json()
    assert [p["name"] for p in listing["data"]] == ["first", "second", "third"]
    limited = await (await client.get("/v1/projects?limit=1", headers=admin_headers)).json()
    assert [p["name"] for p in limited["data"]] == ["first"]


def test_the_reader_cannot_write(tmp_path: object) -> None:
    """Every change reaches the store through another connection (the reader is read-only),
    which is what makes data_version a complete signal."""
    import pathlib

    from agent.store.db import _reader, connect
    path = pathlib.Path(str(tmp_path)) / "agent.db"
    connect(path).close()
    reader = _reader(path)
    try:
        try:
            reader.execute("INSERT INTO meta VALUES ('k', 'v')")
        except sqlite3.OperationalError as exc:
            assert "readonly" in str(exc)
        else:
            raise AssertionError("the reader wrote")
    finally:
        reader.close()


async def test_parsed_queries_are_reused_and_bad_ones_refused_every_time(
        client: Client, admin_headers: dict[str, str]) -> None:
    """A query string parsed once answers the same way again; an invalid one is a 400 each
    time (failures are not kept)."""
    for name in ("q-one", "q-two"):
        assert (await client.post("/v1/projects", headers=admin_headers,
                                  json={"name": name})).status == 201
    for _ in range(2):
        page = await (await client.get("/v1/projects?limit=1", headers=admin_headers)).json()
        assert [p["name"] for p in page["data"]] == ["q-one"] and page["next_cursor"]
        await assert_error(await client.get("/v1/projects?limit=0", headers=admin_headers),
                           400, "invalid_request")
