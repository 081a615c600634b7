"""Fixtures shared by every test: a config, the app under ``aiohttp_client``, tokens per role."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from agent.app import AdminSeed, create_app
from agent.config import AgentConfig
from agent.testing import FakeClock
from tests.support.agent import ADMIN_EMAIL, ADMIN_PASSWORD, LiveAgent, make_config
from tests.support.services import Harness, kill_apps

Client = TestClient  # the type of the ``client`` fixture


def require(component: str, available: bool, why: str) -> None:
    """Skip when ``component`` is missing, or fail when DPLOYR_TEST_REQUIRE names it."""
    if available:
        return
    required = {c.strip() for c in os.environ.get("DPLOYR_TEST_REQUIRE", "").split(",")}
    if component in required:
        pytest.fail(f"{component} is required (DPLOYR_TEST_REQUIRE) but unavailable: {why}")
    pytest.skip(f"{component} unavailable: {why}")


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    return path


@pytest.fixture
def config(state_dir: Path) -> AgentConfig:
    return make_config(state_dir)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_client(aiohttp_client: Any, state_dir: Path) -> Callable[..., Any]:
    """Build a client for an app made from ``make_config(state_dir, **sections)``."""

    async def _make(config: AgentConfig | None = None, *, clock: FakeClock | None = None,
                    **sections: dict[str, Any]) -> TestClient:
        cfg = config or make_config(state_dir, **sections)
        app = create_app(cfg, clock=clock, admin=AdminSeed(ADMIN_EMAIL, ADMIN_PASSWORD))
        return await aiohttp_client(app)

    return _make


@pytest.fixture
async def client(make_client: Callable[..., Any]) -> TestClient:
    """A client for the agent with the default test config and the real clock."""
    return await make_client()


async def login(client: TestClient, email: str = ADMIN_EMAIL,
                password: str = ADMIN_PASSWORD) -> dict[str, Any]:
    """Log in and return the token response."""
    resp = await client.post("/v1/auth/login", json={"email": email, "password": password})
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def admin_headers(client: TestClient) -> dict[str, str]:
    return bearer((await login(client))["access_token"])


@pytest.fixture
async def role_headers(client: TestClient, admin_headers: dict[str, str]) -> dict[str, dict[str, str]]:
    """Authorization headers for one user of each role: admin, developer, viewer."""
    headers = {"admin": admin_headers}
    for role in ("developer", "viewer"):
        email = f"{role}@example.com"
        resp = await client.post("/v1/users", headers=admin_headers,
                                 json={"email": email, "password": f"{role}-password", "role": role})
        assert resp.status == 201, await resp.text()
        headers[role] = bearer((await login(client, email, f"{role}-password"))["access_token"])
    return headers


@pytest.fixture
def live_agent(tmp_path: Path) -> Iterator[LiveAgent]:
    """A real ``dployr-agent serve`` process (started by the test with ``.start()``)."""
    agent = LiveAgent(state_dir=tmp_path / "state")
    try:
        yield agent
    finally:
        agent.stop()


def have_binary(name: str) -> bool:
    return shutil.which(name) is not None


# -- services (supervisor, logs, env, local deployments) --------------------------------------

@pytest.fixture
def apps_root(tmp_path: Path) -> Path:
    """The directory local deployments of a test may run from (allowed_local_roots)."""
    path = tmp_path / "srv"
    path.mkdir()
    return path


@pytest.fixture
def services_config(state_dir: Path, apps_root: Path) -> dict[str, Any]:
    """The ``[services]`` section of service tests: local apps allowed, quick startup."""
    return {"allowed_local_roots": [str(apps_root)], "startup_seconds": 0.2}


@pytest.fixture
async def svc(make_client: Callable[..., Any], state_dir: Path, apps_root: Path,
              services_config: dict[str, Any]) -> AsyncIterator[Harness]:
    """An agent that may run apps from ``apps_root``; every app it started is killed after."""

    async def remake() -> TestClient:
        return await make_client(services=services_config)

    client = await remake()
    headers = bearer((await login(client))["access_token"])
    try:
        yield Harness(client, headers, apps_root, state_dir, remake)
    finally:
        kill_apps(state_dir)
