"""Fixtures for the deploy pipeline's integration tests: real git servers, real toolchains."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import bearer, have_binary, login, require
from tests.support.deploy import Rig, make_rig
from tests.support.git import GitDaemon, GitRepo, SmartHttpGit
from tests.support.gitdeploy import Deployer
from tests.support.proxy import CaddyProcess
from tests.support.services import kill_apps


@pytest.fixture
def repos_root(tmp_path: Path) -> Path:
    root = tmp_path / "repos"
    root.mkdir()
    return root


@pytest.fixture
def daemon(repos_root: Path) -> Iterator[GitDaemon]:
    """``git daemon`` on 127.0.0.1 exporting ``repos_root``."""
    server = GitDaemon(repos_root).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def app_repo(repos_root: Path) -> GitRepo:
    """A repository ``app`` with a README and a build script, on branch ``main``."""
    return GitRepo.create(repos_root / "app", {
        "README.md": "hello\n",
        "build.sh": "#!/bin/sh\necho built > built.txt\n",
    })


@pytest.fixture
async def http_git(repos_root: Path) -> AsyncIterator[SmartHttpGit]:
    """Smart HTTP git on 127.0.0.1 behind Basic auth (user ``deploy``)."""
    server = await SmartHttpGit(repos_root, "deploy", "tok-9f8e7d6c5b4a").start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture(scope="session")
def shared_toolchains(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A toolchains dir shared by the whole session: real Node.js downloads happen once."""
    return tmp_path_factory.mktemp("toolchains")


@pytest.fixture
async def rig(tmp_path: Path, shared_toolchains: Path) -> AsyncIterator[Rig]:
    """A pipeline of real parts with a FakeStarter, recording every status change."""
    async with make_rig(tmp_path, shared_toolchains) as built:
        yield built


async def _deployer(make_client: Callable[..., Any], state_dir: Path, shared_toolchains: Path,
                    proxy: dict[str, Any] | None = None,
                    proxy_url: str | None = None) -> AsyncIterator[Deployer]:
    client = await make_client(
        deploy={"allowed_schemes": ["git", "file", "http", "https"],
                "toolchains_dir": str(shared_toolchains), "start_timeout": 30.0},
        services={"startup_seconds": 0.2}, **({"proxy": proxy} if proxy else {}))
    headers = bearer((await login(client))["access_token"])
    try:
        yield Deployer(client, headers, state_dir, proxy_url=proxy_url)
    finally:
        await client.close()
        kill_apps(state_dir)


@pytest.fixture
async def deployer(make_client: Callable[..., Any], state_dir: Path,
                   shared_toolchains: Path) -> AsyncIterator[Deployer]:
    """An agent (built-in proxy) that deploys from git://, file:// and http:// remotes with
    the session's toolchains; every app it started is killed after the test."""
    async for made in _deployer(make_client, state_dir, shared_toolchains):
        yield made


@pytest.fixture
async def caddy_deployer(make_client: Callable[..., Any], state_dir: Path, tmp_path: Path,
                         shared_toolchains: Path) -> AsyncIterator[Deployer]:
    """The same agent with the Caddy proxy backend, driving a Caddy the test runs."""
    require("caddy", have_binary("caddy"), "the caddy binary is not on PATH")
    caddy = CaddyProcess(tmp_path / "caddy")
    caddy.start()
    try:
        await caddy.wait_ready()
        proxy = {"backend": "caddy", "caddy_admin": caddy.admin_url,
                 "caddy_listen": [f"127.0.0.1:{caddy.listen_port}"], "caddy_poll_interval": 0.2}
        async for made in _deployer(make_client, state_dir, shared_toolchains, proxy,
                                    f"http://127.0.0.1:{caddy.listen_port}"):
            yield made
    finally:
        caddy.stop()
