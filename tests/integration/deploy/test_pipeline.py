"""The pipeline with real git, real toolchains, real builds and real releases; a fake starter."""

from __future__ import annotations

from pathlib import Path

from agent.deploy.errors import StartFailed
from agent.deploy.remote import GitCredentials
from agent.deploy.stages import Stage
from tests.integration.deploy.test_toolchains import system_node_version
from tests.support.deploy import Rig
from tests.support.git import GitDaemon, GitRepo, SmartHttpGit


async def test_successful_deploy_walks_every_stage(rig: Rig, daemon: GitDaemon, app_repo: GitRepo) -> None:
    """queued -> cloning -> building -> starting -> succeeded, stamped; the release is built and current."""
    run = await rig.deploy(rig.spec(daemon.url("app"), build_cmd="./build.sh", run_cmd="./serve",
                                    port=8080, env={"GREETING": "hi"}))
    assert run.status == Stage.SUCCEEDED and run.failure is None
    assert rig.statuses(run) == ["queued", "cloning", "building", "starting", "succeeded"]
    assert [str(r.stage) for r in run.stages] == rig.statuses(run)
    times = [t for r in run.stages for t in (r.started_at, r.finished_at)]
    assert None not in times and times == sorted(times)  # type: ignore[type-var]
    assert run.commit == app_repo.head()
    release = await rig.releases.get("web", run.release_id or "")
    assert (release.app_dir / "built.txt").read_text() == "built\n"
    assert release.commit == run.commit and release.env == {"GREETING": "hi"}
    assert rig.releases.pointers("web") == (release.id, None)
    [request] = rig.starter.requests
    assert (request.release.id, request.run_cmd, request.port) == (release.id, "./serve", 8080)
    log = rig.log()
    assert f" git fetched commit {run.commit}\n" in log and " deploy $ ./build.sh\n" in log
    assert "is live" in log


async def test_redeploy_records_new_sha(rig: Rig, daemon: GitDaemon, app_repo: GitRepo) -> None:
    """A new commit deploys as a new release with the new SHA; the old one becomes previous."""
    first = await rig.deploy(rig.spec(daemon.url("app")))
    new_sha = app_repo.commit({"README.md": "second\n"})
    second = await rig.deploy(rig.spec(daemon.url("app")))
    assert second.status == Stage.SUCCEEDED and second.commit == new_sha != first.commit
    assert rig.releases.pointers("web") == (second.release_id, first.release_id)


async def test_unknown_branch_fails_at_cloning(rig: Rig, daemon: GitDaemon, app_repo: GitRepo) -> None:
    """An unknown branch ends failed at cloning with a reason; nothing is started or left behind."""
    good = await rig.deploy(rig.spec(daemon.url("app")))
    run = await rig.deploy(rig.spec(daemon.url("app"), branch="does-not-exist"))
    assert run.status == Stage.FAILED and run.failure is not None
    assert (run.failure.stage, run.failure.code) == (Stage.CLONING, "unknown_branch")
    assert "does-not-exist" in run.failure.reason and run.release_id is None
    assert rig.statuses(run) == ["queued", "cloning", "failed"]
    assert [r.id for r in await rig.releases.list("web")] == [good.release_id]
    assert len(list((rig.root / "apps" / "web" / "releases").iterdir())) == 1
    assert rig.releases.pointers("web")[0] == good.release_id and len(rig.starter.requests) == 1


async def test_build_failure_keeps_running_release(rig: Rig, daemon: GitDaemon, app_repo: GitRepo) -> None:
    """A failing build ends failed at building with its exit code; the current release is untouched."""
    good = await rig.deploy(rig.spec(daemon.url("app")))
    run = await rig.deploy(rig.spec(daemon.url("app"), build_cmd="echo 'error: broken'; exit 7"))
    assert run.failure is not None
    assert (run.failure.stage, run.failure.exit_code) == (Stage.BUILDING, 7)
    assert "exited with code 7" in run.failure.reason
    assert rig.releases.pointers("web") == (good.release_id, None)
    assert [r.id for r in await rig.releases.list("web")] == [good.release_id]
    assert " build error: broken\n" in rig.log() and len(rig.starter.requests) == 1


async def test_build_timeout_fails_at_building(rig: Rig, daemon: GitDaemon, app_repo: GitRepo) -> None:
    """A build over its time limit ends failed at building, saying it timed out."""
    run = await rig.deploy(rig.spec(daemon.url("app"), build_cmd="sleep 60", build_timeout=1.0))
    assert run.failure is not None and run.failure.stage == Stage.BUILDING
    assert "timed out" in run.failure.reason and run.failure.exit_code is None


async def test_start_failure_fails_at_starting(rig: Rig, daemon: GitDaemon, app_repo: GitRepo) -> None:
    """A release failing its health gate ends failed at starting; current stays the old release."""
    good = await rig.deploy(rig.spec(daemon.url("app")))
    rig.starter.fail_with = StartFailed("health check on / got 500 for 30s", exit_code=1)
    run = await rig.deploy(rig.spec(daemon.url("app")))
    assert run.failure is not None
    assert (run.failure.stage, run.failure.exit_code, run.failure.code) == (Stage.STARTING, 1, "start_failed")
    assert "health check" in run.failure.reason
    assert rig.releases.pointers("web") == (good.release_id, None)


async def test_unavailable_version_fails_at_building(rig: Rig, daemon: GitDaemon, app_repo: GitRepo) -> None:
    """A runtime version that went away since validation fails the build stage with the versions available."""
    run = await rig.deploy(rig.spec(daemon.url("app"), runtime="python", version="3.99"))
    assert run.failure is not None and run.failure.stage == Stage.BUILDING
    assert run.failure.reason.startswith("Unsupported runtime version") and "available" in run.failure.reason


async def test_node_app_builds_on_system_node(rig: Rig, repos_root: Path, daemon: GitDaemon) -> None:
    """A Node.js app (package.json) builds with `npm install` on the system node of the requested major."""
    exact = system_node_version()
    GitRepo.create(repos_root / "node-app", {
        "package.json": '{"name": "node-app", "version": "1.0.0", "scripts": {"start": "node server.js",'
                        ' "build": "node -e \\"require(\'fs\').writeFileSync(\'v.txt\','
                        ' process.version)\\""}}\n',
        "server.js": "console.log('hi')\n",
    })
    run = await rig.deploy(rig.spec(daemon.url("node-app"), runtime="nodejs", version=exact.split(".")[0],
                                    build_cmd="npm install && npm run build", run_cmd="npm start"))
    assert run.status == Stage.SUCCEEDED, run.failure
    assert run.toolchain is not None and run.toolchain.version == exact
    release = await rig.releases.get("web", run.release_id or "")
    assert (release.app_dir / "v.txt").read_text() == f"v{exact}"
    assert release.toolchain["version"] == exact


async def test_node_22_is_provisioned_for_the_build(rig: Rig, repos_root: Path, daemon: GitDaemon) -> None:
    """Version "22" (not installed) is provisioned from the npm registry and npm runs on it."""
    GitRepo.create(repos_root / "node22", {
        "package.json": '{"name": "node22", "version": "1.0.0", "scripts": {"build": '
                        '"node -e \\"require(\'fs\').writeFileSync(\'v.txt\', process.version)\\""}}\n',
    })
    run = await rig.deploy(rig.spec(daemon.url("node22"), runtime="nodejs", version="22",
                                    build_cmd="npm install && npm run build"))
    assert run.status == Stage.SUCCEEDED, run.failure
    assert run.toolchain is not None and run.toolchain.version.startswith("22.")
    release = await rig.releases.get("web", run.release_id or "")
    assert (release.app_dir / "v.txt").read_text() == f"v{run.toolchain.version}"
    assert release.runtime_env.path_dirs[0] == str(run.toolchain.bin_dir)


async def test_python_app_gets_venv_and_default_build(rig: Rig, repos_root: Path, daemon: GitDaemon) -> None:
    """A Python app gets a venv in its release and, with no build_cmd, pip install -r requirements.txt."""
    GitRepo.create(repos_root / "py-app", {
        "requirements.txt": "# no dependencies\n",
        "app.py": "print('hi')\n",
    })
    run = await rig.deploy(rig.spec(daemon.url("py-app"), runtime="python", version="3.11",
                                    run_cmd="python app.py"))
    assert run.status == Stage.SUCCEEDED, run.failure
    release = await rig.releases.get("web", run.release_id or "")
    assert (release.path / "venv" / "bin" / "python").exists()
    assert release.build["command"] == "pip install -r requirements.txt"
    assert rig.starter.requests[0].runtime_env.path_dirs[0] == str(release.path / "venv" / "bin")


async def test_credentials_are_never_stored(rig: Rig, http_git: SmartHttpGit, app_repo: GitRepo) -> None:
    """A private repo deploys with a token that appears in no file, log, run record or release."""
    token = http_git.password
    run = await rig.deploy(rig.spec(http_git.url("app"),
                                    credentials=GitCredentials(username="deploy", password=token)))
    assert run.status == Stage.SUCCEEDED, run.failure
    assert token not in repr(run.to_dict()) and token not in repr(run)
    for path in rig.root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert token.encode() not in path.read_bytes(), path
    bad = await rig.deploy(rig.spec(http_git.url("app"),
                                    credentials=GitCredentials(username="deploy", password="bad-tok-42")))
    assert bad.failure is not None and bad.failure.code == "authentication_failed"
    assert "bad-tok-42" not in bad.failure.reason and "bad-tok-42" not in rig.log()
