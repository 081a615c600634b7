"""Request and response shapes of the deployments endpoints (see ``deployments`` and
``releases``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from agent.api.schemas import DNS_LABEL, ApiModel, Page, PageQuery, QueryModel, Resource
from agent.deploy.releases import Release as ReleaseRecord
from agent.deploy.remote import GitCredentials
from agent.deployments import Deployment as DeploymentRecord
from agent.docker.releases import ImageRelease
from agent.supervisor.health import HealthCheck
from agent.supervisor.policy import RestartPolicy
from agent.timefmt import from_epoch

__all__ = [
    "CredentialsIn",
    "DeployLogsQuery",
    "Deployment",
    "DeploymentCreate",
    "DeploymentPage",
    "DeploymentUpdateIn",
    "DeploymentsQuery",
    "HealthCheckIn",
    "Release",
    "ReleasePage",
    "RestartPolicyIn",
    "RollbackIn",
]

StopSignal = Literal["SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2"]
Status = Literal["pending", "queued", "cloning", "building", "starting", "succeeded", "failed"]


def check_text(value: str) -> None:
    """Refuse what cannot reach a process or a path: NUL, and text that is not UTF-8."""
    if "\0" in value:
        raise ValueError("Must not contain a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("Must be valid UTF-8") from None


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
                                 description="Seconds a start (and a deploy's health gate) may "
                                             "take to pass its first check")
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


class CredentialsIn(ApiModel):
    """Credentials of a private repository: stored, handed to git only, never shown again."""

    username: str | None = Field(default=None, min_length=1, max_length=256,
                                 description="Default `x-access-token` (GitHub's convention)")
    password: str | None = Field(default=None, min_length=1, max_length=4096,
                                 description="A password or an access token (https remotes)")
    ssh_key: str | None = Field(default=None, min_length=1, max_length=16_384,
                                description="A private key, PEM or OpenSSH (ssh remotes)")

    def to_domain(self) -> GitCredentials:
        return GitCredentials(username=self.username, password=self.password,
                              ssh_key=self.ssh_key)


class DeploymentCreate(ApiModel):
    name: str = Field(pattern=DNS_LABEL, max_length=63, examples=["my-app"])
    source: Literal["local", "remote", "image"] = Field(examples=["remote"])
    path: str | None = Field(default=None, min_length=1, max_length=4096,
                             examples=["/srv/apps/my-app"], description="`local` only")
    run_cmd: str | None = Field(default=None, min_length=1, max_length=8192,
                                examples=["npm start"])
    build_cmd: str | None = Field(default=None, min_length=1, max_length=8192,
                                  examples=["npm install"])
    port: int | None = Field(default=None, ge=1, le=65535,
                             description="The app's declared (public) port", examples=[3000])
    fixed_port: bool = Field(default=False,
                             description="Give the app PORT=<port> instead of a free port "
                                         "(deploys then stop the old run before starting the "
                                         "new one)")
    env: dict[str, str] = Field(default_factory=dict)
    project_id: str | None = Field(default=None, max_length=64)
    runtime: str | None = Field(default=None, max_length=64, examples=["nodejs"],
                                description="`remote`: nodejs | python | go | static | docker "
                                            "(default: `[runtime] default` when that is "
                                            "docker, else required)")
    version: str | None = Field(default=None, max_length=64, examples=["20"],
                                description="MAJOR, MAJOR.MINOR or MAJOR.MINOR.PATCH; the newest "
                                            "available match is used (default: newest)")
    remote: str | None = Field(default=None, max_length=2048,
                               examples=["https://github.com/user/repo"])
    branch: str | None = Field(default=None, max_length=255, examples=["main"],
                               description="`remote`: default `main`")
    image: str | None = Field(default=None, max_length=1024)
    credentials: CredentialsIn | None = Field(default=None, description="`remote`: for a "
                                              "private repository")
    health_check: HealthCheckIn | None = None
    restart: RestartPolicyIn | None = None
    stop_signal: StopSignal = "SIGTERM"
    stop_timeout: float = Field(default=10.0, ge=0, le=3600,
                                description="Grace period in seconds before SIGKILL")
    memory: str | int | None = Field(default=None, examples=["256m"],
                                     description="`image`: memory limit, 256m, 1.5g or bytes")
    cpus: float | None = Field(default=None, examples=[0.5],
                               description="`image`: CPU limit, in CPUs")

    @field_validator("path", "run_cmd", "build_cmd", "remote", "branch", "image", "runtime",
                     "version")
    @classmethod
    def _plain_text(cls, value: str | None) -> str | None:
        if value is not None:
            check_text(value)
        return value


class DeploymentUpdateIn(ApiModel):
    """A PUT: only the fields given change (see docs/api.md); then a new release is deployed.
    ``image``, ``memory`` and ``cpus`` apply to image deployments, ``env`` to both, the other
    fields to deployments from git."""

    image: str | None = Field(default=None, max_length=1024, examples=["web:1.3"],
                              description="`image`: a new image, a new release")
    memory: str | int | None = Field(default=None, examples=["512m"],
                                     description="`image`: memory limit; null removes it")
    cpus: float | None = Field(default=None, examples=[1.0],
                               description="`image`: CPU limit; null removes it")

    runtime: str | None = Field(default=None, max_length=64)
    version: str | None = Field(default=None, max_length=64, examples=["22"])
    remote: str | None = Field(default=None, max_length=2048)
    branch: str | None = Field(default=None, max_length=255)
    build_cmd: str | None = Field(default=None, min_length=1, max_length=8192)
    run_cmd: str | None = Field(default=None, min_length=1, max_length=8192)
    port: int | None = Field(default=None, ge=1, le=65535)
    fixed_port: bool | None = None
    env: dict[str, str | None] | None = Field(default=None, examples=[{"NODE_ENV": "production"}],
                                              description="Keys to set; null removes a key")
    project_id: str | None = Field(default=None, max_length=64)
    credentials: CredentialsIn | None = None
    health_check: HealthCheckIn | None = None
    restart: RestartPolicyIn | None = None
    stop_signal: StopSignal | None = None
    stop_timeout: float | None = Field(default=None, ge=0, le=3600)

    @field_validator("runtime", "version", "remote", "branch", "build_cmd", "run_cmd", "image")
    @classmethod
    def _plain_text(cls, value: str | None) -> str | None:
        if value is not None:
            check_text(value)
        return value


class DeploymentsQuery(PageQuery):
    project_id: str | None = Field(default=None, max_length=64, description="Only this project's")
    status: Status | None = Field(default=None, description="Only deployments in this status")


class Deployment(Resource):
    id: str
    name: str
    project_id: str | None
    source: str
    runtime: str | None
    version: str | None
    remote: str | None = Field(description="Never holds credentials")
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
    status: str = Field(description="remote: queued | cloning | building | starting | succeeded "
                                    "| failed (of its newest run); local: pending | building | "
                                    "succeeded | failed")
    status_detail: dict[str, Any] | None = Field(
        description="remote: the newest run (run_id, kind, stages with times, failure with "
                    "stage, reason, exit_code and code, commit, release_id, toolchain); local: "
                    "the reason of a failure")
    service_id: str | None
    release_id: str | None = Field(description="The release the service runs now")
    commit: str | None = Field(description="The commit of the release running now")
    toolchain: dict[str, Any] | None = Field(description="The toolchain of the release running "
                                                         "now: runtime, version, source")
    release: dict[str, Any] | None = Field(description="The release running now: id, commit, "
                                                       "branch, toolchain, deployed_at")
    has_credentials: bool
    image_id: str | None = Field(default=None, description="`image`, and `remote` with runtime "
                                                             "`docker`: the image id the "
                                                             "service runs")
    memory: int | None = Field(default=None, description="`image`: memory limit in bytes")
    cpus: float | None = Field(default=None, description="`image`: CPU limit")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, d: DeploymentRecord) -> Deployment:
        release = d.release if d.release_id else None
        limits = d.limits or {}
        current = None
        if release is not None:
            current = {"id": d.release_id, "commit": release.get("commit"),
                       "branch": release.get("branch"), "toolchain": release.get("toolchain"),
                       "deployed_at": _iso(release.get("finished_at"))}
        return cls(id=d.id, name=d.name, project_id=d.project_id, source=d.source,
                   runtime=d.runtime, version=d.version, remote=d.remote, branch=d.branch,
                   path=d.path, image=d.image, build_cmd=d.build_cmd, run_cmd=d.run_cmd,
                   port=d.port, fixed_port=d.fixed_port, health_check=d.health_check,
                   restart=d.restart, stop_signal=d.stop_signal, stop_timeout=d.stop_timeout,
                   status=d.status, status_detail=_detail(d.status_detail),
                   service_id=d.service_id, release_id=d.release_id,
                   commit=current["commit"] if current else None,
                   toolchain=current["toolchain"] if current else None, release=current,
                   has_credentials=d.has_credentials, image_id=d.image_id,
                   memory=limits.get("memory"), cpus=limits.get("cpus"),
                   created_at=from_epoch(d.created_at), updated_at=from_epoch(d.updated_at))


def _text(value: Any) -> str | None:
    return str(value) if value else None


def _iso(value: Any) -> str | None:
    """Epoch seconds as RFC 3339 text, shaped like the API's other times (``...Z``)."""
    if not isinstance(value, int | float):
        return None
    return from_epoch(float(value)).isoformat().replace("+00:00", "Z")


def _detail(detail: dict[str, Any] | None) -> dict[str, Any] | None:
    """A run's stored detail with its times as RFC 3339 text."""
    if detail is None or "stages" not in detail:
        return detail
    shown = {k: v for k, v in detail.items() if k not in ("created_at", "finished_at", "stages")}
    shown["created_at"] = _iso(detail.get("created_at"))
    shown["finished_at"] = _iso(detail.get("finished_at"))
    shown["stages"] = [{"stage": s["stage"], "started_at": _iso(s.get("started_at")),
                        "finished_at": _iso(s.get("finished_at"))} for s in detail["stages"]]
    return shown


class DeploymentPage(Page[Deployment]):
    pass


class RollbackIn(ApiModel):
    release_id: str | None = Field(default=None, max_length=64, pattern=r"^rel_[0-9a-z]{22}$",
                                   description="Default: the previous release")


class Release(Resource):
    """A release of a deployment from git (commit and build) or of an image deployment (image
    and image id): the other source's fields are null."""

    id: str
    commit: str | None = Field(default=None, description="git: the commit built")
    branch: str | None = Field(default=None, description="git")
    remote: str | None = Field(default=None, description="git")
    toolchain: dict[str, Any] | None = Field(default=None, description="git: runtime, version, "
                                                                        "source, executable")
    build: dict[str, Any] | None = Field(default=None, description="git: command, exit_code, "
                                                                   "duration, timed_out")
    run_cmd: str | None = Field(default=None, description="git")
    port: int | None = Field(default=None, description="git")
    env_keys: list[str] | None = Field(default=None, description="git: the keys of its env "
                                                                 "snapshot (values are not shown)")
    image: str | None = Field(default=None, description="image: the reference asked for; git "
                                                        "with runtime docker: the image's tag, "
                                                        "dployr/<name>:<commit>")
    image_id: str | None = Field(default=None, description="image: the image it resolved to; "
                                                           "git with runtime docker: the image "
                                                           "built")
    rollback_of: str | None = Field(default=None, description="image: the release a rollback "
                                                              "copied")
    created_at: datetime
    current: bool = Field(description="The service runs this release now")
    previous: bool = Field(description="The release a rollback without release_id goes to")

    @classmethod
    def of(cls, release: ReleaseRecord, *, current: bool, previous: bool) -> Release:
        return cls(id=release.id, commit=release.commit, branch=release.branch,
                   remote=release.remote, toolchain=dict(release.toolchain),
                   build=dict(release.build), run_cmd=release.run_cmd, port=release.port,
                   env_keys=sorted(release.env), created_at=from_epoch(release.created_at),
                   image=_text(release.extra.get("image_tag")),
                   image_id=_text(release.extra.get("image_id")),
                   current=current, previous=previous)

    @classmethod
    def of_image(cls, release: ImageRelease, *, current: bool, previous: bool) -> Release:
        return cls(id=release.id, image=release.image, image_id=release.image_id,
                   rollback_of=release.rollback_of, created_at=from_epoch(release.created_at),
                   current=current, previous=previous)


class ReleasePage(Page[Release]):
    pass


class DeployLogsQuery(QueryModel):
    tail: int | None = Field(default=None, ge=0, le=100_000,
                             description="Lines back from the end (default 100 unless `since`)")
    follow: bool = Field(default=False, description="Keep streaming new lines")
    stream: Literal["deploy", "git", "toolchain", "build", "app"] | None = Field(
        default=None, description="Only this stream")
    since: str | None = Field(default=None, max_length=64,
                              description="RFC 3339 time or a duration back from now (`15m`)")
    format: Literal["text", "ndjson", "sse"] | None = Field(
        default=None, description="text | ndjson | sse (default: from Accept, else text)")
