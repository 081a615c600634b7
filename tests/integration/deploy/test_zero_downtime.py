"""The switch under traffic: redeploys of an app that reads PORT lose no request."""

from __future__ import annotations

from pathlib import Path

from tests.support.git import GitDaemon, GitRepo
from tests.support.gitdeploy import Deployer, node_files, traffic
from tests.support.services import wrappers_of


async def test_five_redeploys_under_a_request_loop_lose_no_request(
        deployer: Deployer, daemon: GitDaemon, repos_root: Path) -> None:
    """A request loop through the built-in proxy's route sees 0 failed requests during 5 redeploys."""
    await _redeploys_under_load(deployer, daemon, repos_root, 5)


async def test_redeploys_behind_caddy_lose_no_request(caddy_deployer: Deployer, daemon: GitDaemon,
                                                      repos_root: Path) -> None:
    """The same through a real Caddy: refreshed before the old release stops, 0 failed requests."""
    await _redeploys_under_load(caddy_deployer, daemon, repos_root, 3)


async def _redeploys_under_load(deployer: Deployer, daemon: GitDaemon, repos_root: Path,
                                count: int) -> None:
    repo = GitRepo.create(repos_root / "live", node_files("v0"))
    dep = await deployer.deploy({"name": "live", "source": "remote", "runtime": "nodejs",
                                 "remote": daemon.url("live"), "branch": "main",
                                 "run_cmd": "exec node server.js", "port": 3000})
    await deployer.route("live.test", dep["service_id"])
    async with traffic(deployer.proxy_url + "/", "live.test") as load:
        for n in range(1, count + 1):
            sha = repo.commit({"VERSION": f"v{n}\n"})
            done = await deployer.redeploy("live")
            assert done["status"] == "succeeded" and done["commit"] == sha, done["status_detail"]
            assert (await deployer.via_proxy("live.test"))[1].startswith(f"v{n} ")
    seen, failures = load.seen, load.failures
    assert failures == []
    assert {f"v{n}" for n in range(1, count + 1)} <= set(seen) <= {f"v{n}" for n in range(count + 1)}
    assert sum(seen.values()) > 50, seen
    assert len(wrappers_of(deployer.state_dir)) == 1  # every replaced run was stopped
