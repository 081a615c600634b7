"""The switch under traffic: redeploys of an app that reads PORT lose no request."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiohttp

from tests.support.git import GitDaemon, GitRepo
from tests.support.gitdeploy import Deployer, node_files
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
    seen: dict[str, int] = {}
    failures: list[str] = []
    stop = asyncio.Event()

    async def loop() -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                try:
                    async with session.get(deployer.proxy_url + "/",
                                           headers={"Host": "live.test"}) as resp:
                        body = await resp.text()
                        if resp.status != 200:
                            failures.append(f"{resp.status} {body[:200]}")
                        else:
                            version = body.split()[0]
                            seen[version] = seen.get(version, 0) + 1
                except aiohttp.ClientError as exc:
                    failures.append(repr(exc))

    tasks = [asyncio.create_task(loop()) for _ in range(2)]
    try:
        for n in range(1, count + 1):
            sha = repo.commit({"VERSION": f"v{n}\n"})
            done = await deployer.redeploy("live")
            assert done["status"] == "succeeded" and done["commit"] == sha, done["status_detail"]
            assert (await deployer.via_proxy("live.test"))[1].startswith(f"v{n} ")
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks)
    assert failures == []
    assert {f"v{n}" for n in range(1, count + 1)} <= set(seen) <= {f"v{n}" for n in range(count + 1)}
    assert sum(seen.values()) > 50, seen
    assert len(wrappers_of(deployer.state_dir)) == 1  # every replaced run was stopped
