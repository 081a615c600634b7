"""Deployments from git with ``runtime: "docker"`` through the API without a Docker engine:
400s naming the field come first, then 503 ``runtime_unavailable`` before anything is
written or queued; ``[runtime] default`` decides what a remote deployment without runtime is."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Client, bearer, login

REMOTE = "https://git.example.com/team/app.git"


@pytest.fixture
def missing_engine(tmp_path: Path) -> dict[str, Any]:
    """A ``[docker]`` section naming a socket nobody listens on."""
    return {"host": f"unix://{tmp_path}/no-docker.sock", "ping_interval": 0.2}


async def _create(client: Client, **body: Any) -> tuple[int, Any]:
    headers = bearer((await login(client))["access_token"])
    payload = {"name": "boxed", "source": "remote", "remote": REMOTE, **body}
    resp = await client.post("/v1/deployments", json=payload, headers=headers)
    return resp.status, await resp.json()


async def _deployments(client: Client) -> list[dict[str, Any]]:
    headers = bearer((await login(client))["access_token"])
    page = await (await client.get("/v1/deployments", headers=headers)).json()
    data: list[dict[str, Any]] = page["data"]
    return data


@pytest.mark.parametrize(("body", "field", "issue"), [
    ({"runtime": "docker", "version": "20"}, "version", "Dockerfile"),
    ({"runtime": "docker", "build_cmd": "make"}, "build_cmd", "Dockerfile"),
    ({"runtime": "ruby", "run_cmd": "ruby app.rb"}, "runtime", "docker"),
    ({"runtime": "docker", "memory": "256m"}, "memory", "remote"),
])
async def test_invalid_docker_remote_deployments_are_400_naming_the_field(
        make_client: Callable[..., Any], missing_engine: dict[str, Any], body: dict[str, Any],
        field: str, issue: str) -> None:
    """Each bad value is refused before the engine is asked, naming its field."""
    client = await make_client(docker=missing_engine)
    status, answer = await _create(client, **body)
    assert status == 400, answer
    assert answer["error"]["details"]["field"] == field
    assert issue in answer["error"]["details"]["issue"]


async def test_docker_remote_deployment_without_engine_is_503_and_nothing_is_created(
        make_client: Callable[..., Any], missing_engine: dict[str, Any]) -> None:
    """No engine: 503 runtime_unavailable saying where the engine was expected; no
    deployment, service or deploy run exists afterwards."""
    client = await make_client(docker=missing_engine)
    status, answer = await _create(client, runtime="docker", port=8080)
    assert status == 503, answer
    assert answer["error"]["code"] == "runtime_unavailable"
    assert missing_engine["host"] in answer["error"]["message"]
    assert await _deployments(client) == []
    headers = bearer((await login(client))["access_token"])
    services = await (await client.get("/v1/services", headers=headers)).json()
    assert services["data"] == []


async def test_without_runtime_a_remote_deployment_is_a_400_by_default(
        make_client: Callable[..., Any], missing_engine: dict[str, Any]) -> None:
    """[runtime] default = "process" (the default): a remote deployment without runtime is a
    400 naming the field (and listing docker among the runtimes)."""
    client = await make_client(docker=missing_engine)
    status, answer = await _create(client, run_cmd="npm start")
    assert status == 400, answer
    assert answer["error"]["details"]["field"] == "runtime"
    assert "docker" in answer["error"]["details"]["issue"]


async def test_with_runtime_default_docker_no_runtime_means_docker(
        make_client: Callable[..., Any], missing_engine: dict[str, Any]) -> None:
    """[runtime] default = "docker": a remote deployment without runtime is a Docker one
    (here 503 runtime_unavailable, for want of an engine; nothing created)."""
    client = await make_client(docker=missing_engine, runtime={"default": "docker"})
    status, answer = await _create(client)
    assert status == 503, answer
    assert answer["error"]["code"] == "runtime_unavailable"
    assert await _deployments(client) == []
