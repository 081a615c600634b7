"""A deployment's releases, rollback, and its deployment log."""

from __future__ import annotations

import asyncio

from aiohttp import web

from agent.api.deployment_schemas import (
    DeployLogsQuery,
    Deployment,
    Release,
    ReleasePage,
    RollbackIn,
)
from agent.api.deployments import accepted
from agent.api.logs import choose_format, respond_with_log
from agent.api.routing import EndpointTable, json_response
from agent.docker.releases import ImageRelease
from agent.keys import DEPLOYMENTS_KEY, IMAGES_KEY, REMOTE_DEPLOYMENTS_KEY

__all__ = ["routes"]

routes = EndpointTable("deployments")

_LOG_TYPES = ("text/plain", "application/x-ndjson", "text/event-stream")


@routes.get("/v1/deployments/{id}/releases", summary="List a deployment's releases",
            access="viewer", response=ReleasePage,
            description="Newest first. From git: the last `[deploy] keep_releases`, and always "
                        "the current and the previous one; env snapshots show their keys only. "
                        "Image deployments: the image and image id of each release, the newest "
                        "`[deploy] keep_releases`. A local deployment has none.")
async def list_releases(request: web.Request) -> ReleasePage:
    deployment = request.app[DEPLOYMENTS_KEY].get(request.match_info["id"])
    if deployment.source == "image":
        return ReleasePage(data=_image_releases(request.app[IMAGES_KEY].releases(deployment.id)))
    if deployment.source != "remote":
        return ReleasePage(data=[])
    infos = await request.app[REMOTE_DEPLOYMENTS_KEY].releases(deployment.id)
    return ReleasePage(data=[Release.of(i.release, current=i.current, previous=i.previous)
                             for i in infos])


def _image_releases(releases: list[ImageRelease]) -> list[Release]:
    """Image releases as listed; ``previous`` is where a rollback without release_id goes (the
    newest release whose image differs from the current one)."""
    previous = next((r.id for r in releases[1:] if r.image_id != releases[0].image_id), None)
    return [Release.of_image(r, current=i == 0, previous=r.id == previous)
            for i, r in enumerate(releases)]


@routes.post("/v1/deployments/{id}/rollback", summary="Roll back to an earlier release",
             access="developer", body=RollbackIn, response=Deployment, status=202,
             errors=(409, 502, 503),
             extra_responses={200: "An image deployment: rolled back (and restarting when it ran)"},
             description="From git: switches to the previous release (or `release_id`) the same "
                         "way a deploy switches, without fetching or building: zero downtime, "
                         "health gated; the release's env snapshot becomes the service's env vars "
                         "again once it runs; queued like a deploy, 202. Image deployments: runs "
                         "the previous release's image (or `release_id`'s) again as a new release, "
                         "no pull, no build, 200. 409 when there is no previous release or it is "
                         "already current.")
async def rollback(request: web.Request, body: RollbackIn) -> web.StreamResponse:
    deployments = request.app[DEPLOYMENTS_KEY]
    deployment = deployments.get(request.match_info["id"])
    if deployment.source == "image":
        rolled = await request.app[IMAGES_KEY].rollback(deployment.id, body.release_id)
        return json_response(Deployment.of(rolled), 200)
    await request.app[REMOTE_DEPLOYMENTS_KEY].rollback(deployment.id, body.release_id)
    return accepted(request, Deployment.of(deployments.get(deployment.id)))


@routes.get("/v1/deployments/{id}/logs", summary="Tail or follow a deployment's log",
            access="viewer", query=DeployLogsQuery, content_types=_LOG_TYPES,
            description="Every line of every deploy of this deployment: streams `deploy` (the "
                        "pipeline's notes), `git`, `toolchain`, `build` (the build's output) and "
                        "`app` (the last stderr lines of a release that failed to start). Same "
                        "parameters and formats as `GET /v1/services/{id}/logs`.")
async def get_deploy_logs(request: web.Request, query: DeployLogsQuery) -> web.StreamResponse:
    deployment = request.app[DEPLOYMENTS_KEY].get(request.match_info["id"])
    logs = request.app[REMOTE_DEPLOYMENTS_KEY].logs
    last = await asyncio.to_thread(logs.end_seq, deployment.name)
    return await respond_with_log(
        request, source=logs, key=deployment.name, end_seq=lambda: last,
        tail_lines=query.tail, follow=query.follow, stream=query.stream, since=query.since,
        fmt=choose_format(request, query.format))
