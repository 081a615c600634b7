"""``DeployKit``: the deploy pipeline's parts built from the configuration, ready to wire.

The services side supplies the ``ReleaseStarter`` (start beside, health-gate, switch, stop old)
and, usually, an observer that persists each run and emits ``deployment.*`` events. Wiring in
``create_app`` is then::

    kit = DeployKit.from_config(config, clock=clock, starter=services_starter, observer=persist)
    app[DEPLOY_KEY] = kit
    app.cleanup_ctx.append(kit.cleanup_ctx)      # closes the queue and the HTTP session

and an API handler validates a request with ``await kit.validate(...)`` (400s naming the
field) before ``await kit.queue.submit(kit.spec(...))``.

Paths, under ``[state] dir`` unless configured: ``toolchains/`` (or ``[deploy]
toolchains_dir``), ``apps/<service>/releases/``, ``apps/<service>/logs/deploy.log``,
``cache/`` (npm, pip and go caches shared by builds), ``ssh/known_hosts``. A deployment log
is rotated at ``[services] log_max_bytes``, keeping one older file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.clock import Clock
from agent.config import AgentConfig
from agent.deploy.build import Builder
from agent.deploy.git import GitFetcher
from agent.deploy.images import DOCKER_RUNTIME, ImageBuilder
from agent.deploy.pipeline import DeploySpec, Pipeline, ReleaseStarter, RunObserver
from agent.deploy.provision import NodeProvisioner
from agent.deploy.queue import DeployQueue
from agent.deploy.releases import ReleaseStore
from agent.deploy.remote import GitCredentials, Remote, validate_branch, validate_remote
from agent.deploy.toolchains import Provisioner, ToolchainResolver
from agent.errors import RuntimeUnavailable

__all__ = ["DeployKit"]


@dataclass
class DeployKit:
    """Every deploy part, built once per agent. Create it inside the running event loop's app."""

    config: AgentConfig
    fetcher: GitFetcher
    toolchains: ToolchainResolver
    provisioner: NodeProvisioner | None
    builder: Builder
    releases: ReleaseStore
    pipeline: Pipeline
    queue: DeployQueue
    images: ImageBuilder | None = None

    @classmethod
    def from_config(cls, config: AgentConfig, *, clock: Clock, starter: ReleaseStarter,
                    observer: RunObserver | None = None,
                    log_listener: Callable[[Path], None] | None = None,
                    releases: ReleaseStore | None = None,
                    images: ImageBuilder | None = None) -> DeployKit:
        """Build the parts from ``[deploy]`` and ``[state]``. ``log_listener`` hears of every
        write to a deployment log (to wake its followers); ``releases`` replaces the store
        made from the config (``release_store``), when the starter needs the same one;
        ``images`` builds the Dockerfiles of ``runtime: "docker"`` deployments (without it
        that runtime is refused)."""
        state = config.state.dir
        deploy = config.deploy
        toolchains_dir = Path(deploy.toolchains_dir) if deploy.toolchains_dir else state / "toolchains"
        provisioner = (NodeProvisioner(deploy.npm_registry, toolchains_dir)
                       if deploy.provision_nodejs else None)
        provisioners: dict[str, Provisioner] = {"nodejs": provisioner} if provisioner else {}
        fetcher = GitFetcher(allowed_schemes=deploy.allowed_schemes, timeout=deploy.clone_timeout,
                             known_hosts=state / "ssh" / "known_hosts",
                             submodules=deploy.git_submodules)
        resolver = ToolchainResolver(toolchains_dir, provisioners=provisioners)
        builder = Builder(clock=clock, cache_dir=state / "cache", timeout=deploy.build_timeout)
        releases = releases or cls.release_store(config, clock)
        pipeline = Pipeline(fetcher=fetcher, toolchains=resolver, builder=builder, releases=releases,
                            starter=starter, clock=clock, observer=observer,
                            log_listener=log_listener,
                            log_max_bytes=config.services.log_max_bytes, images=images)
        queue = DeployQueue(pipeline, max_concurrent=deploy.max_concurrent_deploys)
        return cls(config, fetcher, resolver, provisioner, builder, releases, pipeline, queue,
                   images)

    @staticmethod
    def release_store(config: AgentConfig, clock: Clock) -> ReleaseStore:
        """The release store of ``config``: ``<state>/apps``, keeping ``[deploy] keep_releases``."""
        return ReleaseStore(config.state.dir / "apps", clock=clock, keep=config.deploy.keep_releases)

    def log_path(self, service: str) -> Path:
        """The deployment log of ``service`` (every run of it appends there)."""
        return self.releases.service_dir(service) / "logs" / "deploy.log"

    async def validate(self, *, runtime: str, version: str, remote: str, branch: str,
                       credentials: GitCredentials | None = None) -> Remote:
        """Check a deploy request before anything runs; 400 naming the field otherwise.

        Returns the validated remote (credentials attached, none in its ``url``). The
        runtime version must be installed or provisionable (503 if the registry is down);
        ``runtime: "docker"`` needs the Docker engine to answer now (503
        ``runtime_unavailable`` otherwise).
        """
        parsed = validate_remote(remote, self.config.deploy.allowed_schemes)
        validate_branch(branch)
        parsed = parsed.with_credentials(credentials)
        if runtime == DOCKER_RUNTIME:
            await self.ensure_docker()
        else:
            await self.toolchains.check(runtime, version)
        return parsed

    async def ensure_docker(self) -> None:
        """503 ``runtime_unavailable`` unless Dockerfile builds can run now."""
        if self.images is None:
            raise RuntimeUnavailable("Docker builds are not available on this agent")
        await self.images.ensure()

    def spec(self, *, service: str, runtime: str, version: str, remote: Remote, branch: str,
             build_cmd: str = "", run_cmd: str = "", port: int | None = None,
             env: Mapping[str, str] | None = None, deployment_id: str | None = None,
             rollback_to: str | None = None) -> DeploySpec:
        """A ``DeploySpec`` logging to ``log_path(service)``."""
        return DeploySpec(service=service, runtime=runtime, version=version, remote=remote,
                          branch=branch, log_path=self.log_path(service), build_cmd=build_cmd,
                          run_cmd=run_cmd, port=port, env=dict(env or {}),
                          deployment_id=deployment_id, rollback_to=rollback_to)

    async def close(self) -> None:
        """Stop the queue (runs in flight end failed) and close the registry session."""
        await self.queue.close()
        if self.provisioner is not None:
            await self.provisioner.close()

    async def cleanup_ctx(self, _app: Any) -> AsyncIterator[None]:
        """For ``app.cleanup_ctx``: nothing to start, ``close()`` at shutdown."""
        yield
        await self.close()
