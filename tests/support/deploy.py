"""A deploy pipeline wired from real parts (git, toolchains, builder, releases) and a fake starter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.clock import SystemClock
from agent.deploy.build import Builder
from agent.deploy.git import GitFetcher
from agent.deploy.pipeline import DeployRun, DeploySpec, Pipeline
from agent.deploy.provision import NodeProvisioner
from agent.deploy.releases import ReleaseStore
from agent.deploy.remote import GitCredentials, validate_remote
from agent.deploy.toolchains import ToolchainResolver
from agent.testing import FakeStarter

SCHEMES = ("git", "file", "http", "https")


@dataclass
class Rig:
    """A pipeline wired from real parts under ``root``, with a fake starter and a recorder."""

    root: Path
    pipeline: Pipeline
    starter: FakeStarter
    releases: ReleaseStore
    provisioner: NodeProvisioner
    seen: list[tuple[str, str]] = field(default_factory=list)

    def spec(self, remote: str, *, service: str = "web", runtime: str = "static", version: str = "",
             branch: str = "main", credentials: GitCredentials | None = None, **kw: Any) -> DeploySpec:
        parsed = validate_remote(remote, SCHEMES).with_credentials(credentials)
        return DeploySpec(service=service, runtime=runtime, version=version, remote=parsed,
                          branch=branch, log_path=self.root / "logs" / f"{service}.log", **kw)

    async def deploy(self, spec: DeploySpec) -> DeployRun:
        run = self.pipeline.new_run(spec)
        await self.pipeline.announce(run)
        return await self.pipeline.execute(run)

    def statuses(self, run: DeployRun) -> list[str]:
        return [status for run_id, status in self.seen if run_id == run.id]

    def log(self, service: str = "web") -> str:
        return (self.root / "logs" / f"{service}.log").read_text()


@asynccontextmanager
async def make_rig(tmp_path: Path, shared_toolchains: Path) -> AsyncIterator[Rig]:
    """Build a Rig rooted at ``tmp_path``; Node.js is provisioned into ``shared_toolchains``."""
    clock = SystemClock()
    provisioner = NodeProvisioner("https://registry.npmjs.org", shared_toolchains)
    starter = FakeStarter()
    releases = ReleaseStore(tmp_path / "apps", clock=clock, keep=5)
    seen: list[tuple[str, str]] = []

    async def observe(run: DeployRun) -> None:
        seen.append((run.id, str(run.status)))

    pipeline = Pipeline(
        fetcher=GitFetcher(allowed_schemes=SCHEMES, timeout=60, known_hosts=tmp_path / "known_hosts"),
        toolchains=ToolchainResolver(shared_toolchains, provisioners={"nodejs": provisioner}),
        builder=Builder(clock=clock, cache_dir=tmp_path / "cache", kill_grace=1.0),
        releases=releases, starter=starter, clock=clock, observer=observe)
    try:
        yield Rig(tmp_path, pipeline, starter, releases, provisioner, seen)
    finally:
        await provisioner.close()


