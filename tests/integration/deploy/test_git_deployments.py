"""Deployments from git end to end: real repositories on 127.0.0.1, real builds, real apps,
traffic through the agent's own proxy."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from agent.events import Event, Subscription
from agent.keys import BUS_KEY
from tests.support.agent import eventually
from tests.support.git import GitDaemon, GitRepo
from tests.support.gitdeploy import Deployer, node_files, py_files, remote_body
from tests.support.services import wrappers_of


def drain(subscription: Subscription) -> list[Event]:
    """The events received so far."""
    events = []
    while not subscription._queue.empty():
        events.append(subscription._queue.get_nowait())
    return events


async def test_python_app_deploys_answers_and_redeploys_a_new_commit(
        deployer: Deployer, daemon: GitDaemon, repos_root: Path) -> None:
    """A Python app deploys, answers through a proxy route, and a new commit redeploys with its SHA."""
    repo = GitRepo.create(repos_root / "py", py_files("v1"))
    dep = await deployer.deploy(remote_body("py", daemon.url("py"), env={"GREETING": "hi"}))
    assert dep["commit"] == repo.head() and dep["toolchain"]["runtime"] == "python"
    stages = [s["stage"] for s in dep["status_detail"]["stages"]]
    assert stages == ["queued", "cloning", "building", "starting", "succeeded"]
    await deployer.route("py.test", dep["service_id"])
    assert await deployer.via_proxy("py.test") == (200, "v1 hi")
    sha = repo.commit({"VERSION": "v2\n"})
    again = await deployer.redeploy("py")
    assert again["status"] == "succeeded" and again["commit"] == sha != dep["commit"]
    assert await deployer.via_proxy("py.test") == (200, "v2 hi")
    releases = await deployer.releases("py")
    assert [(r["commit"], r["current"], r["previous"]) for r in releases] == [
        (sha, True, False), (dep["commit"], False, True)]


async def test_each_failure_names_its_stage_and_the_previous_release_keeps_serving(
        deployer: Deployer, daemon: GitDaemon, repos_root: Path) -> None:
    """Unknown branch fails at cloning, a build at building, a crash or a failed gate at starting."""
    GitRepo.create(repos_root / "web", py_files("v1"))
    dep = await deployer.deploy(remote_body("web", daemon.url("web")))
    await deployer.route("web.test", dep["service_id"])
    pid = (await deployer.service("web"))["pid"]
    cases = [
        ({"branch": "nope"}, "cloning", "unknown_branch", None, "Branch 'nope' does not exist"),
        ({"build_cmd": "echo broken >&2; exit 3"}, "building", "build_failed", 3,
         "exited with code 3"),
        ({"build_cmd": None, "run_cmd": "echo 'cannot start' >&2; exit 4"}, "starting",
         "start_failed", 4, "exited (exit code 4) before it passed its health check"),
        ({"run_cmd": "exec sleep 600", "health_check": {"type": "tcp", "start_timeout": 1}},
         "starting", "start_failed", None, "did not pass its health check (TCP connect"),
    ]
    for change, stage, code, exit_code, reason in cases:
        failed = await deployer.redeploy("web", {"branch": "main", "run_cmd": "exec python app.py",
                                                 "health_check": None, **change})
        failure = failed["status_detail"]["failure"]
        assert failed["status"] == "failed", change
        assert (failure["stage"], failure["code"], failure["exit_code"]) == (stage, code, exit_code)
        assert reason in failure["reason"] and failed["release_id"] == dep["release_id"]
        assert await deployer.via_proxy("web.test") == (200, "v1 hello")
        status = await deployer.service("web")
        assert (status["state"], status["pid"]) == ("running", pid)
    log = await deployer.deploy_log("web")
    assert " build broken" in log and " app cannot start" in log


async def test_rollback_restores_code_and_env_without_building(
        deployer: Deployer, daemon: GitDaemon, repos_root: Path, tmp_path: Path) -> None:
    """A rollback switches back to the previous release and its env snapshot; the build does not run."""
    counter = tmp_path / "builds"
    repo = GitRepo.create(repos_root / "rb", py_files("v1"))
    events = deployer.client.app[BUS_KEY].subscribe()
    first = await deployer.deploy(remote_body("rb", daemon.url("rb"), env={"GREETING": "one"},
                                              build_cmd=f"echo built >> {counter}"))
    await deployer.route("rb.test", first["service_id"])
    repo.commit({"VERSION": "v2\n"})
    second = await deployer.redeploy("rb", {"env": {"GREETING": "two"}})
    assert await deployer.via_proxy("rb.test") == (200, "v2 two")
    assert counter.read_text().count("built") == 2
    queued = await deployer.rollback("rb")
    assert queued["status"] == "queued" and queued["status_detail"]["kind"] == "rollback"
    back = await deployer.settled("rb", run_id=queued["status_detail"]["run_id"])
    assert back["status"] == "succeeded" and back["release_id"] == first["release_id"]
    assert [s["stage"] for s in back["status_detail"]["stages"]] == ["queued", "starting",
                                                                     "succeeded"]
    assert await deployer.via_proxy("rb.test") == (200, "v1 one")
    assert counter.read_text().count("built") == 2
    env = await deployer.request("GET", "/v1/services/rb/env", expect=200)
    assert {e["key"]: e["value"] for e in env["data"]} == {"GREETING": "one"}
    rolled = [e for e in drain(events) if e.type == "deployment.rolled_back"]
    assert [(e.data["from_release_id"], e.data["to_release_id"]) for e in rolled] == [
        (second["release_id"], first["release_id"])]
    # The previous release is now the one rolled back from: rolling back again undoes it.
    releases = await deployer.releases("rb")
    assert {r["id"]: (r["current"], r["previous"]) for r in releases} == {
        first["release_id"]: (True, False), second["release_id"]: (False, True)}
    await deployer.rollback("rb", {"release_id": first["release_id"]}, expect=409)
    await deployer.rollback("rb", {"release_id": "rel_0000000000000000000000"}, expect=404)


async def test_static_site_is_served_by_the_proxy_from_its_release(
        deployer: Deployer, daemon: GitDaemon, repos_root: Path) -> None:
    """runtime static: no process; the proxy serves the release (its dist/ after a build)."""
    repo = GitRepo.create(repos_root / "site", {"index.html": "<h1>root</h1>\n",
                                                "build.sh": "#!/bin/sh\nmkdir -p dist\n"
                                                            "echo '<h1>built</h1>' > dist/index.html\n"})
    dep = await deployer.deploy({"name": "site", "source": "remote", "runtime": "static",
                                 "remote": daemon.url("site")})
    await deployer.route("site.test", dep["service_id"])
    assert await deployer.via_proxy("site.test") == (200, "<h1>root</h1>\n")
    status = await deployer.service("site")
    assert (status["state"], status["runtime"], status["pid"]) == ("running", "static", None)
    await deployer.redeploy("site", {"build_cmd": "./build.sh"})
    assert await deployer.via_proxy("site.test") == (200, "<h1>built</h1>\n")
    await deployer.request("POST", "/v1/services/site/stop?wait=true", expect=200)
    assert (await deployer.via_proxy("site.test"))[0] == 502
    repo.commit({"index.html": "<h1>two</h1>\n"})
    again = await deployer.redeploy("site", {"build_cmd": None})
    assert again["status"] == "succeeded" and again["commit"] == repo.head()
    assert await deployer.via_proxy("site.test") == (200, "<h1>two</h1>\n")


async def test_deployment_log_tails_follows_and_filters(deployer: Deployer, daemon: GitDaemon,
                                                        repos_root: Path) -> None:
    """The deployment's own log: clone, build and start lines, by tail, stream, NDJSON and follow."""
    GitRepo.create(repos_root / "lg", py_files("v1"))
    dep = await deployer.deploy(remote_body("lg", daemon.url("lg"),
                                            build_cmd="for i in 1 2 3; do echo step $i; done"))
    text = await deployer.deploy_log("lg")
    assert " git fetched commit " + dep["commit"] in text
    assert "build step 1\n" in text and "build step 3\n" in text and "is live" in text
    build = await deployer.deploy_log("lg", "?stream=build&format=ndjson")
    lines = [json.loads(line) for line in build.splitlines()]
    assert [line["line"] for line in lines if line["line"].startswith("step")] == [
        "step 1", "step 2", "step 3"] and {line["stream"] for line in lines} == {"build"}
    assert len((await deployer.deploy_log("lg", "?tail=2")).splitlines()) == 2
    resp = await deployer.client.get("/v1/deployments/lg/logs?tail=0&follow=true&stream=build",
                                     headers=deployer.headers)
    assert resp.status == 200
    await deployer.put("lg", {"build_cmd": "echo followed-build-line"})
    line = await asyncio.wait_for(resp.content.readline(), 60)
    assert line.decode().endswith(" build followed-build-line\n")
    resp.close()
    await deployer.settled("lg")


async def test_delete_cancels_the_deploy_and_removes_everything(
        deployer: Deployer, daemon: GitDaemon, repos_root: Path) -> None:
    """DELETE during a deploy cancels it, stops the service and removes releases, env, routes and logs."""
    GitRepo.create(repos_root / "gone", py_files("v1"))
    dep = await deployer.deploy(remote_body("gone", daemon.url("gone"), env={"A": "1"}))
    await deployer.route("gone.test", dep["service_id"])
    events = deployer.client.app[BUS_KEY].subscribe()
    await deployer.put("gone", {"build_cmd": "sleep 60"})
    await deployer.request("DELETE", "/v1/deployments/gone", expect=204)
    assert wrappers_of(deployer.state_dir) == []
    assert not (deployer.state_dir / "apps" / "gone").exists()
    await deployer.request("GET", "/v1/deployments/gone", expect=404)
    await deployer.request("GET", "/v1/deployments/gone/logs", expect=404)
    routes = await deployer.request("GET", "/v1/proxy/routes", expect=200)
    assert routes["data"] == []
    types = [e.type for e in drain(events)]
    assert "deployment.deleted" in types and "deployment.failed" not in types
    again = await deployer.deploy(remote_body("gone", daemon.url("gone")))
    assert again["id"] != dep["id"]


GO_MAIN = """package main

import (
\t"fmt"
\t"net/http"
\t"os"
\t"runtime"
)

func main() {
\thttp.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
\t\tfmt.Fprintf(w, "go %s", runtime.Version())
\t})
\thttp.ListenAndServe("127.0.0.1:"+os.Getenv("PORT"), nil)
}
"""


async def test_go_app_builds_with_the_go_toolchain_and_runs(deployer: Deployer, daemon: GitDaemon,
                                                             repos_root: Path) -> None:
    """runtime go: go build in the release with the resolved toolchain, the binary runs on PORT."""
    GitRepo.create(repos_root / "goapp", {"main.go": GO_MAIN,
                                          "go.mod": "module example.com/app\n\ngo 1.19\n"})
    dep = await deployer.deploy({"name": "goapp", "source": "remote", "runtime": "go",
                                 "remote": daemon.url("goapp"), "build_cmd": "go build -o app .",
                                 "run_cmd": "exec ./app"})
    assert dep["toolchain"]["runtime"] == "go"
    assert await deployer.direct("goapp") == f"go go{dep['toolchain']['version']}".removesuffix(".0")


async def test_delete_while_a_new_release_waits_for_its_gate_leaves_nothing_running(
        deployer: Deployer, daemon: GitDaemon, repos_root: Path) -> None:
    """DELETE during the starting stage stops the candidate and the serving run."""
    GitRepo.create(repos_root / "gate", node_files("v1"))
    await deployer.deploy({"name": "gate", "source": "remote", "runtime": "nodejs",
                           "remote": daemon.url("gate"), "run_cmd": "exec node server.js"})
    await deployer.put("gate", {"run_cmd": "exec sleep 600"})

    async def gating() -> bool:
        dep = await deployer.get("gate")
        return dep["status"] == "starting" and len(wrappers_of(deployer.state_dir)) == 2

    await eventually(gating, timeout=60, message="the candidate to wait for its gate")
    await deployer.request("DELETE", "/v1/deployments/gate", expect=204)
    assert wrappers_of(deployer.state_dir) == []
