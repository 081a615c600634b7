"""The deploy pipeline: one run takes a ``DeploySpec`` from ``queued`` to ``succeeded`` or ``failed``.

Stages (``agent.deploy.stages``), each recorded with its start and end time:

``cloning``
    a release draft is made and the branch is fetched into it (commit SHA recorded);
``building``
    the toolchain is resolved (Node.js provisioned if needed), the runtime env prepared (a venv
    for Python), ``build_cmd`` (or the default build) runs; then the release is finalized:
    release.json written, the directory made read-only;
``starting``
    the ``ReleaseStarter`` (the services side) starts the release beside the running one,
    gates it on health, switches traffic and stops the old one; then the release becomes
    ``current`` and old releases are pruned.

A deployment with ``runtime: "docker"`` builds differently (``agent.deploy.images``): its
``building`` stage builds the checkout's Dockerfile into an image tagged
``dployr/<service>:<commit>`` through the ``ImageBuilder`` (no toolchain, no ``build_cmd``),
and the release records the image id, which the starter runs as a container. Pruning such
releases also removes their images' tags.

A **rollback** run (``DeploySpec.rollback_to``) fetches and builds nothing: it goes from
``queued`` straight to ``starting`` with an existing release, which the starter switches to
with the release's own env snapshot (``StartRequest.rollback``).

Any failure ends the run ``failed`` with the stage it failed in, a reason a user can act on and
the exit code when a process gave one. A failure before ``starting`` never touches the running
release (the draft is deleted); a failed start leaves the old release serving (the starter's
contract) and the built release on disk for inspection until pruned.

The pipeline knows nothing of HTTP or the database: an ``observer`` callback sees every change
of a run (the wiring persists it and emits ``deployment.*`` events from there).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog

from agent.clock import Clock
from agent.deploy.build import BuildResult, RuntimeEnv, default_build_cmd
from agent.deploy.errors import BuildFailed, DeployError, StartFailed, scrub
from agent.deploy.git import FetchResult
from agent.deploy.images import (
    DOCKER_RUNTIME,
    DOCKER_TOOLCHAIN,
    ImageBuilder,
    image_tag,
    step_exit_code,
)
from agent.deploy.logfile import DeployLog, LineSink
from agent.deploy.releases import Release, ReleaseDraft, ReleaseStore
from agent.deploy.remote import Remote
from agent.deploy.stages import TERMINAL_STAGES, Stage, check_transition
from agent.deploy.toolchains import Toolchain
from agent.errors import InvalidRequest, NotFound
from agent.ids import new_id
from agent.records import record

__all__ = [
    "BuildRunner",
    "DeployRun",
    "DeploySpec",
    "Failure",
    "Pipeline",
    "ReleaseStarter",
    "RunObserver",
    "SourceFetcher",
    "StageRecord",
    "StartRequest",
    "ToolchainSource",
]

log = structlog.get_logger("agent.deploy.pipeline")


@record
class DeploySpec:
    """What to deploy. ``remote`` is validated (``validate_remote``) and may carry credentials.

    ``log_path`` is the deployment's log file; ``deployment_id`` is opaque to the pipeline.
    ``rollback_to`` names an existing release to switch back to (nothing is fetched or built;
    ``remote``, ``branch`` and ``env`` are then only informative).
    """

    service: str
    runtime: str
    version: str
    remote: Remote
    branch: str
    log_path: Path
    build_cmd: str = ""
    run_cmd: str = ""
    port: int | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    deployment_id: str | None = None
    build_timeout: float | None = None
    rollback_to: str | None = None


@dataclass(slots=True)
class StageRecord:
    stage: Stage
    started_at: float
    finished_at: float | None = None


@record
class Failure:
    """Why a run failed: the stage it was in, a reason to show, a process exit code if any."""

    stage: Stage
    reason: str
    exit_code: int | None = None
    code: str = "deploy_failed"


@dataclass(eq=False)
class DeployRun:
    """One attempt to deploy a spec. Mutated only by the pipeline and the queue."""

    spec: DeploySpec
    created_at: float
    id: str = field(default_factory=lambda: new_id("run"))
    status: Stage = Stage.QUEUED
    stages: list[StageRecord] = field(default_factory=list)
    failure: Failure | None = None
    commit: str | None = None
    release_id: str | None = None
    toolchain: Toolchain | None = None
    superseded_by: str | None = None
    finished_at: float | None = None
    cancel_reason: str | None = None  # why a cancellation ends it (default: the agent stopped)
    done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def service(self) -> str:
        return self.spec.service

    @property
    def kind(self) -> str:
        """``deploy`` or ``rollback``."""
        return "rollback" if self.spec.rollback_to else "deploy"

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STAGES

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe view. Holds no secret: the remote has no credentials, env only its keys."""
        failure = self.failure
        return {
            "id": self.id, "kind": self.kind, "service": self.service,
            "deployment_id": self.spec.deployment_id,
            "status": str(self.status), "remote": self.spec.remote.url, "branch": self.spec.branch,
            "runtime": self.spec.runtime, "version": self.spec.version,
            "toolchain": self.toolchain.to_dict() if self.toolchain else None,
            "commit": self.commit, "release_id": self.release_id,
            "stages": [{"stage": str(r.stage), "started_at": r.started_at,
                        "finished_at": r.finished_at} for r in self.stages],
            "failure": None if failure is None else {
                "stage": str(failure.stage), "reason": failure.reason,
                "exit_code": failure.exit_code, "code": failure.code},
            "superseded_by": self.superseded_by, "env_keys": sorted(self.spec.env),
            "created_at": self.created_at, "finished_at": self.finished_at,
        }


@record
class StartRequest:
    """What the starter needs to run a release: ``env`` is the deployment's, ``runtime_env``
    the release's PATH dirs and variables. The app's environment is
    ``runtime_env.apply(builder.base_env(), {**env, "PORT": str(port)})``, as for the build;
    its working directory is ``release.app_dir``."""

    run_id: str
    service: str
    release: Release
    env: Mapping[str, str]
    runtime_env: RuntimeEnv
    run_cmd: str
    port: int | None
    log: DeployLog
    deployment_id: str | None = None
    rollback: bool = False  # switching back: ``env`` is the release's snapshot, to be restored


class ReleaseStarter(Protocol):
    """Start, health-gate and switch: implemented by the services side.

    ``start`` runs the release beside the current one on a fresh port (passed as ``PORT``),
    waits for its health check, moves traffic to it and stops the old one gracefully. On any
    failure it stops the new release, leaves the old one serving and raises
    ``agent.deploy.errors.StartFailed(reason, exit_code=...)``. If it is cancelled (agent
    shutdown) before the switch, it stops the new release and leaves the old one serving too.
    """

    async def start(self, request: StartRequest) -> None: ...


class SourceFetcher(Protocol):
    async def fetch(self, remote: Remote, branch: str, dest: Path, *,
                    sink: LineSink | None = None,
                    time_limit: float | None = None) -> FetchResult: ...


class ToolchainSource(Protocol):
    async def resolve(self, runtime: str, version: str, *,
                      sink: LineSink | None = None) -> Toolchain: ...


class BuildRunner(Protocol):
    async def prepare(self, toolchain: Toolchain, release_dir: Path,
                      deploy_log: DeployLog) -> RuntimeEnv: ...

    async def run(self, command: str, *, cwd: Path, runtime_env: RuntimeEnv,
                  env: Mapping[str, str], deploy_log: DeployLog,
                  time_limit: float | None = None) -> BuildResult: ...


RunObserver = Callable[[DeployRun], Awaitable[None]]


class Pipeline:
    """Runs deploys through their stages with the collaborators it is given."""

    def __init__(self, *, fetcher: SourceFetcher, toolchains: ToolchainSource, builder: BuildRunner,
                 releases: ReleaseStore, starter: ReleaseStarter, clock: Clock,
                 observer: RunObserver | None = None,
                 log_listener: Callable[[Path], None] | None = None,
                 log_max_bytes: int | None = None, images: ImageBuilder | None = None) -> None:
        self._fetcher = fetcher
        self._toolchains = toolchains
        self._builder = builder
        self._releases = releases
        self._starter = starter
        self._clock = clock
        self._observer = observer
        self._log_listener = log_listener
        self._log_max_bytes = log_max_bytes
        self._images = images

    def new_run(self, spec: DeploySpec) -> DeployRun:
        """A run in ``queued`` (its first stage record opened now)."""
        now = self._clock.time()
        return DeployRun(spec=spec, created_at=now, stages=[StageRecord(Stage.QUEUED, now)])

    async def transition(self, run: DeployRun, stage: Stage) -> None:
        """Move ``run`` to ``stage`` (checked against the table), stamp it, tell the observer."""
        check_transition(run.status, stage)
        now = self._clock.time()
        if run.stages:
            run.stages[-1].finished_at = now
        run.status = stage
        run.stages.append(StageRecord(stage, now, now if stage in TERMINAL_STAGES else None))
        if stage in TERMINAL_STAGES:
            run.finished_at = now
        log.info("deploy_stage", run_id=run.id, service=run.service, stage=str(stage))
        await self._notify(run)
        if stage in TERMINAL_STAGES:
            run.done.set()

    async def fail(self, run: DeployRun, reason: str, *, exit_code: int | None = None,
                   code: str = "deploy_failed") -> None:
        """End ``run`` as ``failed`` in its current stage with ``reason``."""
        run.failure = Failure(run.status, reason, exit_code, code)
        log.info("deploy_failed", run_id=run.id, service=run.service, stage=str(run.status),
                 code=code, exit_code=exit_code)
        await self.transition(run, Stage.FAILED)

    async def announce(self, run: DeployRun) -> None:
        """Tell the observer about a new run (in ``queued``)."""
        await self._notify(run)

    async def _notify(self, run: DeployRun) -> None:
        if self._observer is None:
            return
        try:
            await self._observer(run)
        except Exception as exc:  # a broken observer must not wedge the deploy
            log.error("deploy_observer_failed", run_id=run.id, error_type=type(exc).__name__)

    async def execute(self, run: DeployRun) -> DeployRun:
        """Run ``run`` (in ``queued``) to the end. Never raises, except ``CancelledError``."""
        spec = run.spec
        secrets = spec.remote.credentials.secrets() if spec.remote.credentials else ()
        dlog = DeployLog(spec.log_path, self._clock, secrets=secrets, on_write=self._log_listener,
                         max_bytes=self._log_max_bytes)
        draft: ReleaseDraft | None = None
        try:
            if spec.rollback_to:
                await self._roll_back(run, dlog)
                return run
            await self.transition(run, Stage.CLONING)
            dlog.write([f"deploy {run.id}: {spec.service} ({spec.runtime} "
                        f"{spec.version or 'newest'}) from {spec.remote.url} branch {spec.branch}"])
            draft = await self._releases.create(spec.service)
            run.release_id = draft.id
            fetched = await self._fetcher.fetch(spec.remote, spec.branch, draft.app_dir,
                                                sink=dlog.sink("git"))
            run.commit = fetched.commit
            await self.transition(run, Stage.BUILDING)
            if spec.runtime == DOCKER_RUNTIME:
                release = await self._build_image(run, draft, dlog)
            else:
                release = await self._build(run, draft, dlog)
            draft = None  # finalized: from here on it is a release, not a draft
            await self.transition(run, Stage.STARTING)
            dlog.write([f"starting release {release.id}"])
            await self._starter.start(StartRequest(
                run_id=run.id, service=spec.service, release=release, env=spec.env,
                runtime_env=release.runtime_env, run_cmd=spec.run_cmd, port=spec.port, log=dlog,
                deployment_id=spec.deployment_id))
            await self._releases.mark_current(spec.service, release.id)
            dlog.write([f"release {release.id} (commit {run.commit}) is live"])
            await self.transition(run, Stage.SUCCEEDED)
            await self.prune(spec.service)
        except DeployError as exc:
            await self._fail_logged(run, dlog, scrub(exc.reason, secrets), exc.exit_code, exc.code)
        except InvalidRequest as exc:  # the toolchain went away between validation and build
            issue = str(exc.details.get("issue") or exc.message)
            await self._fail_logged(run, dlog, issue, None, "invalid_request")
        except asyncio.CancelledError:
            if not run.finished:
                reason = run.cancel_reason or "The agent stopped during the deploy; deploy again"
                code = "cancelled" if run.cancel_reason else "interrupted"
                await asyncio.shield(self._fail_logged(run, dlog, reason, None, code))
            raise
        except Exception as exc:
            log.error("deploy_internal_error", run_id=run.id, stage=str(run.status),
                      exc_info=exc, **_os_error_fields(exc))
            if not run.finished:
                await self._fail_logged(run, dlog, f"Internal error while {run.status} "
                                        f"({type(exc).__name__}); see the agent log", None, "internal_error")
        finally:
            if draft is not None:
                await asyncio.shield(self._releases.discard(draft))
                if run.status == Stage.FAILED:
                    run.release_id = None
        return run

    async def _roll_back(self, run: DeployRun, dlog: DeployLog) -> None:
        """queued -> starting -> succeeded with an existing release (raises like ``execute``)."""
        spec = run.spec
        await self.transition(run, Stage.STARTING)
        try:
            release = await self._releases.get(spec.service, spec.rollback_to or "")
        except NotFound:
            raise StartFailed(f"Release {spec.rollback_to} no longer exists (only the last "
                              "[deploy] keep_releases are kept); pick one from the releases "
                              "list") from None
        run.release_id, run.commit = release.id, release.commit
        toolchain = release.toolchain
        executable = toolchain.get("executable")
        run.toolchain = Toolchain(str(toolchain.get("runtime") or spec.runtime),
                                  str(toolchain.get("version") or ""),
                                  Path(executable) if executable else None,
                                  source=toolchain.get("source") or "none")
        dlog.write([f"rollback {run.id}: {spec.service} to release {release.id} "
                    f"(commit {release.commit}); nothing to fetch or build"])
        await self._starter.start(StartRequest(
            run_id=run.id, service=spec.service, release=release, env=release.env,
            runtime_env=release.runtime_env, run_cmd=release.run_cmd, port=release.port,
            log=dlog, deployment_id=spec.deployment_id, rollback=True))
        await self._releases.mark_current(spec.service, release.id)
        dlog.write([f"release {release.id} (commit {release.commit}) is live again"])
        await self.transition(run, Stage.SUCCEEDED)

    async def _build(self, run: DeployRun, draft: ReleaseDraft, dlog: DeployLog) -> Release:
        spec = run.spec
        toolchain = await self._toolchains.resolve(spec.runtime, spec.version,
                                                   sink=dlog.sink("toolchain"))
        run.toolchain = toolchain
        dlog.write([f"toolchain {toolchain.runtime} {toolchain.version or '-'} ({toolchain.source})"])
        runtime_env = await self._builder.prepare(toolchain, draft.path, dlog)
        command = spec.build_cmd or default_build_cmd(spec.runtime, draft.app_dir)
        build_env = {**spec.env, "DPLOYR_COMMIT": run.commit or "", "DPLOYR_RELEASE_ID": draft.id}
        result = await self._builder.run(command, cwd=draft.app_dir, runtime_env=runtime_env,
                                         env=build_env, deploy_log=dlog,
                                         time_limit=spec.build_timeout)
        if result.timed_out:
            raise BuildFailed(f"The build timed out after {result.duration:.0f}s and was killed; "
                              "make it faster or raise [deploy] build_timeout")
        if not result.ok:
            raise BuildFailed(f"The build command exited with code {result.exit_code}; "
                              "see the deployment log", exit_code=result.exit_code)
        return await self._releases.finalize(
            draft, commit=run.commit or "", branch=spec.branch, remote=spec.remote.url,
            toolchain=toolchain, runtime_env=runtime_env, env=spec.env, build=result,
            run_cmd=spec.run_cmd, port=spec.port,
            extra={"run_id": run.id, "deployment_id": spec.deployment_id})

    async def _build_image(self, run: DeployRun, draft: ReleaseDraft, dlog: DeployLog) -> Release:
        """The ``building`` stage of a Docker deployment: the Dockerfile into an image."""
        spec = run.spec
        if self._images is None:
            raise BuildFailed("Docker builds are not available on this agent")
        run.toolchain = DOCKER_TOOLCHAIN
        commit = run.commit or ""
        tag = image_tag(spec.service, commit)
        dlog.write([f"building the Dockerfile into {tag}"])
        started = self._clock.monotonic()
        try:
            built = await self._images.build(
                draft.app_dir, service=spec.service, commit=commit, release_id=draft.id,
                deployment_id=spec.deployment_id, sink=dlog.sink("build"),
                limit=spec.build_timeout)
        except BuildFailed as exc:
            raise BuildFailed(f"The Docker build failed: {exc.reason}; see the deployment log",
                              exit_code=exc.exit_code or step_exit_code(exc.reason)) from None
        duration = self._clock.monotonic() - started
        dlog.write([f"built image {built.image_id} ({built.tag}) in {duration:.1f}s"])
        return await self._releases.finalize(
            draft, commit=commit, branch=spec.branch, remote=spec.remote.url,
            toolchain=DOCKER_TOOLCHAIN, runtime_env=RuntimeEnv(), env=spec.env,
            build=BuildResult("docker build", 0, duration), run_cmd=spec.run_cmd,
            port=spec.port, extra={"run_id": run.id, "deployment_id": spec.deployment_id,
                                   "image_id": built.image_id, "image_tag": built.tag})

    async def prune(self, service: str) -> None:
        """Prune old releases (and their images' tags); a failure here is logged and does not
        undo a successful deploy."""
        try:
            before = await self._releases.list(service) if self._images is not None else []
            removed = set(await self._releases.prune(service))
            if self._images is not None and removed:
                await self._images.forget([r for r in before if r.id in removed],
                                          [r for r in before if r.id not in removed])
        except (OSError, ValueError) as exc:
            log.warning("releases_prune_failed", service=service, error_type=type(exc).__name__)

    async def _fail_logged(self, run: DeployRun, dlog: DeployLog, reason: str,
                           exit_code: int | None, code: str) -> None:
        dlog.write([f"deploy failed while {run.status}: {reason}"])
        await self.fail(run, reason, exit_code=exit_code, code=code)


def _os_error_fields(exc: Exception) -> dict[str, object]:
    """What an OSError says about itself (never its arguments otherwise: they may hold
    anything), for the log."""
    if not isinstance(exc, OSError):
        return {}
    return {"errno": exc.errno, "error": exc.strerror, "path": exc.filename}
