"""Deployments endpoints (seed: Deployments). This version runs ``source: "local"``."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from aiohttp import web
from pydantic import Field, field_validator, model_validator

from agent.api.routing import EndpointTable, principal_of
from agent.api.schemas import DNS_LABEL, ApiModel, Page, PageQuery, Resource
from agent.deployments import Deployment as DeploymentRecord
from agent.deployments import LocalDeployment
from agent.docker.images import check_cpus, parse_memory, validate_reference
from agent.docker.releases import ImageDeployment
from agent.errors import Forbidden, InvalidRequest
from agent.keys import DEPLOYMENTS_KEY, IMAGES_KEY
from agent.supervisor.health import HealthCheck
from agent.supervisor.policy import RestartPolicy
from agent.timefmt import from_epoch

__all__ = ["HealthCheckIn", "RestartPolicyIn", "routes"]

routes = EndpointTable("deployments")

StopSignal = Literal["SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2"]


class HealthCheckIn(ApiModel):
    """A health check. A start counts as running after the first passing check."""

    type: Literal["http", "tcp"] = Field(default="http", description="HTTP GET (2xx/3xx passes) "
                                         "or a TCP connect")
    path: str = Field(default="/", max_length=2048, pattern=r"^/[^\s]*$",
                      description="Path of the HTTP check")
    port: int | None = Field(default=None, ge=1, le=65535,
                             description="Port to check (default: the PORT the app was given)")
    interval: float = Field(default=10.0, ge=0.1, le=3600, description="Seconds between checks")
    timeout: float = Field(default=2.0, gt=0, le=300, description="Seconds a check may take")
    threshold: int = Field(default=3, ge=1, le=1000,
                           description="Failures in a row that make a running service unhealthy")
    start_timeout: float = Field(default=60.0, gt=0, le=86_400,
                                 description="Seconds a start may take to pass its first check")
    restart: bool = Field(default=True, description="Restart a service that became unhealthy")

    def to_domain(self) -> HealthCheck:
        return HealthCheck(**self.model_dump())


class RestartPolicyIn(ApiModel):
    """When to restart a run that ended, and how fast (exponential backoff with jitter)."""

    mode: Literal["always", "on-failure", "never"] = "always"
    max_restarts: int = Field(default=10, ge=0, le=1_000_000,
                              description="Consecutive failed runs before `crashed`; 0 = unlimited")
    initial_delay: float = Field(default=1.0, ge=0, le=3600)
    max_delay: float = Field(default=60.0, ge=0, le=86_400)
    multiplier: float = Field(default=2.0, ge=1, le=100)
    jitter: float = Field(default=0.1, ge=0, lt=1, description="Fraction of random spread")
    reset_after: float = Field(default=60.0, ge=0, le=86_400,
                               description="Seconds of uptime after which the streak resets")

    @model_validator(mode="after")
    def _delays(self) -> RestartPolicyIn:
        if self.max_delay < self.initial_delay:
            raise ValueError("max_delay must be at least initial_delay")
        return self

    def to_domain(self) -> RestartPolicy:
        return RestartPolicy(**self.model_dump())


class DeploymentCreate(ApiModel):
    name: str = Field(pattern=DNS_LABEL, max_length=63, examples=["my-app"])
    source: Literal["local", "remote", "image"] = Field(examples=["local"])
    path: str | None = Field(default=None, min_length=1, max_length=4096,
                             examples=["/srv/apps/my-app"])
    run_cmd: str | None = Field(default=None, min_length=1, max_length=8192,
                                examples=["python3 -m http.server $PORT"])
    build_cmd: str | None = Field(default=None, min_length=1, max_length=8192)
    port: int | None = Field(default=None, ge=1, le=65535,
                             description="The app's declared (public) port")
    fixed_port: bool = Field(default=False,
                             description="Give the app PORT=<port> instead of a free port")
    env: dict[str, str] = Field(default_factory=dict)
    project_id: str | None = Field(default=None, max_length=64)
    runtime: str | None = Field(default=None, max_length=64)
    version: str | None = Field(default=None, max_length=64)
    remote: str | None = Field(default=None, max_length=2048)
    branch: str | None = Field(default=None, max_length=255)
    image: str | None = Field(default=None, max_length=1024)
    health_check: HealthCheckIn | None = None
    restart: RestartPolicyIn | None = None
    stop_signal: StopSignal = "SIGTERM"
    stop_timeout: float = Field(default=10.0, ge=0, le=3600,
                                description="Grace period in seconds before SIGKILL")
    memory: str | int | None = Field(default=None, examples=["256m"],
                                     description="Memory limit (Docker): 256m, 1.5g or bytes")
    cpus: float | None = Field(default=None, examples=[0.5],
                               description="CPU limit (Docker), in CPUs")

    @field_validator("path", "run_cmd", "build_cmd", "remote", "branch", "image", "runtime",
                     "version")
    @classmethod
    def _plain_text(cls, value: str | None) -> str | None:
        if value is not None:
            _check_text(value)
        return value


class Deployment(Resource):
    id: str
    name: str
    project_id: str | None
    source: str
    runtime: str | None
    version: str | None
    remote: str | None
    branch: str | None
    path: str | None
    image: str | None
    build_cmd: str | None
    run_cmd: str | None
    port: int | None
    fixed_port: bool
    health_check: dict[str, Any] | None
    restart: dict[str, Any] | None
    stop_signal: str
    stop_timeout: float
    status: str = Field(description="pending | building | succeeded | failed")
    status_detail: dict[str, Any] | None
    service_id: str | None
    image_id: str | None = Field(default=None, description="The image id the service runs "
                                                             "(source image)")
    memory: int | None = Field(default=None, description="Memory limit in bytes (Docker)")
    cpus: float | None = Field(default=None, description="CPU limit (Docker)")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, d: DeploymentRecord) -> Deployment:
        limits = d.limits or {}
        return cls(id=d.id, name=d.name, project_id=d.project_id, source=d.source,
                   image_id=d.image_id, memory=limits.get("memory"), cpus=limits.get("cpus"),
                   runtime=d.runtime, version=d.version, remote=d.remote, branch=d.branch,
                   path=d.path, image=d.image, build_cmd=d.build_cmd, run_cmd=d.run_cmd,
                   port=d.port, fixed_port=d.fixed_port, health_check=d.health_check,
                   restart=d.restart, stop_signal=d.stop_signal, stop_timeout=d.stop_timeout,
                   status=d.status, status_detail=d.status_detail, service_id=d.service_id,
                   created_at=from_epoch(d.created_at), updated_at=from_epoch(d.updated_at))


class DeploymentPage(Page[Deployment]):
    pass


def _check_text(value: str) -> None:
    """Refuse what cannot reach a process or a path: NUL, and text that is not UTF-8."""
    if "\0" in value:
        raise ValueError("Must not contain a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("Must be valid UTF-8") from None


def _image(body: DeploymentCreate) -> ImageDeployment:
    if body.image is None:
        raise InvalidRequest("Missing image", field="image", issue="Required for source 'image'")
    validate_reference(body.image)
    if body.runtime not in (None, "docker"):
        raise InvalidRequest("Unsupported runtime", field="runtime",
                             issue="An image runs in Docker: omit runtime or use 'docker'")
    for name in ("path", "remote", "branch", "build_cmd", "version"):
        if getattr(body, name) is not None:
            raise InvalidRequest(f"Unexpected {name}", field=name,
                                 issue="Not used with source 'image'")
    if body.fixed_port and body.port is None:
        raise InvalidRequest("Missing port", field="port", issue="Required with fixed_port")
    return ImageDeployment(
        name=body.name, image=body.image, run_cmd=body.run_cmd, port=body.port,
        fixed_port=body.fixed_port, env=body.env, project_id=body.project_id,
        health_check=body.health_check.to_domain() if body.health_check else None,
        restart=body.restart.to_domain() if body.restart else RestartPolicy(),
        stop_signal=body.stop_signal, stop_timeout=body.stop_timeout,
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
    if body.fixed_port and body.port is None:
        raise InvalidRequest("Missing port", field="port", issue="Required with fixed_port")
    return LocalDeployment(
        name=body.name, path=body.path, run_cmd=body.run_cmd, build_cmd=body.build_cmd,
        port=body.port, fixed_port=body.fixed_port, env=body.env, project_id=body.project_id,
        health_check=body.health_check.to_domain() if body.health_check else None,
        restart=body.restart.to_domain() if body.restart else RestartPolicy(),
        stop_signal=body.stop_signal, stop_timeout=body.stop_timeout)


@routes.post("/v1/deployments", summary="Create a deployment", access="developer",
             body=DeploymentCreate, response=Deployment, status=201, errors=(409, 502, 503),
             description="`source: \"local\"` (admin only) runs an app from a directory inside "
                         "`[services] allowed_local_roots`; `source: \"image\"` runs a Docker "
                         "image (`image`, optional `memory`/`cpus` limits; 503 "
                         "`runtime_unavailable` when the Docker engine does not answer); "
                         "`remote` is not supported by this agent version yet (400).")
async def create_deployment(request: web.Request, body: DeploymentCreate) -> Deployment:
    if body.source == "image":
        return Deployment.of(await request.app[IMAGES_KEY].create(_image(body)))
    if body.source != "local":
        raise InvalidRequest("Unsupported source", field="source",
                             issue="Only 'local' is supported by this agent version")
    if not principal_of(request).allows("admin"):
        raise Forbidden("Local deployments need the admin role",
                        details={"required_role": "admin",
                                 "your_role": principal_of(request).role})
    return Deployment.of(await request.app[DEPLOYMENTS_KEY].create_local(_local(body)))


@routes.get("/v1/deployments", summary="List deployments", access="viewer", query=PageQuery,
            response=DeploymentPage)
async def list_deployments(request: web.Request, query: PageQuery) -> DeploymentPage:
    items, cursor = request.app[DEPLOYMENTS_KEY].list(limit=query.limit, after=query.cursor)
    return DeploymentPage(data=[Deployment.of(d) for d in items], next_cursor=cursor)


@routes.get("/v1/deployments/{id}", summary="Get a deployment", access="viewer",
            response=Deployment)
async def get_deployment(request: web.Request) -> Deployment:
    return Deployment.of(request.app[DEPLOYMENTS_KEY].get(request.match_info["id"]))


@routes.delete("/v1/deployments/{id}", summary="Delete a deployment", access="developer",
               status=204, errors=(503,),
               description="Stops its service and removes its env vars, logs and files (and the "
                           "release tags of an image deployment's images).")
async def delete_deployment(request: web.Request) -> None:
    await request.app[DEPLOYMENTS_KEY].delete(request.match_info["id"])
