"""Runs of deployments from git: the queue seen through the API (supersede), and how runs an
agent left in flight are settled at the next start."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.keys import BUS_KEY, DB_KEY, REMOTE_DEPLOYMENTS_KEY
from tests.conftest import bearer, login
from tests.support.agent import eventually
from tests.support.git import GitDaemon, GitRepo
from tests.support.gitdeploy import Deployer


async def _runs(deployer: Deployer, deployment_id: str) -> list[tuple[str, str]]:
    rows = deployer.client.app[DB_KEY].query(
        "SELECT kind, status FROM deploy_runs WHERE deployment_id = ? ORDER BY created_at",
        (deployment_id,))
    return [(r["kind"], r["status"]) for r in rows]


async def test_a_newer_put_supersedes_a_queued_deploy(deployer: Deployer, daemon: GitDaemon,
                                                     repos_root: Path) -> None:
    """While a deploy builds, a queued one is replaced by a newer PUT and never runs."""
    repo = GitRepo.create(repos_root / "site", {"index.html": "one\n"})
    dep = await deployer.deploy({"name": "site", "source": "remote", "runtime": "static",
                                 "remote": daemon.url("site")})
    await deployer.put("site", {"build_cmd": "sleep 2"})

    async def building() -> bool:
        return (await deployer.get("site"))["status"] == "building"

    await eventually(building, timeout=30, message="the slow deploy to build")
    await deployer.put("site", {"build_cmd": None})
    sha = repo.commit({"index.html": "two\n"})
    newest = await deployer.put("site", {})
    assert newest["status"] == "queued"
    done = await deployer.settled("site", run_id=newest["status_detail"]["run_id"])
    assert done["status"] == "succeeded" and done["commit"] == sha
    assert [status for _, status in await _runs(deployer, dep["id"])] == [
        "succeeded", "succeeded", "superseded", "succeeded"]


async def test_runs_left_in_flight_are_settled_at_the_next_start(
        deployer: Deployer, daemon: GitDaemon, repos_root: Path) -> None:
    """At start: a run that had switched succeeded; one building or never run failed (interrupted)."""
    GitRepo.create(repos_root / "site", {"index.html": "one\n"})
    dep = await deployer.deploy({"name": "site", "source": "remote", "runtime": "static",
                                 "remote": daemon.url("site")})
    other = await deployer.deploy({"name": "other", "source": "remote", "runtime": "static",
                                   "remote": daemon.url("site")})
    db = deployer.client.app[DB_KEY]
    now = db.query_one("SELECT updated_at FROM deployments WHERE id = ?", (dep["id"],))[0]
    detail = {**dep["status_detail"], "run_id": "run_switched", "status": "starting",
              "failure": None, "created_at": now, "finished_at": None,
              "stages": [{"stage": "queued", "started_at": now, "finished_at": now},
                         {"stage": "starting", "started_at": now, "finished_at": None}]}
    building = {**detail, "run_id": "run_building", "status": "building",
                "release_id": "rel_0000000000000000000000",
                "stages": [{"stage": "building", "started_at": now, "finished_at": None}]}

    def write(tx) -> None:  # type: ignore[no-untyped-def]
        for run, deployment in ((detail, dep["id"]), (building, other["id"])):
            tx.execute("INSERT INTO deploy_runs VALUES (?, ?, 'deploy', ?, ?, ?, ?)",
                       (run["run_id"], deployment, run["status"], json.dumps(run), now + 1, now))
            tx.execute("UPDATE deployments SET status = ?, status_detail = ? WHERE id = ?",
                       (run["status"], json.dumps(run), deployment))
        tx.execute("INSERT INTO deployments (id, name, source, runtime, remote, branch, status,"
                   " created_at, updated_at) VALUES ('dep_orphan', 'orphan', 'remote', 'static',"
                   " 'git://x/y', 'main', 'queued', ?, ?)", (now, now))

    await db.write(write)
    events = deployer.client.app[BUS_KEY].subscribe()
    await deployer.client.app[REMOTE_DEPLOYMENTS_KEY].recover()
    switched, interrupted = await deployer.get("site"), await deployer.get("other")
    assert switched["status"] == "succeeded" and switched["release_id"] == dep["release_id"]
    failure = interrupted["status_detail"]["failure"]
    assert (interrupted["status"], failure["stage"], failure["code"]) == ("failed", "building",
                                                                          "interrupted")
    assert interrupted["status_detail"]["release_id"] is None
    assert (await deployer.get("orphan"))["status"] == "failed"
    seen = []
    while not events._queue.empty():
        event = events._queue.get_nowait()
        seen.append((event.type, event.data.get("run_id")))
    assert sorted(seen, key=str) == sorted([("deployment.succeeded", "run_switched"),
                                            ("deployment.failed", "run_building"),
                                            ("deployment.failed", None)], key=str)


async def test_only_the_last_releases_are_kept(make_client: Callable[..., Any], state_dir: Path,
                                               daemon: GitDaemon, repos_root: Path) -> None:
    """[deploy] keep_releases = 1: after four deploys the current and the previous release remain."""
    repo = GitRepo.create(repos_root / "site", {"index.html": "0\n"})
    client = await make_client(deploy={"allowed_schemes": ["git"], "keep_releases": 1})
    deployer = Deployer(client, bearer((await login(client))["access_token"]), state_dir)
    await deployer.deploy({"name": "site", "source": "remote", "runtime": "static",
                           "remote": daemon.url("site")})
    for n in range(1, 4):
        repo.commit({"index.html": f"{n}\n"})
        assert (await deployer.redeploy("site"))["status"] == "succeeded"
    releases = await deployer.releases("site")
    assert [(r["current"], r["previous"]) for r in releases] == [(True, False), (False, True)]
    on_disk = sorted(p.name for p in (state_dir / "apps" / "site" / "releases").iterdir())
    assert on_disk == sorted(r["id"] for r in releases)
