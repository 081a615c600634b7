"""Fixtures for the deploy pipeline's integration tests: real git servers, real toolchains."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import bearer, login
from tests.support.deploy import Rig, make_rig
from tests.support.git import GitDaemon, GitRepo, SmartHttpGit
from tests.support.gitdeploy import Deployer
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


@pytest.fixture
async def deployer(make_client: Callable[..., Any], state_dir: Path,
                   shared_toolchains: Path) -> AsyncIterator[Deployer]:
    """An agent that deploys from git:// and file:// remotes, with the session's toolchains;
    every app it started is killed after the test."""
    client = await make_client(
        deploy={"allowed_schemes": ["git", "file", "http", "https"],
                "toolchains_dir": str(shared_toolchains), "start_timeout": 30.0},
        services={"startup_seconds": 0.2})
    headers = bearer((await login(client))["access_token"])
    try:
        yield Deployer(client, headers, state_dir)
    finally:
        await client.close()
        kill_apps(state_dir)
