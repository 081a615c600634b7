"""Image deployments: update (``PUT /v1/deployments/{id}``), roll back, list releases.

This agent version updates deployments of ``source: "image"``; other sources answer 400
(field ``source``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import Field, field_validator

from agent.api.deployments import Deployment
from agent.api.routing import EndpointTable
from agent.api.schemas import ApiModel, Page, Resource
from agent.docker.images import check_cpus, parse_memory, validate_reference
from agent.docker.releases import ImageRelease, ImageUpdate
from agent.keys import IMAGES_KEY
from agent.timefmt import from_epoch

__all__ = ["routes"]

routes = EndpointTable("deployments")


class DeploymentUpdate(ApiModel):
    """What a PUT may change. Absent fields stay as they are; ``memory``/``cpus`` set to
    null remove that limit."""

    image: str | None = Field(default=None, max_length=1024, examples=["web:1.3"],
                              description="A new image: a new release (pulled if absent)")
    env: dict[str, str] | None = Field(default=None, description="Variables to set (others "
                                                                  "are kept)")
    memory: str | int | None = Field(default=None, examples=["512m"])
    cpus: float | None = Field(default=None, examples=[1.0])

    @field_validator("image")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        if value is not None:
            validate_reference(value)
        return value


class RollbackBody(ApiModel):
    release_id: str | None = Field(default=None, max_length=64, pattern=r"^rel_[0-9a-z]+$",
                                   description="The release to run again (default: the newest "
                                               "one whose image differs from the current)")


class ImageReleaseOut(Resource):
    id: str
    deployment_id: str
    image: str = Field(description="The reference asked for")
    image_id: str = Field(description="The image it resolved to; what the release runs")
    rollback_of: str | None = Field(description="The release a rollback copied")
    current: bool
    created_at: datetime

    @classmethod
    def of(cls, release: ImageRelease, current: bool) -> ImageReleaseOut:
        return cls(id=release.id, deployment_id=release.deployment_id, image=release.image,
                   image_id=release.image_id, rollback_of=release.rollback_of, current=current,
                   created_at=from_epoch(release.created_at))


class ImageReleasePage(Page[ImageReleaseOut]):
    pass


def _change(body: DeploymentUpdate) -> ImageUpdate:
    limits: dict[str, Any] = {}
    if "memory" in body.model_fields_set:
        limits["memory"] = parse_memory(body.memory) if body.memory is not None else None
    if "cpus" in body.model_fields_set:
        limits["cpus"] = check_cpus(body.cpus) if body.cpus is not None else None
    return ImageUpdate(image=body.image, env=body.env, limits=limits or None)


@routes.put("/v1/deployments/{id}", summary="Update a deployment", access="developer",
            body=DeploymentUpdate, response=Deployment, errors=(409, 502, 503),
            description="Image deployments: a new `image` makes a new release; `env` sets "
                        "variables; `memory`/`cpus` change the limits. A running service is "
                        "restarted on the new settings (status `pending`, then `succeeded` or "
                        "`failed`).")
async def update_deployment(request: web.Request, body: DeploymentUpdate) -> Deployment:
    updated = await request.app[IMAGES_KEY].update(request.match_info["id"], _change(body))
    return Deployment.of(updated)


@routes.post("/v1/deployments/{id}/rollback", summary="Roll a deployment back",
             access="developer", body=RollbackBody, response=Deployment, errors=(409, 502, 503),
             description="Runs an earlier release's image again (no pull, no build), as a new "
                         "release; emits `deployment.rolled_back`.")
async def rollback_deployment(request: web.Request, body: RollbackBody) -> Deployment:
    rolled = await request.app[IMAGES_KEY].rollback(request.match_info["id"], body.release_id)
    return Deployment.of(rolled)


@routes.get("/v1/deployments/{id}/releases", summary="Releases of a deployment",
            access="viewer", response=ImageReleasePage,
            description="Newest first; the first one is current. Image deployments only.")
async def list_releases(request: web.Request) -> ImageReleasePage:
    releases = request.app[IMAGES_KEY].releases(request.match_info["id"])
    return ImageReleasePage(data=[ImageReleaseOut.of(r, i == 0) for i, r in enumerate(releases)],
                            next_cursor=None)
