"""Fixtures of the Docker tests: an agent under ``aiohttp_client`` using the shared engine;
everything its containers and release tags leave behind is removed afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import bearer, login
from tests.support.docker import BASE_IMAGE, cleanup, need_docker
from tests.support.services import Harness


class DockerHarness(Harness):
    """The services harness, plus image deployments."""

    async def deploy_image(self, name: str, image: str = BASE_IMAGE, *, expect: int = 201,
                           **extra: Any) -> dict[str, Any]:
        body = {"name": name, "source": "image", "image": image, **extra}
        result: dict[str, Any] = await self.request("POST", "/v1/deployments", json=body,
                                                    expect=expect)
        return result


@pytest.fixture
def docker_config() -> dict[str, Any]:
    """The ``[docker]`` section of these tests: quick stats."""
    return {"stats_interval": 1.0}


@pytest.fixture
def agent_sections() -> dict[str, dict[str, Any]]:
    """Other config sections of these tests' agent (a module may override this)."""
    return {}


@pytest.fixture
async def dock(make_client: Callable[..., Any], state_dir: Path, tmp_path: Path,
               docker_config: dict[str, Any],
               agent_sections: dict[str, dict[str, Any]]) -> AsyncIterator[DockerHarness]:
    """An agent running containers on the shared engine; its containers are removed after."""
    need_docker()
    apps_root = tmp_path / "srv"
    apps_root.mkdir(exist_ok=True)

    async def remake() -> TestClient:
        return await make_client(services={"startup_seconds": 0.2,
                                           "allowed_local_roots": [str(apps_root)]},
                                 docker=docker_config, metrics={"interval": 0.5},
                                 **agent_sections)

    client = await remake()
    harness = DockerHarness(client, bearer((await login(client))["access_token"]), apps_root,
                            state_dir, remake)
    try:
        yield harness
    finally:
        await harness.client.close()  # first: a live agent would restart what is removed
        cleanup(state_dir)
