"""Deployments from git end to end: real repositories on 127.0.0.1, real builds, real apps,
traffic through the agent's own proxy."""

from __future__ import annotations

from pathlib import Path

from agent.events import Event, Subscription
from agent.keys import BUS_KEY
from tests.support.git import GitDaemon, GitRepo
from tests.support.gitdeploy import Deployer, py_files, remote_body


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
    """Unknown branch fails at cloning, a failed build at building, a crash or a failed health gate at starting."""
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
    env = await deployer.request("GET", f"/v1/services/rb/env", expect=200)
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
