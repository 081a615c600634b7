"""Deployments from git (``source: "remote"``): create, update (PUT), roll back, releases.

Knows nothing of HTTP. A remote deployment owns one service (same name) like a local one;
the service has no run until its first release is live (its desired state stays ``stopped``
until then). Every change that deploys (create, PUT, rollback) is validated completely before
anything is written or run, each failure an ``InvalidRequest`` naming the field, then queued
on the deploy queue (``agent.deploy.queue``): the caller gets the deployment back at once,
``queued``, and follows it through ``GET /v1/deployments/{id}`` or its log.

Rules:

* ``runtime`` is one the agent supports, ``version`` well formed and installed or
  provisionable (400 on ``version`` listing what is available), ``remote`` and ``branch``
  valid (``agent.deploy.remote``), ``run_cmd`` given unless the runtime is ``static`` or
  ``docker``; ``docker`` (the repository's Dockerfile, run as a container) takes no
  ``version`` nor ``build_cmd`` and needs the Docker engine to answer (503
  ``runtime_unavailable``, checked before anything is written or queued, for a rollback too),
  ``port`` given with ``fixed_port``, ``env`` within the env rules, ``project_id`` existing;
* credentials (``username``/``password`` or ``ssh_key``, or ``user:token@`` in an https URL)
  are kept in ``deployment_credentials``, handed to git only (never stored in the remote, a
  release, a log or an answer); they belong to the remote's origin (scheme, host, port): a PUT
  that moves the remote elsewhere without giving credentials forgets them;
* a PUT is a partial update: fields not given keep their values, ``env`` sets the keys given
  and removes those given as null, ``credentials: null`` forgets them; then a new release
  is deployed (``PUT {}`` redeploys the branch's newest commit). ``runtime`` cannot change
  between ``static``, ``docker`` and a process runtime (the service's runtime differs);
* a rollback switches to an existing release (the previous one by default) without fetching
  or building, with the release's own env snapshot, which becomes the service's env vars
  again when the switch succeeds (Heroku semantics). The deployment's settings (branch,
  build and run commands, version) are left as they are: the next deploy uses them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import field
from typing import Any
from urllib.parse import urlsplit

import structlog

from agent.clock import Clock
from agent.config import AgentConfig
from agent.delivery.logs import DeployLogs
from agent.delivery.records import RunRecorder
from agent.deploy.images import DOCKER_RUNTIME
from agent.deploy.kit import DeployKit
from agent.deploy.pipeline import DeployRun
from agent.deploy.releases import Release
from agent.deploy.remote import GitCredentials, Remote, validate_remote
from agent.deploy.toolchains import RUNTIMES, validate_version
from agent.deployments import AppSettings
from agent.env import EnvService, validate_env
from agent.errors import Conflict, InvalidRequest, NotFound
from agent.ids import new_id
from agent.records import record
from agent.store import Database, Tx
from agent.supervisor.health import HealthCheck
from agent.supervisor.manager import Supervisor
from agent.supervisor.policy import RestartPolicy

__all__ = ["DeploymentUpdate", "ReleaseInfo", "RemoteDeployment", "RemoteDeployments"]

log = structlog.get_logger("agent.delivery")

#: Deployment columns a PUT may change (``env`` and ``credentials`` are kept apart).
UPDATABLE = ("runtime", "version", "remote", "branch", "build_cmd", "run_cmd", "port",
             "fixed_port", "health_check", "restart", "stop_signal", "stop_timeout", "project_id")


@record(kw_only=True)
class RemoteDeployment(AppSettings):
    """What a user asks for to deploy an app from a git remote."""

    runtime: str
    remote: str
    version: str = ""
    branch: str = "main"
    build_cmd: str | None = None
    run_cmd: str | None = None
    credentials: GitCredentials | None = None


@record
class DeploymentUpdate:
    """A PUT: ``values`` holds the changed fields of ``UPDATABLE`` (domain types: a
    ``HealthCheck``, a ``RestartPolicy``); ``env`` keys to set (None: remove);
    ``credentials`` replaces the stored ones when ``credentials_given``."""

    values: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str | None] = field(default_factory=dict)
    credentials: GitCredentials | None = None
    credentials_given: bool = False


@record
class ReleaseInfo:
    """A release as listed: no env value (keys only), no credential."""

    release: Release
    current: bool
    previous: bool


class RemoteDeployments:
    """Deployments from git, over the deploy kit, the supervisor and the store."""

    def __init__(self, db: Database, clock: Clock, config: AgentConfig, supervisor: Supervisor,
                 env: EnvService, kit: DeployKit, logs: DeployLogs,
                 recorder: RunRecorder) -> None:
        self._db = db
        self._recorder = recorder
        self._clock = clock
        self._config = config
        self._supervisor = supervisor
        self._env = env
        self.kit = kit
        self.logs = logs

    # -- create ------------------------------------------------------------------------------

    async def create(self, spec: RemoteDeployment) -> str:
        """Validate, insert the deployment, its service, env and credentials, queue the first
        deploy; return the deployment's id. 400 naming the field, 409 for a taken name."""
        validate_env(spec.env, max_bytes=self._env.max_bytes, max_vars=self._env.max_vars)
        values = {k: getattr(spec, k) for k in UPDATABLE}
        self._check(values)
        if self._db.query_one("SELECT 1 FROM deployments WHERE name = ?", (spec.name,)):
            raise Conflict(f"A deployment named '{spec.name}' already exists",
                           details={"field": "name", "issue": "Already taken"})
        remote = await self._validate(values, spec.credentials)
        credentials = spec.credentials or remote.credentials
        now = self._clock.time()
        deployment_id, service_id = new_id("dep"), new_id("svc")

        def insert(tx: Tx) -> None:
            tx.execute(
                "INSERT INTO deployments (id, name, project_id, source, runtime, version, remote,"
                " branch, build_cmd, run_cmd, port, fixed_port, health_check, restart,"
                " stop_signal, stop_timeout, status, created_at, updated_at) VALUES"
                " (?, ?, ?, 'remote', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?)",
                (deployment_id, spec.name, spec.project_id, spec.runtime, spec.version,
                 remote.url, spec.branch, spec.build_cmd, spec.run_cmd, spec.port,
                 int(spec.fixed_port), _json(spec.health_check), _json(spec.restart),
                 spec.stop_signal, spec.stop_timeout, now, now))
            tx.execute(
                "INSERT INTO services (id, deployment_id, name, runtime, command, desired_state,"
                " state, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'stopped', 'stopped', ?, ?)",
                (service_id, deployment_id, spec.name, _service_runtime(spec.runtime),
                 spec.run_cmd, now, now))
            EnvService.insert_all(tx, service_id, spec.env, now)
            _store_credentials(tx, deployment_id, credentials, now)
            tx.emit("deployment.created", {
                "deployment_id": deployment_id, "name": spec.name, "service_id": service_id,
                "source": "remote", "project_id": spec.project_id, "runtime": spec.runtime,
                "version": spec.version, "remote": remote.url, "branch": spec.branch,
                "status": "queued"})

        try:
            await self._db.write(insert)
        except sqlite3.IntegrityError:
            raise Conflict(f"A deployment named '{spec.name}' already exists",
                           details={"field": "name", "issue": "Already taken"}) from None
        self.logs.open(spec.name)
        await self._supervisor.add(service_id)
        await self._submit(deployment_id)
        return deployment_id

    # -- update ------------------------------------------------------------------------------

    async def update(self, deployment_id: str, change: DeploymentUpdate) -> None:
        """Apply a PUT (validated whole first: nothing changes on a 400) and deploy."""
        row = self._row(deployment_id)
        if row["source"] != "remote":
            raise InvalidRequest("Only deployments from git are updated by PUT", field="source",
                                 issue="This deployment's source is not 'remote'; delete and "
                                       "create it again to change it")
        current = {k: row[k] for k in UPDATABLE}
        current["fixed_port"] = bool(current["fixed_port"])
        current["health_check"] = HealthCheck.from_dict(_load(row["health_check"]))
        current["restart"] = RestartPolicy.from_dict(_load(row["restart"]))
        values = {**current, **change.values}
        if _service_runtime(values["runtime"]) != _service_runtime(current["runtime"]):
            raise InvalidRequest("Invalid deployment configuration", field="runtime",
                                 issue="Cannot change between 'static', 'docker' and a "
                                       "process runtime; create a new deployment")
        env = self._env.mapping(row["service_id"])
        env.update({k: v for k, v in change.env.items() if v is not None})
        for key in [k for k, v in change.env.items() if v is None]:
            env.pop(key, None)
        validate_env(env, max_bytes=self._env.max_bytes, max_vars=self._env.max_vars)
        self._check(values)
        # Credentials given now win, then those written in a new remote URL, then the stored.
        remote = await self._validate(values, change.credentials)
        credentials, store = change.credentials, change.credentials_given
        if not store and remote.credentials is not None:
            credentials, store = remote.credentials, True
        elif not store and _origin(remote.url) != _origin(row["remote"]):
            credentials, store = None, True  # never hand a host's credentials to another
        elif not store:
            credentials = self._credentials(deployment_id)
            remote.with_credentials(credentials)  # they must suit the remote's scheme
        values["remote"] = remote.url
        now = self._clock.time()

        def write(tx: Tx) -> None:
            columns = ", ".join(f"{k} = ?" for k in UPDATABLE)
            tx.execute(f"UPDATE deployments SET {columns}, status = 'queued', updated_at = ?"  # noqa: S608
                       " WHERE id = ?",
                       (*(_column(k, values[k]) for k in UPDATABLE), now, deployment_id))
            for key, value in change.env.items():
                if value is None:
                    tx.execute("DELETE FROM service_env WHERE service_id = ? AND key = ?",
                               (row["service_id"], key))
                else:
                    tx.execute("INSERT INTO service_env (service_id, key, value, secret,"
                               " created_at, updated_at) VALUES (?, ?, ?, 0, ?, ?)"
                               " ON CONFLICT (service_id, key) DO UPDATE SET"
                               " value = excluded.value, updated_at = excluded.updated_at",
                               (row["service_id"], key, value, now, now))
            if store:
                _store_credentials(tx, deployment_id, credentials, now)

        await self._db.write(write)
        await self._submit(deployment_id)

    # -- rollback and releases ---------------------------------------------------------------

    async def rollback(self, deployment_id: str, release_id: str | None) -> None:
        """Queue a switch back to ``release_id`` (default: the previous release)."""
        row = self._row(deployment_id)
        if row["source"] != "remote":
            raise InvalidRequest("Only deployments from git have releases", field="source",
                                 issue="This deployment's source is not 'remote'")
        name = row["name"]
        previous = self.kit.releases.pointers(name)[1]
        target = release_id or previous
        if target is None:
            raise Conflict("There is no previous release to roll back to",
                           details={"field": "release_id", "issue": "No previous release"})
        release = await self.kit.releases.get(name, target)
        if target == row["release_id"]:
            raise Conflict(f"Release {target} is already the current release",
                           details={"field": "release_id", "issue": "Already current"})
        if row["runtime"] == DOCKER_RUNTIME:
            await self.kit.ensure_docker()
        scheme = row["remote"].split("://", 1)[0] if "://" in row["remote"] else "ssh"
        spec = self.kit.spec(
            service=name, runtime=row["runtime"], version=row["version"] or "",
            remote=Remote(url=row["remote"], scheme=scheme, host=""), branch=release.branch,
            run_cmd=release.run_cmd, port=release.port, env=release.env,
            deployment_id=deployment_id, rollback_to=release.id)
        await self.kit.queue.submit(spec)

    async def releases(self, deployment_id: str) -> list[ReleaseInfo]:
        """The deployment's releases, newest first, marking the current and previous one."""
        row = self._row(deployment_id)
        if row["source"] != "remote":
            return []
        previous = self.kit.releases.pointers(row["name"])[1]
        return [ReleaseInfo(r, current=r.id == row["release_id"], previous=r.id == previous)
                for r in await self.kit.releases.list(row["name"])]

    # -- deletion and recovery ---------------------------------------------------------------

    async def before_removal(self, service_id: str) -> None:
        """A deployment is being deleted: end its deploys (queued and running)."""
        row = self._db.query_one("SELECT name FROM services WHERE id = ?", (service_id,))
        if row is not None:
            await self.kit.queue.cancel(row["name"], "The deployment was deleted")

    async def after_removal(self, service_id: str) -> None:
        """Its service is gone: remove its releases (and a Docker deployment's images);
        followers of its log end."""
        row = self._db.query_one("SELECT name, runtime, deployment_id FROM services"
                                 " WHERE id = ?", (service_id,))
        if row is not None:
            if row["runtime"] == DOCKER_RUNTIME and self.kit.images is not None:
                await self.kit.images.remove_all(row["name"], row["deployment_id"])
            await self.kit.releases.remove_service(row["name"])
            self.logs.close(row["name"])

    async def recover(self) -> None:
        """At agent start (after the supervisor adopted the runs): settle the deploys an
        earlier agent left in flight and remove their unfinished release drafts."""

        def current_release(name: str) -> str | None:
            try:
                return self._supervisor.get(name).release_id
            except NotFound:
                return None

        for service in await self._recorder.recover(current_release):
            await self.kit.pipeline.prune(service)

    # -- helpers -----------------------------------------------------------------------------

    def _row(self, deployment_id: str) -> sqlite3.Row:
        row = self._db.query_one(
            "SELECT d.*, s.id AS service_id, s.release_id AS release_id FROM deployments d"
            " JOIN services s ON s.deployment_id = d.id WHERE d.id = ?", (deployment_id,))
        if row is None:
            raise NotFound(f"No deployment '{deployment_id}'")
        return row

    def _check(self, values: Mapping[str, Any]) -> None:
        """The checks that need nothing but the values (before any name or registry lookup)."""
        runtime = values["runtime"]
        if runtime == DOCKER_RUNTIME:
            for name in ("version", "build_cmd"):
                if values[name]:
                    raise InvalidRequest(f"Unexpected {name}", field=name,
                                         issue="Not used with runtime 'docker': the "
                                               "repository's Dockerfile says how to build")
        elif runtime not in RUNTIMES:
            raise InvalidRequest("Invalid deployment configuration", field="runtime",
                                 issue="Unsupported runtime; supported: "
                                       f"{', '.join((*RUNTIMES, DOCKER_RUNTIME))}")
        else:
            validate_version(runtime, values["version"] or "")
        if runtime not in ("static", DOCKER_RUNTIME) and not values["run_cmd"]:
            raise InvalidRequest("Missing run_cmd", field="run_cmd",
                                 issue=f"Required for runtime '{runtime}'")
        if values["fixed_port"] and values["port"] is None:
            raise InvalidRequest("Missing port", field="port", issue="Required with fixed_port")
        project = values["project_id"]
        if project is not None and self._db.query_one(
                "SELECT 1 FROM projects WHERE id = ?", (project,)) is None:
            raise InvalidRequest("Unknown project", field="project_id", issue="No such project")

    async def _validate(self, values: Mapping[str, Any],
                        credentials: GitCredentials | None) -> Remote:
        """Remote, branch, credentials, and the runtime version's availability."""
        return await self.kit.validate(runtime=values["runtime"], version=values["version"] or "",
                                       remote=values["remote"], branch=values["branch"],
                                       credentials=credentials)

    def _credentials(self, deployment_id: str) -> GitCredentials | None:
        row = self._db.query_one("SELECT * FROM deployment_credentials WHERE deployment_id = ?",
                                 (deployment_id,))
        if row is None:
            return None
        return GitCredentials(username=row["username"], password=row["password"],
                              ssh_key=row["ssh_key"])

    async def _submit(self, deployment_id: str) -> DeployRun:
        """Queue a deploy of the deployment as it is stored now."""
        row = self._row(deployment_id)
        remote = validate_remote(row["remote"], self._config.deploy.allowed_schemes)
        remote = remote.with_credentials(self._credentials(deployment_id))
        spec = self.kit.spec(
            service=row["name"], runtime=row["runtime"], version=row["version"] or "",
            remote=remote, branch=row["branch"], build_cmd=row["build_cmd"] or "",
            run_cmd=row["run_cmd"] or "", port=row["port"],
            env=self._env.mapping(row["service_id"]), deployment_id=deployment_id)
        run = await self.kit.queue.submit(spec)
        log.info("deploy_submitted", deployment_id=deployment_id, run_id=run.id)
        return run


def _origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port of a validated remote (``user@host:path`` is ssh, port 22)."""
    if "://" not in url:
        return "ssh", url.split("@")[-1].split(":")[0].lower(), None
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


def _service_runtime(runtime: str) -> str:
    """The supervisor runtime of a deployment's service."""
    return runtime if runtime in ("static", DOCKER_RUNTIME) else "process"


def _json(value: HealthCheck | RestartPolicy | None) -> str | None:
    return json.dumps(value.to_dict()) if value is not None else None


def _column(key: str, value: Any) -> Any:
    if key in ("health_check", "restart"):
        return _json(value)
    if key == "fixed_port":
        return int(bool(value))
    return value


def _load(text: str | None) -> dict[str, Any] | None:
    return json.loads(text) if text else None


def _store_credentials(tx: Tx, deployment_id: str, credentials: GitCredentials | None,
                       now: float) -> None:
    tx.execute("DELETE FROM deployment_credentials WHERE deployment_id = ?", (deployment_id,))
    if credentials is not None:
        tx.execute("INSERT INTO deployment_credentials (deployment_id, username, password,"
                   " ssh_key, updated_at) VALUES (?, ?, ?, ?, ?)",
                   (deployment_id, credentials.username, credentials.password,
                    credentials.ssh_key, now))
