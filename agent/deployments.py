"""Deployments (seed: Deployments): list, get and delete every deployment, create the ``local``
source (an app in a directory of this host). Deployments from git (``remote``) are created,
updated and rolled back by ``agent.delivery``. Knows nothing of HTTP.

A deployment owns exactly one service (same name). Creating one inserts the deployment, its
service and its env vars in one transaction (with ``deployment.created``), takes the service
under supervision and starts it: the optional ``build_cmd`` runs once first (logged with the
service's logs), then ``run_cmd`` through ``/bin/sh -c`` in the app directory. Status:
``pending`` -> ``building`` (when there is a build) -> ``succeeded`` once the first run is
launched, or ``failed`` (with ``status_detail.reason``) when the build or the launch failed.

A local path must resolve (symlinks and ``..`` resolved first) to a directory inside one of
``[services] allowed_local_roots``; the resolved path is what is stored and run.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import field
from pathlib import Path
from typing import Any

from agent.clock import Clock
from agent.config import ServicesConfig
from agent.env import EnvService, validate_env
from agent.errors import Conflict, InvalidRequest, NotFound
from agent.ids import new_id
from agent.records import record
from agent.store import Database, Tx
from agent.supervisor.health import HealthCheck
from agent.supervisor.manager import Supervisor
from agent.supervisor.policy import RestartPolicy

__all__ = ["AppSettings", "Deployment", "DeploymentService", "LocalDeployment", "resolve_local_path"]


@record(kw_only=True)
class AppSettings:
    """How any deployment's app runs, whatever its source: keyword-only, so that each source
    adds its own fields around these."""

    name: str
    port: int | None = None
    fixed_port: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    project_id: str | None = None
    health_check: HealthCheck | None = None
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    stop_signal: str = "SIGTERM"
    stop_timeout: float = 10.0


@record(kw_only=True)
class LocalDeployment(AppSettings):
    """What a user asks for to run an app from a local directory."""

    path: str
    run_cmd: str
    build_cmd: str | None = None


@record
class Deployment:
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
    limits: dict[str, Any] | None
    stop_signal: str
    stop_timeout: float
    status: str
    status_detail: dict[str, Any] | None
    created_at: float
    updated_at: float
    service_id: str | None
    release_id: str | None = None               # the release the service runs now
    release: dict[str, Any] | None = None       # the run that made it live: commit, toolchain
    has_credentials: bool = False
    image_id: str | None = None                 # the image the service runs (image deployments)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Deployment:
        def js(key: str) -> Any:
            return json.loads(row[key]) if row[key] else None

        return cls(id=row["id"], name=row["name"], project_id=row["project_id"],
                   source=row["source"], runtime=row["runtime"], version=row["version"],
                   remote=row["remote"], branch=row["branch"], path=row["path"],
                   image=row["image"], build_cmd=row["build_cmd"], run_cmd=row["run_cmd"],
                   port=row["port"], fixed_port=bool(row["fixed_port"]),
                   health_check=js("health_check"), restart=js("restart"), limits=js("limits"),
                   stop_signal=row["stop_signal"], stop_timeout=row["stop_timeout"],
                   status=row["status"], status_detail=js("status_detail"),
                   created_at=row["created_at"], updated_at=row["updated_at"],
                   service_id=row["service_id"], release_id=row["release_id"],
                   release=js("release_detail"), has_credentials=bool(row["has_credentials"]),
                   image_id=row["image_id"])


# The current release's details come from the newest run that made it live.
_SELECT = (
    "SELECT d.*, s.id AS service_id, s.release_id AS release_id, s.image_id AS image_id,"
    " EXISTS (SELECT 1 FROM deployment_credentials c WHERE c.deployment_id = d.id)"
    " AS has_credentials,"
    " (SELECT r.detail FROM deploy_runs r WHERE r.deployment_id = d.id"
    "  AND r.status = 'succeeded' AND json_extract(r.detail, '$.release_id') = s.release_id"
    "  ORDER BY r.created_at DESC LIMIT 1) AS release_detail"
    " FROM deployments d LEFT JOIN services s ON s.deployment_id = d.id")


def resolve_local_path(raw: str, roots: tuple[Path, ...]) -> Path:
    """The real directory ``raw`` names, if it is inside an allowed root; else InvalidRequest."""
    if not roots:
        raise InvalidRequest("Local deployments are disabled on this instance", field="path",
                             issue="Set [services] allowed_local_roots to allow them")
    path = Path(raw)
    if not path.is_absolute():
        raise InvalidRequest("Invalid path", field="path", issue="Must be an absolute path")
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError, ValueError):
        raise InvalidRequest("Invalid path", field="path", issue="No such directory") from None
    if not resolved.is_dir():
        raise InvalidRequest("Invalid path", field="path", issue="Not a directory")
    for root in roots:
        try:
            real_root = root.resolve(strict=True)
        except (OSError, RuntimeError):
            continue
        if resolved == real_root or resolved.is_relative_to(real_root):
            return resolved
    raise InvalidRequest("Invalid path", field="path",
                         issue="Outside the directories allowed for local deployments")


RemovalHook = Callable[[str], Awaitable[object]]


class DeploymentService:
    """Create, list, fetch and delete deployments (the local source)."""

    def __init__(self, db: Database, clock: Clock, config: ServicesConfig,
                 supervisor: Supervisor, env: EnvService) -> None:
        self._db = db
        self._clock = clock
        self._config = config
        self._supervisor = supervisor
        self._env = env
        self._removal_hooks: list[RemovalHook] = []
        self._pre_removal_hooks: list[RemovalHook] = []

    def add_removal_hook(self, hook: RemovalHook, *, before: bool = False) -> None:
        """Call ``hook(service_id)`` when a deployment's service is removed, before its rows
        go (e.g. to delete the service's proxy routes); with ``before``, already before the
        service is stopped (e.g. to cancel its deploys)."""
        (self._pre_removal_hooks if before else self._removal_hooks).append(hook)

    def list(self, *, limit: int, after: str | None = None, project_id: str | None = None,
             status: str | None = None) -> tuple[list[Deployment], str | None]:
        """Up to ``limit`` deployments in creation order after the cursor (optionally of one
        project, or in one status), and the next cursor."""
        sql = _SELECT + " WHERE d.id > ?"
        params: list[Any] = [after or ""]
        if project_id is not None:
            sql += " AND d.project_id = ?"
            params.append(project_id)
        if status is not None:
            sql += " AND d.status = ?"
            params.append(status)
        rows = self._db.query(sql + " ORDER BY d.id LIMIT ?", (*params, limit + 1))
        items = [Deployment.from_row(r) for r in rows[:limit]]
        return items, (items[-1].id if len(rows) > limit else None)

    def get(self, key: str) -> Deployment:
        """One deployment by id or name; NotFound otherwise."""
        row = self._db.query_one(_SELECT + " WHERE d.id = ? OR d.name = ?", (key, key))
        if row is None:
            raise NotFound(f"No deployment '{key}'")
        return Deployment.from_row(row)

    async def create_local(self, spec: LocalDeployment) -> Deployment:
        """Insert the deployment, its service and env; start it. 400/409 on bad input."""
        path = resolve_local_path(spec.path, self._config.allowed_local_roots)
        validate_env(spec.env, max_bytes=self._config.env_value_max_bytes,
                     max_vars=self._config.env_max_vars)
        if spec.project_id is not None and self._db.query_one(
                "SELECT 1 FROM projects WHERE id = ?", (spec.project_id,)) is None:
            raise InvalidRequest("Unknown project", field="project_id", issue="No such project")
        now = self._clock.time()
        deployment_id, service_id = new_id("dep"), new_id("svc")

        def insert(tx: Tx) -> None:
            tx.execute(
                "INSERT INTO deployments (id, name, project_id, source, path, build_cmd, run_cmd,"
                " port, fixed_port, health_check, restart, stop_signal, stop_timeout, status,"
                " created_at, updated_at) VALUES (?, ?, ?, 'local', ?, ?, ?, ?, ?, ?, ?, ?, ?,"
                " 'pending', ?, ?)",
                (deployment_id, spec.name, spec.project_id, str(path), spec.build_cmd,
                 spec.run_cmd, spec.port, int(spec.fixed_port),
                 json.dumps(spec.health_check.to_dict()) if spec.health_check else None,
                 json.dumps(spec.restart.to_dict()), spec.stop_signal, spec.stop_timeout,
                 now, now))
            tx.execute(
                "INSERT INTO services (id, deployment_id, name, runtime, command, cwd,"
                " desired_state, state, needs_build, created_at, updated_at)"
                " VALUES (?, ?, ?, 'process', ?, ?, 'running', 'stopped', ?, ?, ?)",
                (service_id, deployment_id, spec.name, spec.run_cmd, str(path),
                 int(bool(spec.build_cmd)), now, now))
            EnvService.insert_all(tx, service_id, spec.env, now)
            tx.emit("deployment.created", {"deployment_id": deployment_id, "name": spec.name,
                                           "service_id": service_id, "source": "local"})

        try:
            await self._db.write(insert)
        except sqlite3.IntegrityError:
            raise Conflict(f"A deployment named '{spec.name}' already exists",
                           details={"field": "name", "issue": "Already taken"}) from None
        await self._supervisor.add(service_id)
        await self._supervisor.start(service_id)
        return self.get(deployment_id)

    async def delete(self, key: str) -> None:
        """Stop the service, remove its env vars, logs, files and rows."""
        deployment = self.get(key)
        if deployment.service_id is not None:
            for hook in self._pre_removal_hooks:
                await hook(deployment.service_id)
            # NotFound: not under supervision (e.g. its runtime is unavailable): rows only.
            with contextlib.suppress(NotFound):
                await self._supervisor.remove(deployment.service_id)
            for hook in self._removal_hooks:
                await hook(deployment.service_id)

        def drop(tx: Tx) -> int:
            deleted = tx.execute("DELETE FROM deployments WHERE id = ?", (deployment.id,)).rowcount
            if deleted:
                tx.emit("deployment.deleted", {"deployment_id": deployment.id,
                                               "name": deployment.name,
                                               "service_id": deployment.service_id})
            return int(deleted)

        if not await self._db.write(drop):
            raise NotFound(f"No deployment '{key}'")
