"""Deployments from git with ``runtime: "docker"``: a real repository's Dockerfile (``FROM`` the
local test image) built by the real engine, run as containers, switched under traffic, rolled
back without a build, pruned and deleted with their image tags."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import bearer, login
from tests.support.agent import eventually
from tests.support.docker import BASE_IMAGE, cleanup, docker, need_docker
from tests.support.git import GitDaemon, GitRepo
from tests.support.gitdeploy import Deployer, traffic

#: The app's start script: logs a line, serves /www with busybox httpd on $PORT (each request
#: logged to stderr) after a second (Docker's proxy accepts connections on the published port
#: meanwhile: the health gate must not take that for the app), and on SIGTERM finishes what
#: is in flight before it exits.
START = """\
#!/bin/sh
echo "serving $(cat /www/index.html) on port $PORT"
sleep 1
httpd -f -v -p "$PORT" -h /www &
trap 'sleep 0.5; kill $!; exit 0' TERM
wait
"""


def app_files(text: str, *, extra_step: str = "") -> dict[str, str]:
    """A Dockerfile repository serving ``text`` at /."""
    dockerfile = (f"FROM {BASE_IMAGE}\nCOPY index.html /www/index.html\nCOPY start.sh /start.sh\n"
                  f"{extra_step}CMD [\"/bin/sh\", \"/start.sh\"]\n")
    return {"Dockerfile": dockerfile, "start.sh": START, "index.html": text + "\n"}


def tags_of(name: str) -> set[str]:
    out = docker("images", f"dployr/{name}", "--format", "{{.Repository}}:{{.Tag}}")
    return set(out.split())


def image_id(ref: str) -> str | None:
    out = docker("image", "inspect", "-f", "{{.Id}}", ref, check=False)
    return out or None


@pytest.fixture
def agent_sections() -> dict[str, dict[str, Any]]:
    """Extra config sections of the agent (a test overrides this with indirect params)."""
    return {}


@pytest.fixture
async def docker_deployer(make_client: Callable[..., Any], state_dir: Path,
                          shared_toolchains: Path,
                          agent_sections: dict[str, dict[str, Any]]) -> AsyncIterator[Deployer]:
    """An agent deploying from git:// remotes with the shared Docker engine; its containers
    and image tags are removed after the test."""
    need_docker()
    sections = dict(agent_sections)
    deploy = {"allowed_schemes": ["git", "file"], "toolchains_dir": str(shared_toolchains),
              "start_timeout": 30.0, **sections.pop("deploy", {})}
    client = await make_client(deploy=deploy, services={"startup_seconds": 0.2}, **sections)
    try:
        yield Deployer(client, bearer((await login(client))["access_token"]), state_dir)
    finally:
        await client.close()
        cleanup(state_dir)


def docker_body(name: str, remote: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "source": "remote", "runtime": "docker", "remote": remote,
            "branch": "main", **extra}


async def _log_has(deployer: Deployer, service_id: str, text: str) -> bool:
    return text in await deployer.request("GET", f"/v1/services/{service_id}/logs?tail=200",
                                          expect=200)


async def test_a_dockerfile_repo_deploys_with_one_post(
        docker_deployer: Deployer, daemon: GitDaemon, repos_root: Path) -> None:
    """One POST builds the Dockerfile into dployr/<name>:<sha>, runs it on a published port
    and through a route; the build's output is in the deploy log, the app's in the service's
    log (tail and follow)."""
    deployer = docker_deployer
    repo = GitRepo.create(repos_root / "boxed", app_files("boxed-v1"))
    dep = await deployer.deploy(docker_body("boxed", daemon.url("boxed")))
    sha = repo.head()
    assert dep["commit"] == sha and dep["runtime"] == "docker"
    assert dep["toolchain"]["runtime"] == "docker" and dep["toolchain"]["source"] == "dockerfile"
    built = image_id(f"dployr/boxed:{sha}")
    assert built is not None and dep["image_id"] == built
    labels = json.loads(docker("image", "inspect", "-f", "{{json .Config.Labels}}", built))
    assert labels["dployr.service"] == dep["service_id"]
    assert labels["dployr.release"] == dep["release_id"] and labels["dployr.commit"] == sha
    [release] = await deployer.releases("boxed")
    assert release["image_id"] == built and release["image"] == f"dployr/boxed:{sha}"

    service = await deployer.service("boxed")
    assert service["runtime"] == "docker" and service["container_id"]
    assert (await deployer.direct("boxed")).strip() == "boxed-v1"
    await deployer.route("boxed.test", dep["service_id"])
    assert await deployer.via_proxy("boxed.test") == (200, "boxed-v1\n")

    build_log = await deployer.deploy_log("boxed", "?tail=1000&stream=build")
    assert "Step 1/" in build_log and ": FROM " in build_log and "Successfully built" in build_log

    sid = dep["service_id"]
    await eventually(lambda: _log_has(deployer, sid, "serving boxed-v1 on port"),
                     timeout=20, message="the app's first line in the service log")
    resp = await deployer.client.get(f"/v1/services/{sid}/logs?follow=true&tail=0",
                                     headers=deployer.headers)
    assert resp.status == 200
    try:
        async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{service['listen_port']}/missing") as missing:
            assert missing.status == 404
        async with asyncio.timeout(20):
            line = (await resp.content.readline()).decode()
        assert "response:404" in line
    finally:
        resp.close()


@pytest.mark.parametrize("agent_sections", [{"deploy": {"keep_releases": 1}}])
async def test_redeploys_switch_under_load_and_rollback_runs_the_old_image(
        docker_deployer: Deployer, daemon: GitDaemon, repos_root: Path) -> None:
    """Two redeploys under a request loop fail no request; old releases lose their tags;
    rollback runs the previous image id with no build; delete removes every tag."""
    deployer = docker_deployer
    repo = GitRepo.create(repos_root / "swap", app_files("v0"))
    dep = await deployer.deploy(docker_body("swap", daemon.url("swap")))
    await deployer.route("swap.test", dep["service_id"])
    shas = [repo.head()]
    images = [dep["image_id"]]
    async with traffic(deployer.proxy_url + "/", "swap.test") as load:
        for n in (1, 2):
            shas.append(repo.commit({"index.html": f"v{n}\n"}))
            done = await deployer.redeploy("swap")
            assert done["status"] == "succeeded", done["status_detail"]
            assert done["commit"] == shas[n]
            images.append(done["image_id"])
            assert (await deployer.via_proxy("swap.test"))[1] == f"v{n}\n"
    seen, failures = load.seen, load.failures
    assert failures == []
    assert {"v1", "v2"} <= set(seen) <= {"v0", "v1", "v2"} and sum(seen.values()) > 20, seen
    assert len(set(images)) == 3
    # keep_releases = 1 keeps the current and the previous release: v0's tag is gone. The
    # prune runs right after the deploy is reported succeeded, so it is awaited, not assumed.
    kept = {f"dployr/swap:{shas[1]}", f"dployr/swap:{shas[2]}"}

    async def pruned() -> bool:
        return await asyncio.to_thread(tags_of, "swap") == kept

    await eventually(pruned, timeout=30, message="v0's release to be pruned")
    assert tags_of("swap") == kept
    assert image_id(images[0]) is None
    containers = docker("ps", "-q", "--filter", f"label=dployr.service={dep['service_id']}")
    assert len(containers.split()) == 1  # every replaced container was stopped

    builds = (await deployer.deploy_log("swap", "?tail=10000&stream=build")).count("\n")
    queued = await deployer.rollback("swap")
    back = await deployer.settled("swap", run_id=queued["status_detail"]["run_id"])
    assert back["status"] == "succeeded", back["status_detail"]
    assert back["status_detail"]["kind"] == "rollback"
    assert back["commit"] == shas[1] and back["image_id"] == images[1]
    assert (await deployer.via_proxy("swap.test"))[1] == "v1\n"
    assert (await deployer.direct("swap")).strip() == "v1"
    after = (await deployer.deploy_log("swap", "?tail=10000&stream=build")).count("\n")
    assert after == builds  # the rollback built nothing

    await deployer.request("DELETE", "/v1/deployments/swap", expect=204)
    assert tags_of("swap") == set()
    assert image_id(images[1]) is None and image_id(images[2]) is None


async def test_a_failing_dockerfile_step_fails_the_deploy_at_building(
        docker_deployer: Deployer, daemon: GitDaemon, repos_root: Path) -> None:
    """A RUN step exiting 3 ends the deploy failed at `building` with the exit code; the
    step's output is in the deployment log and nothing runs."""
    deployer = docker_deployer
    GitRepo.create(repos_root / "broken", app_files(
        "never", extra_step="RUN echo dployr-step-says-no; exit 3\n"))
    created = await deployer.create(docker_body("broken", daemon.url("broken")))
    dep = await deployer.settled(created["id"])
    failure = dep["status_detail"]["failure"]
    assert dep["status"] == "failed" and failure["stage"] == "building", failure
    assert failure["code"] == "build_failed" and failure["exit_code"] == 3
    assert "The Docker build failed" in failure["reason"]
    log = await deployer.deploy_log("broken", "?tail=1000&stream=build")
    assert "dployr-step-says-no" in log
    assert (await deployer.service("broken"))["state"] == "stopped"
    assert await deployer.releases("broken") == []


@pytest.mark.parametrize("agent_sections", [{"runtime": {"default": "docker"}}])
async def test_runtime_default_docker_makes_a_plain_remote_deployment_a_docker_one(
        docker_deployer: Deployer, daemon: GitDaemon, repos_root: Path) -> None:
    """With [runtime] default = "docker", a remote deployment that names no runtime builds
    its Dockerfile and runs as a container; a version is refused for it."""
    deployer = docker_deployer
    GitRepo.create(repos_root / "plain", app_files("plain"))
    body = {"name": "plain", "source": "remote", "remote": daemon.url("plain")}
    bad = await deployer.create({**body, "version": "20"}, expect=400)
    assert bad["error"]["details"]["field"] == "version"
    dep = await deployer.deploy(body)
    assert dep["runtime"] == "docker" and dep["image_id"]
    assert (await deployer.service("plain"))["runtime"] == "docker"
    assert (await deployer.direct("plain")).strip() == "plain"


@pytest.mark.parametrize("agent_sections", [{"deploy": {"keep_releases": 1}}])
async def test_rebuilding_one_commit_moves_its_tag_and_pruning_removes_the_old_image(
        docker_deployer: Deployer, daemon: GitDaemon, repos_root: Path) -> None:
    """PUT {} rebuilds the same commit: the tag moves to the new image; once the first
    release is pruned its image, left without a tag, is removed too."""
    deployer = docker_deployer
    repo = GitRepo.create(repos_root / "again", app_files("same"))
    images = [(await deployer.deploy(docker_body("again", daemon.url("again"))))["image_id"]]
    for _ in range(2):
        done = await deployer.redeploy("again")
        assert done["status"] == "succeeded", done["status_detail"]
        images.append(done["image_id"])
    assert len(set(images)) == 3

    async def pruned() -> bool:  # the prune runs right after the deploy is reported succeeded
        return await asyncio.to_thread(image_id, images[0]) is None

    await eventually(pruned, timeout=30, message="the first release's image to be removed")
    assert tags_of("again") == {f"dployr/again:{repo.head()}"}
    assert image_id(f"dployr/again:{repo.head()}") == images[2]
    assert image_id(images[0]) is None  # pruned: removed although it had no tag left
    assert image_id(images[1]) is not None  # the previous release keeps its image
    assert (await deployer.direct("again")).strip() == "same"


async def test_deleting_during_a_build_cancels_it_and_leaves_no_image(
        docker_deployer: Deployer, daemon: GitDaemon, repos_root: Path) -> None:
    """DELETE while a Dockerfile step runs: the build is cancelled, its step container goes
    away and no dployr/<name> tag is ever made."""
    deployer = docker_deployer
    GitRepo.create(repos_root / "slow", app_files(
        "slow", extra_step="RUN echo dployr-slow-step-started; sleep 60\n"))
    created = await deployer.create(docker_body("slow", daemon.url("slow")))

    async def step_running() -> bool:
        log = await deployer.deploy_log(created["id"], "?tail=1000&stream=build")
        return "dployr-slow-step-started" in log

    await eventually(step_running, timeout=30, message="the slow step to start")
    await deployer.request("DELETE", f"/v1/deployments/{created['id']}", expect=204)

    async def step_gone() -> bool:
        out = await asyncio.to_thread(docker, "ps", "-a", "--no-trunc", "--format",
                                      "{{.Command}}")
        return "dployr-slow-step-started" not in out

    await eventually(step_gone, timeout=30, message="the build's step container to go")
    assert tags_of("slow") == set()
