"""Image deployments (``source: "image"``): run an image, update it, roll it back. No HTTP.

A deployment owns one service (``runtime = "docker"``) and a list of *releases*, one per image
it ran: the reference asked for (``web:1.2``) and the image id it resolved to. The service
runs the newest release's image id, so a tag that later moves never changes a running
service. Each release's image is tagged ``dployr/<name>:<release id>``: it stays on the host
for rollback even when the user's tag moves or is deleted, and pruning (all but the newest
``[deploy] keep_releases``) removes only that tag, so the image goes away only when nothing
else names it.

- ``create``: resolve (pull if absent) the image, insert deployment, service, env and first
  release in one transaction with ``deployment.created``, start the service.
- ``update`` (PUT): a new ``image`` makes a new release; ``env`` sets variables; ``memory``
  and ``cpus`` replace the limits; a running service is then restarted on the new settings
  (its deployment goes ``pending`` -> ``succeeded``/``failed`` as on create).
- ``rollback``: a new release copying an earlier one (default: the newest whose image differs
  from the current), with ``deployment.rolled_back``; no pull, no build: the image id is on
  this host or the rollback is refused (409).

The Docker engine must answer for each of these (else 503 ``runtime_unavailable``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import structlog

from agent.clock import Clock
from agent.config import DeployConfig, DockerConfig, ServicesConfig
from agent.deployments import AppSettings, Deployment, DeploymentService
from agent.docker.engine import DockerEngine
from agent.docker.images import ImageMissing, release_tag, resolve_image, validate_reference
from agent.docker.sdk import docker
from agent.env import EnvService, validate_env
from agent.errors import BadGateway, Conflict, InvalidRequest, NotFound, RuntimeUnavailable
from agent.ids import new_id
from agent.records import record
from agent.store import Database, Tx
from agent.supervisor.manager import Supervisor
from agent.supervisor.states import DesiredState

__all__ = ["ImageDeployment", "ImageDeployments", "ImageRelease", "ImageUpdate"]

log = structlog.get_logger("agent.docker.releases")


@record(kw_only=True)
class ImageDeployment(AppSettings):
    """What a user asks for to run an image. ``memory`` in bytes, ``cpus`` in CPUs."""

    image: str
    run_cmd: str | None = None
    memory: int | None = None
    cpus: float | None = None


@record
class ImageUpdate:
    """A PUT on an image deployment; None leaves a setting as it is. ``limits`` holds the
    limits to change (``memory`` bytes, ``cpus``); a None value removes that limit."""

    image: str | None = None
    env: Mapping[str, str | None] | None = None   # a None value removes that variable
    limits: Mapping[str, Any] | None = None


@record
class ImageRelease:
    id: str
    deployment_id: str
    image: str
    image_id: str
    rollback_of: str | None
    created_at: float

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> ImageRelease:
        return cls(id=row["id"], deployment_id=row["deployment_id"], image=row["image"],
                   image_id=row["image_id"], rollback_of=row["rollback_of"],
                   created_at=row["created_at"])


def _delete_release(release_id: str) -> Callable[[Tx], None]:
    def delete(tx: Tx) -> None:
        tx.execute("DELETE FROM image_releases WHERE id = ?", (release_id,))

    return delete


def _limits(memory: int | None, cpus: float | None) -> dict[str, Any] | None:
    limits = {k: v for k, v in (("memory", memory), ("cpus", cpus)) if v is not None}
    return limits or None


@contextlib.contextmanager
def _engine_errors() -> Iterator[None]:
    """An error of the engine's own (not a missing image: those are 400s) is a 502."""
    try:
        yield
    except docker.errors.APIError as exc:
        log.warning("docker_request_failed", status=exc.status_code)
        raise BadGateway(f"The Docker engine refused: {str(exc.explanation or exc)[:300]}") \
            from None


class ImageDeployments:
    """Create, update and roll back image deployments; list their releases."""

    def __init__(self, db: Database, clock: Clock, engine: DockerEngine, *,
                 supervisor: Supervisor, env: EnvService, deployments: DeploymentService,
                 services: ServicesConfig, docker_config: DockerConfig,
                 deploy: DeployConfig) -> None:
        self._db = db
        self._clock = clock
        self._engine = engine
        self._supervisor = supervisor
        self._env = env
        self._deployments = deployments
        self._services = services
        self._docker = docker_config
        self._keep = deploy.keep_releases
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, deployment_id: str) -> asyncio.Lock:
        return self._locks.setdefault(deployment_id, asyncio.Lock())

    # -- queries -----------------------------------------------------------------------------

    def releases(self, key: str) -> list[ImageRelease]:
        """The deployment's releases, newest first (the first one runs)."""
        deployment = self._image_deployment(key)
        rows = self._db.query("SELECT * FROM image_releases WHERE deployment_id = ?"
                              " ORDER BY id DESC", (deployment.id,))
        return [ImageRelease.from_row(r) for r in rows]

    def _image_deployment(self, key: str) -> Deployment:
        deployment = self._deployments.get(key)
        if deployment.source != "image":
            raise InvalidRequest("Not an image deployment", field="source",
                                 issue="Only deployments with source 'image' have image "
                                       "releases in this agent version")
        return deployment

    # -- create, update, rollback ------------------------------------------------------------

    async def create(self, spec: ImageDeployment) -> Deployment:
        """Insert the deployment, its service, env and first release; start it.
        400 (bad input, image not found), 409 (name taken), 503 (no engine), 502 (engine
        error)."""
        with _engine_errors():
            return await self._create(spec)

    async def update(self, key: str, change: ImageUpdate) -> Deployment:
        """Apply a PUT: new release, env, limits; restart a running service on them."""
        with _engine_errors():
            return await self._update(key, change)

    async def rollback(self, key: str, release_id: str | None = None) -> Deployment:
        """Run an earlier release's image again, as a new release (see ``_rollback``)."""
        with _engine_errors():
            return await self._rollback(key, release_id)

    async def _create(self, spec: ImageDeployment) -> Deployment:
        """Insert the deployment, its service, env and first release; start it.
        400 (bad input, image not found), 409 (name taken), 503 (no engine)."""
        validate_reference(spec.image)
        validate_env(spec.env, max_bytes=self._services.env_value_max_bytes,
                     max_vars=self._services.env_max_vars)
        if spec.project_id is not None and self._db.query_one(
                "SELECT 1 FROM projects WHERE id = ?", (spec.project_id,)) is None:
            raise InvalidRequest("Unknown project", field="project_id", issue="No such project")
        await self._engine.ensure()
        image_id = await self._resolve(spec.image)
        now = self._clock.time()
        deployment_id, service_id, release_id = new_id("dep"), new_id("svc"), new_id("rel")
        limits = _limits(spec.memory, spec.cpus)

        def insert(tx: Tx) -> None:
            tx.execute(
                "INSERT INTO deployments (id, name, project_id, source, runtime, image, run_cmd,"
                " port, fixed_port, health_check, restart, limits, stop_signal, stop_timeout,"
                " status, created_at, updated_at) VALUES (?, ?, ?, 'image', 'docker', ?, ?, ?,"
                " ?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
                (deployment_id, spec.name, spec.project_id, spec.image, spec.run_cmd, spec.port,
                 int(spec.fixed_port),
                 json.dumps(spec.health_check.to_dict()) if spec.health_check else None,
                 json.dumps(spec.restart.to_dict()), json.dumps(limits) if limits else None,
                 spec.stop_signal, spec.stop_timeout, now, now))
            tx.execute(
                "INSERT INTO services (id, deployment_id, name, runtime, command, desired_state,"
                " state, needs_build, image_id, created_at, updated_at)"
                " VALUES (?, ?, ?, 'docker', ?, 'running', 'stopped', 0, ?, ?, ?)",
                (service_id, deployment_id, spec.name, spec.run_cmd, image_id, now, now))
            EnvService.insert_all(tx, service_id, spec.env, now)
            self._insert_release(tx, release_id, deployment_id, spec.image, image_id, None, now)
            tx.emit("deployment.created", {"deployment_id": deployment_id, "name": spec.name,
                                           "service_id": service_id, "source": "image",
                                           "image": spec.image, "image_id": image_id,
                                           "release_id": release_id})

        try:
            await self._db.write(insert)
        except sqlite3.IntegrityError:
            raise Conflict(f"A deployment named '{spec.name}' already exists",
                           details={"field": "name", "issue": "Already taken"}) from None
        await self._supervisor.add(service_id)
        await self._supervisor.start(service_id)
        await self._tag(image_id, spec.name, release_id)  # after the start: not on its path
        return self._deployments.get(deployment_id)

    async def _resolve(self, ref: str) -> str:
        try:
            image = await resolve_image(self._engine, ref, limit=self._docker.pull_timeout)
        except ImageMissing as exc:
            raise InvalidRequest("Image not found", field="image", issue=str(exc)) from None
        return str(image["Id"])

    @staticmethod
    def _insert_release(tx: Tx, release_id: str, deployment_id: str, image: str, image_id: str,
                        rollback_of: str | None, now: float) -> None:
        tx.execute("INSERT INTO image_releases (id, deployment_id, image, image_id, rollback_of,"
                   " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                   (release_id, deployment_id, image, image_id, rollback_of, now))

    # -- update and rollback -----------------------------------------------------------------

    async def _update(self, key: str, change: ImageUpdate) -> Deployment:
        """Apply a PUT: new release, env, limits; restart a running service on them."""
        deployment = self._image_deployment(key)
        if change.image is not None:
            validate_reference(change.image)
        env_set = {k: v for k, v in (change.env or {}).items() if v is not None}
        env_removed = [k for k, v in (change.env or {}).items() if v is None]
        if env_set:
            self._check_env(deployment, env_set)
        async with self._lock(deployment.id):
            await self._engine.ensure()
            image_id = await self._resolve(change.image) if change.image is not None else None
            release_id = new_id("rel")
            restart = self._running(deployment)
            now = self._clock.time()
            limits = None
            if change.limits is not None:
                merged = {**(deployment.limits or {}), **change.limits}
                limits = {k: v for k, v in merged.items() if v is not None}

            def write(tx: Tx) -> None:
                if change.image is not None and image_id is not None:
                    self._insert_release(tx, release_id, deployment.id, change.image, image_id,
                                         None, now)
                    tx.execute("UPDATE deployments SET image = ? WHERE id = ?",
                               (change.image, deployment.id))
                    tx.execute("UPDATE services SET image_id = ? WHERE id = ?",
                               (image_id, deployment.service_id))
                if limits is not None:
                    tx.execute("UPDATE deployments SET limits = ? WHERE id = ?",
                               (json.dumps(limits) if limits else None, deployment.id))
                if env_set:
                    EnvService.upsert_all(tx, str(deployment.service_id), env_set, now)
                if env_removed:
                    EnvService.remove_all(tx, str(deployment.service_id), env_removed)
                self._mark_pending(tx, deployment.id, restart, now)

            await self._db.write(write)
            if image_id is not None:
                await self._tag(image_id, deployment.name, release_id)
            await self._apply(deployment, restart)
        return self._deployments.get(deployment.id)

    async def _rollback(self, key: str, release_id: str | None = None) -> Deployment:
        """Run an earlier release's image again (default: the newest one whose image differs
        from the current), as a new release; 409 when there is none or its image is gone."""
        deployment = self._image_deployment(key)
        async with self._lock(deployment.id):
            releases = self.releases(deployment.id)
            target = self._target(releases, release_id)
            await self._engine.ensure()
            if not await self._present(target.image_id):
                raise Conflict(f"The image of release '{target.id}' is no longer on this host",
                               details={"release_id": target.id, "image_id": target.image_id})
            new_release = new_id("rel")
            restart = self._running(deployment)
            now = self._clock.time()

            def write(tx: Tx) -> None:
                self._insert_release(tx, new_release, deployment.id, target.image,
                                     target.image_id, target.id, now)
                tx.execute("UPDATE deployments SET image = ? WHERE id = ?",
                           (target.image, deployment.id))
                tx.execute("UPDATE services SET image_id = ? WHERE id = ?",
                           (target.image_id, deployment.service_id))
                self._mark_pending(tx, deployment.id, restart, now)
                tx.emit("deployment.rolled_back", {
                    "deployment_id": deployment.id, "name": deployment.name,
                    "service_id": deployment.service_id, "from_release_id": releases[0].id,
                    "to_release_id": new_release, "rollback_of": target.id,
                    "image": target.image, "image_id": target.image_id})

            await self._db.write(write)
            await self._tag(target.image_id, deployment.name, new_release)
            await self._apply(deployment, restart)
        return self._deployments.get(deployment.id)

    @staticmethod
    def _target(releases: list[ImageRelease], release_id: str | None) -> ImageRelease:
        if not releases:
            raise Conflict("This deployment has no release")
        current = releases[0]
        if release_id is not None:
            for release in releases:
                if release.id == release_id:
                    if release.id == current.id:
                        raise Conflict("That release is the current one")
                    return release
            raise NotFound(f"No release '{release_id}' of this deployment (older ones are "
                           "pruned)")
        for release in releases[1:]:
            if release.image_id != current.image_id:
                return release
        raise Conflict("No earlier release with another image to roll back to")

    def _check_env(self, deployment: Deployment, env: Mapping[str, str]) -> None:
        validate_env(env, max_bytes=self._services.env_value_max_bytes,
                     max_vars=self._services.env_max_vars)
        existing = set(self._env.mapping(str(deployment.service_id)))
        if len(existing | set(env)) > self._services.env_max_vars:
            raise InvalidRequest("Too many environment variables", field="env",
                                 issue=f"At most {self._services.env_max_vars} per service")

    def _running(self, deployment: Deployment) -> bool:
        if deployment.service_id is None:
            return False
        try:
            info = self._supervisor.get(deployment.service_id)
        except NotFound:
            return False
        return info.desired_state is DesiredState.RUNNING

    @staticmethod
    def _mark_pending(tx: Tx, deployment_id: str, restart: bool, now: float) -> None:
        """A restart reports its outcome through the deployment status, as a create does."""
        status = "pending" if restart else "succeeded"
        tx.execute("UPDATE deployments SET status = ?, status_detail = NULL, updated_at = ?"
                   " WHERE id = ?", (status, now, deployment_id))

    async def _apply(self, deployment: Deployment, restart: bool) -> None:
        if deployment.service_id is None:
            return
        await self._supervisor.refresh(deployment.service_id)
        if restart:
            await self._supervisor.restart(deployment.service_id)
        await self._prune(deployment)

    # -- images ------------------------------------------------------------------------------

    async def _present(self, image_id: str) -> bool:
        try:
            await self._engine.call(
                lambda c: c.api.inspect_image(image_id))  # type: ignore[no-untyped-call]
        except docker.errors.ImageNotFound:
            return False
        return True

    async def _tag(self, image_id: str, name: str, release_id: str) -> None:
        """Keep the release's image on the host (best effort: a failure only weakens a later
        rollback, which then says the image is gone)."""
        repository, tag = release_tag(name, release_id)
        try:
            await self._engine.call(lambda c: c.api.tag(image_id, repository, tag))
        except (RuntimeUnavailable, docker.errors.APIError) as exc:
            log.warning("release_tag_failed", release_id=release_id,
                        error_type=type(exc).__name__)

    async def _untag(self, name: str, release_id: str) -> bool:
        """Remove a release's tag (and its image if nothing else names it). False when the
        engine refused (e.g. a container still uses an image with no other name)."""
        repository, tag = release_tag(name, release_id)
        try:
            await self._engine.call(lambda c: c.api.remove_image(f"{repository}:{tag}"))
        except docker.errors.ImageNotFound:
            return True
        except (RuntimeUnavailable, docker.errors.APIError) as exc:
            log.info("release_image_kept", release_id=release_id, error_type=type(exc).__name__)
            return False
        return True

    async def _prune(self, deployment: Deployment) -> None:
        """Drop all but the newest ``keep`` releases and their tags."""
        for release in self.releases(deployment.id)[self._keep:]:
            if await self._untag(deployment.name, release.id):
                await self._db.write(_delete_release(release.id))
                log.info("release_pruned", deployment_id=deployment.id, release_id=release.id)

    async def remove_images(self, service_id: str) -> None:
        """Removal hook: the deployment is being deleted; drop its release tags."""
        row = self._db.query_one("SELECT d.id, d.name FROM deployments d JOIN services s"
                                 " ON s.deployment_id = d.id WHERE s.id = ?", (service_id,))
        if row is None:
            return
        rows = self._db.query("SELECT id FROM image_releases WHERE deployment_id = ?",
                              (row["id"],))
        for release in rows:
            with contextlib.suppress(Exception):
                await self._untag(row["name"], release["id"])
