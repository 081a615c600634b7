"""Releases of image deployments: a PUT with a new tag deploys it, a rollback runs the previous
image id again without a pull or a build (even once its tag is gone), old images are pruned."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.integration.docker.conftest import DockerHarness
from tests.support.agent import eventually
from tests.support.docker import docker, need_docker, web_image

REPO = "dployr-test-releases"


@pytest.fixture
def agent_sections() -> dict[str, dict[str, Any]]:
    return {"deploy": {"keep_releases": 3}}


@pytest.fixture
def images() -> Iterator[dict[str, str]]:
    """Three web images, v1..v3, answering their version; removed after."""
    need_docker()
    made = {v: web_image(f"{REPO}:{v}", f"version {v}") for v in ("v1", "v2", "v3")}
    try:
        yield made
    finally:
        docker("rmi", "-f", *(f"{REPO}:{v}" for v in made), check=False)
        docker("rmi", *set(made.values()), check=False)


async def _version(port: int) -> str | None:
    try:
        async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{port}/", timeout=aiohttp.ClientTimeout(total=2)) as resp:
            return (await resp.text()).strip() if resp.status == 200 else None
    except (aiohttp.ClientError, TimeoutError):
        return None


async def _serves(dock: DockerHarness, sid: str, version: str) -> dict[str, Any]:
    """Wait until the service runs and answers ``version``; return its status."""

    async def check() -> dict[str, Any] | None:
        status = await dock.status(sid)
        if status["state"] != "running":
            return None
        return status if await _version(status["listen_port"]) == f"version {version}" else None

    result: dict[str, Any] = await eventually(check, timeout=30, message=f"{version} to answer")
    return result


async def test_put_new_tag_then_rollback_to_the_previous_image_without_a_build(
        dock: DockerHarness, images: dict[str, str]) -> None:
    """v1, PUT v2 (a new release, new container), then rollback: v1's image id runs again
    although its tag was deleted meanwhile (so nothing was pulled or built), as a new
    release, with a deployment.rolled_back event."""
    dep = await dock.deploy_image("rel", f"{REPO}:v1")
    sid = dep["service_id"]
    first = await _serves(dock, sid, "v1")

    updated = await dock.request("PUT", f"/v1/deployments/{dep['id']}", expect=200,
                                 json={"image": f"{REPO}:v2"})
    assert updated["image"] == f"{REPO}:v2" and updated["image_id"] == images["v2"]
    second = await _serves(dock, sid, "v2")
    assert second["container_id"] != first["container_id"]
    done = await dock.request("GET", f"/v1/deployments/{dep['id']}", expect=200)
    assert done["status"] == "succeeded"

    docker("rmi", f"{REPO}:v1")  # the user's tag is gone; the release's tag keeps the image
    rolled = await dock.request("POST", f"/v1/deployments/{dep['id']}/rollback", expect=200)
    assert rolled["image"] == f"{REPO}:v1" and rolled["image_id"] == images["v1"]
    third = await _serves(dock, sid, "v1")
    assert third["container_id"] not in (first["container_id"], second["container_id"])

    releases = (await dock.request("GET", f"/v1/deployments/{dep['id']}/releases",
                                   expect=200))["data"]
    assert [(r["image_id"], r["current"]) for r in releases] == [
        (images["v1"], True), (images["v2"], False), (images["v1"], False)]
    assert releases[0]["rollback_of"] == releases[2]["id"]

    with contextlib.closing(sqlite3.connect(dock.state_dir / "agent.db")) as conn:
        rows = conn.execute("SELECT data FROM events WHERE type = 'deployment.rolled_back'")
        event = json.loads(rows.fetchone()[0])
    assert event["deployment_id"] == dep["id"] and event["image_id"] == images["v1"]
    assert (event["from_release_id"], event["to_release_id"]) == (releases[1]["id"],
                                                                  releases[0]["id"])

    again = await dock.request("POST", f"/v1/deployments/{dep['id']}/rollback", expect=200)
    assert again["image_id"] == images["v2"]  # a second rollback undoes the first
    await _serves(dock, sid, "v2")


async def test_old_release_images_are_pruned(dock: DockerHarness,
                                             images: dict[str, str]) -> None:
    """With keep_releases = 3, a fourth release drops the first one's tag: an image only the
    agent still named goes away with it; images the user tags stay."""
    dep = await dock.deploy_image("pruned", f"{REPO}:v1")
    sid = dep["service_id"]
    await _serves(dock, sid, "v1")
    for version in ("v2", "v3"):
        await dock.request("PUT", f"/v1/deployments/{dep['id']}", expect=200,
                           json={"image": f"{REPO}:{version}"})
        await _serves(dock, sid, version)
    first = (await dock.request("GET", f"/v1/deployments/{dep['id']}/releases",
                                expect=200))["data"][-1]
    assert len(docker("images", "dployr/pruned", "--format", "{{.Tag}}").split()) == 3

    docker("rmi", f"{REPO}:v1")
    await dock.request("PUT", f"/v1/deployments/{dep['id']}", expect=200,
                       json={"image": f"{REPO}:v2"})
    await _serves(dock, sid, "v2")
    releases = (await dock.request("GET", f"/v1/deployments/{dep['id']}/releases",
                                   expect=200))["data"]
    assert [r["image_id"] for r in releases] == [images["v2"], images["v3"], images["v2"]]
    tags = docker("images", "dployr/pruned", "--format", "{{.Tag}}").split()
    assert sorted(tags) == sorted(r["id"] for r in releases)
    # v1's release was pruned and nothing else named its image: it is gone from the host.
    assert docker("image", "inspect", images["v1"], check=False) == "[]"
    assert docker("images", "-q", f"{REPO}:v2") != ""  # the user's tags stay
    missing = await dock.request("POST", f"/v1/deployments/{dep['id']}/rollback", expect=404,
                                 json={"release_id": first["id"]})
    assert missing["error"]["code"] == "not_found"


async def test_put_changes_env_and_limits_and_restarts(dock: DockerHarness) -> None:
    """PUT with env and limits only: same image, a new container with the new env and
    limits; `memory: null` removes the memory limit."""
    dep = await dock.deploy_image("tuned", run_cmd='echo "mode=$MODE"; exec sleep 1000',
                                  memory="64m")
    sid = dep["service_id"]
    first = await dock.wait_state(sid, "running")
    updated = await dock.request("PUT", f"/v1/deployments/{dep['id']}", expect=200,
                                 json={"env": {"MODE": "fast"}, "memory": None, "cpus": 0.25})
    assert updated["memory"] is None and updated["cpus"] == 0.25
    second = await dock.wait_state(sid, "running",
                                   where=lambda s: s["container_id"] != first["container_id"])
    from tests.support.docker import inspect

    host = inspect(second["container_id"])["HostConfig"]
    assert host["Memory"] == 0 and host["NanoCpus"] == 250_000_000
    assert "MODE=fast" in inspect(second["container_id"])["Config"]["Env"]
    releases = (await dock.request("GET", f"/v1/deployments/{dep['id']}/releases",
                                   expect=200))["data"]
    assert len(releases) == 1
