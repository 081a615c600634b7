"""Image deployments through the API without a Docker engine: validation (400 naming the
field), roles, and 503 ``runtime_unavailable`` while everything else keeps working."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Client, bearer, login
from tests.support.agent import eventually
from tests.support.services import Harness


@pytest.fixture
def missing_engine(tmp_path: Path) -> dict[str, Any]:
    """A ``[docker]`` section naming a socket nobody listens on."""
    return {"host": f"unix://{tmp_path}/no-docker.sock", "ping_interval": 0.2,
            "retry_interval": 0.2}


@pytest.fixture
async def nodocker(make_client: Callable[..., Any], missing_engine: dict[str, Any]) -> Client:
    client: Client = await make_client(docker=missing_engine)
    return client


async def _create(client: Client, headers: dict[str, str], **body: Any) -> tuple[int, Any]:
    payload = {"name": "web", "source": "image", "image": "nginx:1.25", **body}
    resp = await client.post("/v1/deployments", json=payload, headers=headers)
    return resp.status, await resp.json()


@pytest.mark.parametrize(("body", "field"), [
    ({"image": "Nginx:1.25"}, "image"),
    ({"image": "nginx::1"}, "image"),
    ({"image": "nginx:1.25 --privileged"}, "image"),
    ({"image": None}, "image"),
    ({"memory": "lots"}, "memory"),
    ({"memory": "1m"}, "memory"),
    ({"memory": 1024}, "memory"),
    ({"cpus": 0}, "cpus"),
    ({"cpus": 4096.0}, "cpus"),
    ({"runtime": "nodejs"}, "runtime"),
    ({"path": "/srv/app"}, "path"),
    ({"build_cmd": "make"}, "build_cmd"),
])
async def test_invalid_image_deployments_are_400_naming_the_field(
        nodocker: Client, body: dict[str, Any], field: str) -> None:
    """Each bad value is refused before the engine is asked, naming its field."""
    headers = bearer((await login(nodocker))["access_token"])
    status, answer = await _create(nodocker, headers, **body)
    assert status == 400, answer
    assert answer["error"]["code"] == "invalid_request"
    assert answer["error"]["details"]["field"] == field


async def test_image_deployment_without_engine_is_503_and_the_rest_works(
        nodocker: Client, missing_engine: dict[str, Any]) -> None:
    """No engine: creating an image deployment answers 503 runtime_unavailable saying where
    the engine was expected and why; nothing is created; other endpoints keep working and
    the instance is not degraded (nothing here uses Docker)."""
    headers = bearer((await login(nodocker))["access_token"])
    status, answer = await _create(nodocker, headers, memory="256m", cpus=0.5)
    assert status == 503, answer
    error = answer["error"]
    assert error["code"] == "runtime_unavailable"
    assert missing_engine["host"] in error["message"] and "no such socket" in error["message"]
    assert error["details"]["runtime"] == "docker"
    for path in ("/v1/deployments", "/v1/services", "/v1/projects", "/v1/instances/self"):
        resp = await nodocker.get(path, headers=headers)
        assert resp.status == 200, path
    assert (await (await nodocker.get("/v1/deployments", headers=headers)).json())["data"] == []
    instance = await (await nodocker.get("/v1/instances/self", headers=headers)).json()
    assert instance["status"] == "healthy"


async def test_roles_for_image_deployments(make_client: Callable[..., Any],
                                           missing_engine: dict[str, Any]) -> None:
    """A developer may deploy an image (here: 503, past the role check); a viewer may not."""
    client = await make_client(docker=missing_engine)
    admin = bearer((await login(client))["access_token"])
    for role in ("developer", "viewer"):
        resp = await client.post("/v1/users", headers=admin, json={
            "email": f"{role}@example.com", "password": f"{role}-password", "role": role})
        assert resp.status == 201
    developer = bearer((await login(client, "developer@example.com",
                                    "developer-password"))["access_token"])
    viewer = bearer((await login(client, "viewer@example.com", "viewer-password"))["access_token"])
    assert (await _create(client, developer))[0] == 503
    assert (await _create(client, viewer))[0] == 403


async def test_docker_by_default_without_engine_degrades_the_instance(
        make_client: Callable[..., Any], missing_engine: dict[str, Any]) -> None:
    """With `[runtime] default = "docker"` and no engine, the instance is degraded with the
    reason runtime_unavailable."""
    client = await make_client(docker=missing_engine, runtime={"default": "docker"},
                               metrics={"interval": 0.5})
    headers = bearer((await login(client))["access_token"])

    async def degraded() -> dict[str, Any] | None:
        body: dict[str, Any] = await (await client.get("/v1/instances/self",
                                                       headers=headers)).json()
        return body if body["status"] == "degraded" else None

    body = await eventually(degraded, timeout=20, message="a degraded instance")
    reasons = {r["code"]: r["message"] for r in body["reasons"]}
    assert "Docker engine" in reasons["runtime_unavailable"]


async def test_limits_and_image_updates_are_for_image_deployments_only(svc: Harness) -> None:
    """`memory`/`cpus`/`image` on a local deployment and its rollback are 400; it lists no
    releases."""
    resp = await svc.client.post("/v1/deployments", headers=svc.headers, json={
        "name": "loc", "source": "local", "path": str(svc.apps_root), "run_cmd": "sleep 1",
        "memory": "256m"})
    assert resp.status == 400
    assert (await resp.json())["error"]["details"]["field"] == "memory"
    dep = await svc.deploy("plain", "exec sleep 1000")
    for method, path, body, field in (
            ("PUT", f"/v1/deployments/{dep['id']}", {"image": "x:1"}, "image"),
            ("PUT", f"/v1/deployments/{dep['id']}", {"memory": "1g"}, "memory"),
            ("POST", f"/v1/deployments/{dep['id']}/rollback", {}, "source")):
        resp = await svc.client.request(method, path, headers=svc.headers, json=body)
        assert resp.status == 400, path
        assert (await resp.json())["error"]["details"]["field"] == field
    resp = await svc.client.get(f"/v1/deployments/{dep['id']}/releases", headers=svc.headers)
    assert resp.status == 200 and (await resp.json())["data"] == []
    resp = await svc.client.put("/v1/deployments/nope", headers=svc.headers, json={})
    assert resp.status == 404
