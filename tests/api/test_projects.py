"""Projects: create, list with cursor pagination, get, delete; DNS-label names, unique."""

from __future__ import annotations

from datetime import datetime

import pytest

from tests.conftest import Client
from tests.support.api import assert_error


async def test_create_get_list_delete(client: Client, admin_headers: dict[str, str]) -> None:
    """A created project can be fetched, is listed, and is gone after delete."""
    resp = await client.post("/v1/projects", headers=admin_headers,
                             json={"name": "my-project", "description": "Project description"})
    assert resp.status == 201
    project = await resp.json()
    assert project["id"].startswith("prj_")
    assert project["name"] == "my-project" and project["description"] == "Project description"
    created = datetime.fromisoformat(project["created_at"])
    assert created.tzinfo is not None and created.utcoffset().total_seconds() == 0  # type: ignore[union-attr]

    resp = await client.get(f"/v1/projects/{project['id']}", headers=admin_headers)
    assert await resp.json() == project
    listing = await (await client.get("/v1/projects", headers=admin_headers)).json()
    assert listing == {"data": [project], "next_cursor": None}

    resp = await client.delete(f"/v1/projects/{project['id']}", headers=admin_headers)
    assert resp.status == 204 and await resp.read() == b""
    await assert_error(await client.get(f"/v1/projects/{project['id']}", headers=admin_headers),
                       404, "not_found")
    await assert_error(await client.delete(f"/v1/projects/{project['id']}", headers=admin_headers),
                       404, "not_found")


async def test_description_defaults_to_empty(client: Client, admin_headers: dict[str, str]) -> None:
    """description is optional."""
    project = await (await client.post("/v1/projects", json={"name": "bare"},
                                       headers=admin_headers)).json()
    assert project["description"] == ""


@pytest.mark.parametrize("name", ["a", "web-1", "0abc", "a" * 63, "x-y-z"])
async def test_dns_label_names_are_accepted(client: Client, admin_headers: dict[str, str], name: str) -> None:
    """Lower-case DNS labels up to 63 characters are valid names."""
    resp = await client.post("/v1/projects", json={"name": name}, headers=admin_headers)
    assert resp.status == 201, await resp.text()


@pytest.mark.parametrize("name", ["", "My-Project", "-web", "web-", "a" * 64, "a_b", "a.b", "caf\u00e9",
                                  "web 1", "../etc"])
async def test_other_names_are_refused(client: Client, admin_headers: dict[str, str], name: str) -> None:
    """Names that are not DNS labels get 400 naming the field."""
    resp = await client.post("/v1/projects", json={"name": name}, headers=admin_headers)
    error = await assert_error(resp, 400, "invalid_request")
    assert error["details"]["field"] == "name"


async def test_duplicate_name_is_409(client: Client, admin_headers: dict[str, str]) -> None:
    """A second project with a taken name gets 409 conflict; the first is unchanged."""
    first = await (await client.post("/v1/projects", json={"name": "taken"}, headers=admin_headers)).json()
    resp = await client.post("/v1/projects", json={"name": "taken", "description": "again"},
                             headers=admin_headers)
    await assert_error(resp, 409, "conflict")
    listing = await (await client.get("/v1/projects", headers=admin_headers)).json()
    assert listing["data"] == [first]


async def test_pagination_walks_every_project_once(client: Client, admin_headers: dict[str, str]) -> None:
    """Following next_cursor with limit=2 returns every project once, in creation order."""
    ids = []
    for n in range(5):
        resp = await client.post("/v1/projects", json={"name": f"p{n}"}, headers=admin_headers)
        ids.append((await resp.json())["id"])
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = "limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = await (await client.get(f"/v1/projects?{query}", headers=admin_headers)).json()
        assert len(page["data"]) <= 2
        seen += [p["id"] for p in page["data"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids and pages == 3
    page = await (await client.get("/v1/projects?limit=5", headers=admin_headers)).json()
    assert page["next_cursor"] is None and len(page["data"]) == 5


async def test_project_ids_are_stable(client: Client, admin_headers: dict[str, str]) -> None:
    """An id keeps naming the same project; the name can be reused after delete with a new id."""
    first = await (await client.post("/v1/projects", json={"name": "again"}, headers=admin_headers)).json()
    await client.delete(f"/v1/projects/{first['id']}", headers=admin_headers)
    second = await (await client.post("/v1/projects", json={"name": "again"}, headers=admin_headers)).json()
    assert second["id"] != first["id"]
    await assert_error(await client.get(f"/v1/projects/{first['id']}", headers=admin_headers),
                       404, "not_found")
