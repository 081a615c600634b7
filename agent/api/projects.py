"""Projects endpoints (seed: Projects).

Responses are serialized from the stored rows directly (``_fields``), not by validating each
row into ``Project`` first: the models declare the shapes (and the OpenAPI document), the
rows are ours and already valid. A test holds the two byte for byte identical. List pages are
kept as bytes in the store's read cache until the next commit.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pydantic_core
from aiohttp import web
from pydantic import Field

from agent.api.routing import EndpointTable, json_body_response
from agent.api.schemas import DNS_LABEL, ApiModel, Page, PageQuery, Resource, page_json
from agent.keys import DB_KEY, PROJECTS_KEY
from agent.projects import Project as ProjectRecord
from agent.projects import ProjectService
from agent.timefmt import json_time

__all__ = ["routes"]

routes = EndpointTable("projects")


class ProjectCreate(ApiModel):
    name: str = Field(pattern=DNS_LABEL, max_length=63, examples=["my-project"],
                      description="A DNS label: lower-case letters, digits and '-'")
    description: str = Field(default="", max_length=1000, examples=["Project description"])


class Project(Resource):
    id: str
    name: str
    description: str
    created_at: datetime
    updated_at: datetime


class ProjectPage(Page[Project]):
    pass


def _fields(record: ProjectRecord) -> dict[str, Any]:
    """The JSON fields of ``Project`` for a stored record, in the model's field order."""
    return {"id": record.id, "name": record.name, "description": record.description,
            "created_at": json_time(record.created_at),
            "updated_at": json_time(record.updated_at)}


def _project_json(record: ProjectRecord) -> bytes:
    return pydantic_core.to_json(_fields(record))


def _page_json(projects: ProjectService, limit: int, cursor: str | None) -> bytes:
    records, next_cursor = projects.list(limit=limit, after=cursor)
    return page_json([_fields(r) for r in records], next_cursor)


@routes.get("/v1/projects", summary="List projects", access="viewer", query=PageQuery,
            response=ProjectPage)
async def list_projects(request: web.Request, query: PageQuery) -> web.Response:
    app = request.app
    body = app[DB_KEY].cached(("api.projects.page", query.limit, query.cursor), _page_json,
                              app[PROJECTS_KEY], query.limit, query.cursor)
    return json_body_response(body)


@routes.post("/v1/projects", summary="Create a project", access="developer", body=ProjectCreate,
             response=Project, status=201, errors=(409,))
async def create_project(request: web.Request, body: ProjectCreate) -> web.Response:
    record = await request.app[PROJECTS_KEY].create(body.name, body.description)
    return json_body_response(_project_json(record), status=201)


@routes.get("/v1/projects/{id}", summary="Get a project", access="viewer", response=Project)
async def get_project(request: web.Request) -> web.Response:
    return json_body_response(_project_json(request.app[PROJECTS_KEY].get(request.match_info["id"])))


@routes.delete("/v1/projects/{id}", summary="Delete a project", access="developer", status=204,
               errors=(409,))
async def delete_project(request: web.Request) -> None:
    await request.app[PROJECTS_KEY].delete(request.match_info["id"])
