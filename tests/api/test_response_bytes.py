"""Responses serialized from rows directly are byte-identical to the pydantic-model path."""

from __future__ import annotations

import random
from datetime import datetime
from typing import Any

import pytest
from pydantic import TypeAdapter

from agent.api.projects import Project, ProjectPage, _fields
from agent.keys import DB_KEY
from agent.projects import Project as ProjectRecord
from agent.timefmt import json_time
from tests.conftest import Client

# Descriptions that exercise JSON escaping: quotes, backslashes, controls, non-ASCII, HTML.
ODD_TEXT = ['plain', 'with "quotes" and \\backslash\\', "tab\tnewline\ncr\r\x01\x1f\x7f",
            "caf\u00e9 \u65e5\u672c \U0001f680", "</script><!--", "\u2028\u2029", ""]


def _model_path(rows: list[Any], next_cursor: str | None) -> bytes:
    """How the page was serialized before: every row validated into the model, then dumped."""
    data = [Project.model_validate({"id": r["id"], "name": r["name"],
                                    "description": r["description"],
                                    "created_at": r["created_at"], "updated_at": r["updated_at"]})
            for r in rows]
    return ProjectPage(data=data, next_cursor=next_cursor).model_dump_json().encode()


async def _create_projects(client: Client, headers: dict[str, str]) -> list[dict[str, Any]]:
    created = []
    for n, text in enumerate(ODD_TEXT * 2):
        resp = await client.post("/v1/projects", headers=headers,
                                 json={"name": f"odd-{n}", "description": text})
        assert resp.status == 201
        created.append(await resp.json())
    return created


async def test_list_pages_are_byte_identical(client: Client, admin_headers: dict[str, str]) -> None:
    """Every page of GET /v1/projects (with limits and cursors) equals the model-built bytes."""
    await _create_projects(client, admin_headers)
    db = client.server.app[DB_KEY]
    cursor: str | None = None
    pages = 0
    while True:
        url = "/v1/projects?limit=3" + (f"&cursor={cursor}" if cursor else "")
        resp = await client.get(url, headers=admin_headers)
        body = await resp.read()
        rows = db.query("SELECT * FROM projects WHERE id > ? ORDER BY id LIMIT 4", (cursor or "",))
        next_cursor = rows[2]["id"] if len(rows) > 3 else None
        assert body == _model_path(rows[:3], next_cursor)
        assert resp.content_type == "application/json"
        pages += 1
        cursor = (await resp.json())["next_cursor"]
        if cursor is None:
            break
    assert pages == 5
    whole = await (await client.get("/v1/projects", headers=admin_headers)).read()
    assert whole == _model_path(db.query("SELECT * FROM projects ORDER BY id"), None)


async def test_single_project_bodies_are_byte_identical(client: Client,
                                                        admin_headers: dict[str, str]) -> None:
    """POST /v1/projects and GET /v1/projects/{id} bodies equal the model-built bytes."""
    db = client.server.app[DB_KEY]
    for text in ODD_TEXT:
        resp = await client.post("/v1/projects", headers=admin_headers,
                                 json={"name": f"one-{len(text)}-{abs(hash(text)) % 997}",
                                       "description": text})
        created = await resp.read()
        project_id = (await resp.json())["id"]
        row = db.query_one("SELECT * FROM projects WHERE id = ?", (project_id,))
        expected = Project.model_validate({k: row[k] for k in row.keys()}).model_dump_json().encode()  # noqa: SIM118
        assert created == expected
        fetched = await (await client.get(f"/v1/projects/{project_id}", headers=admin_headers)).read()
        assert fetched == expected


def test_row_fields_follow_the_model() -> None:
    """The direct serializer writes exactly the model's fields, in the model's order."""
    record = ProjectRecord(id="prj_x", name="x", description="", created_at=1.5, updated_at=2.0)
    assert list(_fields(record)) == list(Project.model_fields)


@pytest.mark.parametrize("seed", range(3))
def test_json_time_matches_pydantic(seed: int) -> None:
    """json_time writes what pydantic writes for a datetime validated from the same float,
    including its rounding of half microseconds."""
    rng = random.Random(seed)
    values = [rng.uniform(0, 4.1e9) for _ in range(20_000)]
    values += [1_700_000_000 + (k + 0.5) / 1e6 for k in range(0, 1_000_000, 4999)]
    values += [1_700_000_000 + k / 2**12 for k in range(2**12)]
    values += [0.0, 1.0, 1_700_000_000.0, 1_700_000_000.9999995, 1_700_000_000.9999994,
               -1.5, 2e10 + 0.25, 1e11]
    adapter = TypeAdapter(datetime)
    for value in values:
        expected = adapter.dump_json(adapter.validate_python(value)).decode()[1:-1]
        assert json_time(value) == expected, value
