"""The seed's own example, end to end against a local remote: a Node.js 20 app built with
`npm install` and run with `npm start` on port 3000, then PUT to version 22 (provisioned)."""

from __future__ import annotations

from pathlib import Path

from tests.support.git import GitDaemon, GitRepo
from tests.support.gitdeploy import Deployer, node_files


async def test_seed_example_deploys_on_node_20_then_put_moves_it_to_node_22(
        deployer: Deployer, daemon: GitDaemon, repos_root: Path) -> None:
    """The seed's body deploys on Node 20 and answers; PUT {"version": "22", "env": ...} moves it to 22."""
    repo = GitRepo.create(repos_root / "repo", node_files("v1"))
    body = {"name": "my-app", "source": "remote", "runtime": "nodejs", "version": "20",
            "remote": daemon.url("repo"), "branch": "main",
            "build_cmd": "npm install", "run_cmd": "npm start", "port": 3000}
    dep = await deployer.deploy(body, timeout=300)
    assert dep["commit"] == repo.head() and dep["port"] == 3000
    assert dep["toolchain"]["version"].startswith("20.")
    await deployer.route("my-app.test", dep["service_id"])
    assert await deployer.via_proxy("my-app.test") == (200, "v1 hello -")
    assert (await deployer.via_proxy("my-app.test", "/node"))[1] == "v" + dep["toolchain"]["version"]
    moved = await deployer.redeploy("my-app", {"version": "22", "env": {"NODE_ENV": "production"}},
                                    timeout=600)
    assert moved["status"] == "succeeded", moved["status_detail"]
    assert moved["version"] == "22" and moved["toolchain"]["version"].startswith("22.")
    assert await deployer.via_proxy("my-app.test") == (200, "v1 hello production")
    assert (await deployer.via_proxy("my-app.test", "/node"))[1] == "v" + moved["toolchain"]["version"]
    log = await deployer.deploy_log("my-app")
    assert " deploy $ npm install\n" in log and f"toolchain nodejs {moved['toolchain']['version']}" in log
