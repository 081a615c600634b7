"""Deployments endpoints (seed: Deployments): create, list, get, update (PUT), delete.

``source: "remote"`` (developer and above) deploys from git through the pipeline and answers
202: the deploy is queued and goes on after the answer. ``source: "image"`` runs a Docker image
(201). ``source: "local"`` (admin only) runs an app from a directory of this host and answers
201. See docs/api.md.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from agent.api.deployment_schemas import (
    Deployment,
    DeploymentCreate,
    DeploymentPage,
    DeploymentsQuery,
    DeploymentUpdateIn,
)
from agent.api.routing import EndpointTable, json_response, principal_of
from agent.delivery import DeploymentUpdate, RemoteDeployment
from agent.deployments import LocalDeployment
from agent.docker.images import check_cpus, parse_memory, validate_reference
from agent.docker.releases import ImageDeployment, ImageUpdate
from agent.errors import Forbidden, InvalidRequest
from agent.keys import CONFIG_KEY, DEPLOYMENTS_KEY, IMAGES_KEY, REMOTE_DEPLOYMENTS_KEY
from agent.supervisor.policy import RestartPolicy

__all__ = ["accepted", "routes"]

routes = EndpointTable("deployments")

_NOT_NULL = ("runtime", "remote", "branch", "fixed_port", "restart", "stop_signal",
             "stop_timeout", "env")
_IMAGE_FIELDS = ("image", "memory", "cpus")


def _reject(body: DeploymentCreate, names: tuple[str, ...], source: str) -> None:
    """400 naming the first of ``names`` given: fields of another source."""
    for name in names:
        if getattr(body, name) is not None:
            raise InvalidRequest(f"Unexpected {name}", field=name,
                                 issue=f"Not used with source '{source}'")


def _settings(body: DeploymentCreate) -> dict[str, Any]:
    """The fields every source shares (``AppSettings``), checked and in domain types."""
    if body.fixed_port and body.port is None:
        raise InvalidRequest("Missing port", field="port", issue="Required with fixed_port")
    return {"name": body.name, "port": body.port, "fixed_port": body.fixed_port, "env": body.env,
            "project_id": body.project_id,
            "health_check": body.health_check.to_domain() if body.health_check else None,
            "restart": body.restart.to_domain() if body.restart else RestartPolicy(),
            "stop_signal": body.stop_signal, "stop_timeout": body.stop_timeout}


def _image(body: DeploymentCreate) -> ImageDeployment:
    if body.image is None:
        raise InvalidRequest("Missing image", field="image", issue="Required for source 'image'")
    validate_reference(body.image)
    if body.runtime not in (None, "docker"):
        raise InvalidRequest("Unsupported runtime", field="runtime",
                             issue="An image runs in Docker: omit runtime or use 'docker'")
    _reject(body, ("path", "remote", "branch", "build_cmd", "version", "credentials"), "image")
    return ImageDeployment(
        **_settings(body), image=body.image, run_cmd=body.run_cmd,
        memory=parse_memory(body.memory) if body.memory is not None else None,
        cpus=check_cpus(body.cpus) if body.cpus is not None else None)


def _local(body: DeploymentCreate) -> LocalDeployment:
    for name in ("memory", "cpus"):
        if getattr(body, name) is not None:
            raise InvalidRequest(f"Unsupported {name} limit", field=name,
                                 issue="Limits are enforced by Docker: only for source 'image'")
    if body.path is None:
        raise InvalidRequest("Missing path", field="path", issue="Required for source 'local'")
    if body.run_cmd is None:
        raise InvalidRequest("Missing run_cmd", field="run_cmd",
                             issue="Required for source 'local'")
    settings = _settings(body)
    _reject(body, ("runtime", "version", "remote", "branch", "credentials", "image"), "local")
    return LocalDeployment(**settings, path=body.path, run_cmd=body.run_cmd,
                           build_cmd=body.build_cmd)


def _remote(body: DeploymentCreate, default_runtime: str) -> RemoteDeployment:
    """``runtime`` omitted: ``docker`` when ``[runtime] default = "docker"``, else a 400."""
    _reject(body, ("path", "image", "memory", "cpus"), "remote")
    runtime = body.runtime or (default_runtime if default_runtime == "docker" else None)
    if runtime is None:
        raise InvalidRequest("Missing runtime", field="runtime",
                             issue="Required for source 'remote': nodejs, python, go, static "
                                   "or docker")
    if body.remote is None:
        raise InvalidRequest("Missing remote", field="remote",
                             issue="Required for source 'remote': a git URL")
    return RemoteDeployment(
        **_settings(body), runtime=runtime, remote=body.remote, version=body.version or "",
        branch=body.branch or "main", build_cmd=body.build_cmd, run_cmd=body.run_cmd,
        credentials=body.credentials.to_domain() if body.credentials else None)


@routes.post("/v1/deployments", summary="Create a deployment", access="developer",
             body=DeploymentCreate, response=Deployment, status=201, errors=(409, 502, 503),
             extra_responses={202: "A deployment from git: created, its first deploy queued"},
             description="`source: \"remote\"` builds and runs an app from a git remote through "
                         "the deploy pipeline: 202 with the deployment `queued`; follow its "
                         "`status` and `GET /v1/deployments/{id}/logs`; with `runtime: "
                         "\"docker\"` (or none given when `[runtime] default = \"docker\"`) "
                         "the repository's Dockerfile is built and run as a container (503 "
                         "`runtime_unavailable` when the Docker engine does not answer). `source: \"image\"` "
                         "runs a Docker image (`image`, optional `memory`/`cpus` limits; 503 "
                         "`runtime_unavailable` when the Docker engine does not answer): 201. "
                         "`source: \"local\"` (admin only) runs an app from a directory inside "
                         "`[services] allowed_local_roots`: 201.")
async def create_deployment(request: web.Request, body: DeploymentCreate) -> web.StreamResponse:
    deployments = request.app[DEPLOYMENTS_KEY]
    if body.source == "remote":
        default = request.app[CONFIG_KEY].runtime.default
        deployment_id = await request.app[REMOTE_DEPLOYMENTS_KEY].create(_remote(body, default))
        return accepted(request, Deployment.of(deployments.get(deployment_id)))
    if body.source == "image":
        return json_response(Deployment.of(await request.app[IMAGES_KEY].create(_image(body))),
                             201)
    if not principal_of(request).allows("admin"):
        raise Forbidden("Local deployments need the admin role",
                        details={"required_role": "admin",
                                 "your_role": principal_of(request).role})
    return json_response(Deployment.of(await deployments.create_local(_local(body))), 201)


def accepted(request: web.Request, deployment: Deployment) -> web.Response:
    """202 with the deployment and its ``Location``: a deploy was queued."""
    response = json_response(deployment, 202)
    response.headers["Location"] = f"/v1/deployments/{deployment.id}"
    return response


@routes.get("/v1/deployments", summary="List deployments", access="viewer",
            query=DeploymentsQuery, response=DeploymentPage,
            description="Filters: `project_id`, `status`; pages by `limit` and `cursor`.")
async def list_deployments(request: web.Request, query: DeploymentsQuery) -> DeploymentPage:
    items, cursor = request.app[DEPLOYMENTS_KEY].list(
        limit=query.limit, after=query.cursor, project_id=query.project_id, status=query.status)
    return DeploymentPage(data=[Deployment.of(d) for d in items], next_cursor=cursor)


@routes.get("/v1/deployments/{id}", summary="Get a deployment", access="viewer",
            response=Deployment, description="`{id}` is the id or the name. Shows the newest "
                                             "run's stages and the release running now.")
async def get_deployment(request: web.Request) -> Deployment:
    return Deployment.of(request.app[DEPLOYMENTS_KEY].get(request.match_info["id"]))


@routes.put("/v1/deployments/{id}", summary="Update a deployment and deploy it",
            access="developer", body=DeploymentUpdateIn, response=Deployment, status=202,
            errors=(409, 502, 503),
            extra_responses={200: "An image deployment: updated (and restarting when it ran)"},
            description="A partial update: the fields given change, `env` sets the keys given "
                        "(null removes one). From git: then a new release is deployed (`{}` "
                        "redeploys the branch's newest commit), 202. Image deployments change "
                        "`image` (a new release), `env`, `memory` and `cpus` (null removes a "
                        "limit); a running service restarts on them, 200. Everything is "
                        "validated first: a 400 names the field and changes nothing.")
async def update_deployment(request: web.Request, body: DeploymentUpdateIn) -> web.StreamResponse:
    deployments = request.app[DEPLOYMENTS_KEY]
    current = deployments.get(request.match_info["id"])
    given = body.model_fields_set
    if current.source == "image":
        updated = await request.app[IMAGES_KEY].update(current.id, _image_change(body, given))
        return json_response(Deployment.of(updated), 200)
    for name in _IMAGE_FIELDS:
        if name in given:
            raise InvalidRequest(f"Unexpected {name}", field=name,
                                 issue="Only for deployments with source 'image'")
    for name in _NOT_NULL:
        if name in given and getattr(body, name) is None:
            raise InvalidRequest(f"Invalid value for '{name}'", field=name,
                                 issue="Must not be null")
    values: dict[str, object] = {}
    for name in given - {"env", "credentials"}:
        value = getattr(body, name)
        if name in ("health_check", "restart") and value is not None:
            value = value.to_domain()
        values[name] = "" if name == "version" and value is None else value
    change = DeploymentUpdate(
        values=values, env=body.env or {},
        credentials=body.credentials.to_domain() if body.credentials else None,
        credentials_given="credentials" in given)
    await request.app[REMOTE_DEPLOYMENTS_KEY].update(current.id, change)
    return accepted(request, Deployment.of(deployments.get(current.id)))


def _image_change(body: DeploymentUpdateIn, given: set[str]) -> ImageUpdate:
    """A PUT on an image deployment: a new image, env, limits (null removes a limit)."""
    unexpected = sorted(given - {*_IMAGE_FIELDS, "env"})
    if unexpected:
        raise InvalidRequest(f"Unexpected {unexpected[0]}", field=unexpected[0],
                             issue="An image deployment's PUT changes image, env, memory "
                                   "and cpus")
    if "image" in given and body.image is None:
        raise InvalidRequest("Invalid value for 'image'", field="image", issue="Must not be null")
    if body.image is not None:
        validate_reference(body.image)
    limits: dict[str, object] = {}
    if "memory" in given:
        limits["memory"] = parse_memory(body.memory) if body.memory is not None else None
    if "cpus" in given:
        limits["cpus"] = check_cpus(body.cpus) if body.cpus is not None else None
    return ImageUpdate(image=body.image, env=body.env, limits=limits or None)


@routes.delete("/v1/deployments/{id}", summary="Delete a deployment", access="developer",
               status=204, errors=(503,),
               description="Cancels its deploys, stops its service and removes its releases, "
                           "env vars, routes, logs and files (and the release tags of an image "
                           "deployment's images).")
async def delete_deployment(request: web.Request) -> None:
    await request.app[DEPLOYMENTS_KEY].delete(request.match_info["id"])
