"""DeployKit: the parts built from the agent's config, validating requests and deploying end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_config
from agent.deploy.kit import DeployKit
from agent.deploy.remote import GitCredentials
from agent.deploy.stages import Stage
from agent.errors import InvalidRequest, ServiceUnavailable
from agent.testing import FakeClock, FakeStarter
from tests.integration.deploy.test_toolchains import system_node_version
from tests.support.agent import free_port, make_config
from tests.support.git import GitDaemon, GitRepo


def test_deploy_section_from_toml_and_env(tmp_path: Path) -> None:
    """[deploy] keys come from TOML and DPLOYR_DEPLOY__* variables; bad values stop the start."""
    path = tmp_path / "agent.toml"
    path.write_text('[deploy]\nallowed_schemes = ["https", "git"]\nkeep_releases = 3\n')
    config = load_config(path, environ={"DPLOYR_DEPLOY__MAX_CONCURRENT_DEPLOYS": "4"})
    assert config.deploy.allowed_schemes == ("https", "git")
    assert (config.deploy.keep_releases, config.deploy.max_concurrent_deploys) == (3, 4)
    assert load_config(None, environ={}).deploy.allowed_schemes == ("https", "ssh")
    for bad in ('allowed_schemes = ["ext"]', "keep_releases = 0", 'npm_registry = "ftp://x"', "nope = 1"):
        path.write_text(f"[deploy]\n{bad}\n")
        with pytest.raises(Exception, match="deploy"):
            load_config(path, environ={})


async def test_validate_names_the_field(tmp_path: Path) -> None:
    """validate() answers 400s naming remote, branch, credentials, runtime or version."""
    config = make_config(tmp_path / "state", deploy={"npm_registry": f"http://127.0.0.1:{free_port()}"})
    kit = DeployKit.from_config(config, clock=FakeClock(), starter=FakeStarter())
    major = system_node_version().split(".")[0]
    ok = {"runtime": "nodejs", "version": major, "remote": "https://example.com/app.git", "branch": "main"}
    try:
        assert (await kit.validate(**ok)).url == "https://example.com/app.git"
        cases = [({"remote": "git://example.com/app"}, "remote"),
                 ({"remote": "--upload-pack=touch /tmp/x"}, "remote"),
                 ({"branch": "-x"}, "branch"),
                 ({"runtime": "cobol"}, "runtime"),
                 ({"version": "20.x"}, "version"),
                 ({"runtime": "python", "version": "2.1"}, "version")]
        for change, field in cases:
            with pytest.raises(InvalidRequest) as err:
                await kit.validate(**{**ok, **change})
            assert err.value.details["field"] == field, change
        with pytest.raises(InvalidRequest) as err:
            await kit.validate(**ok, credentials=GitCredentials(ssh_key="-----BEGIN PRIVATE KEY-----"))
        assert err.value.details["field"] == "credentials.ssh_key"
        with pytest.raises(ServiceUnavailable):  # not installed, and the registry is down
            await kit.validate(**{**ok, "version": "99"})
    finally:
        await kit.close()


async def test_deploys_through_the_queue(tmp_path: Path, daemon: GitDaemon, app_repo: GitRepo) -> None:
    """A kit from config deploys a git:// app: release under state/apps, log at log_path."""
    config = make_config(tmp_path / "state", deploy={"allowed_schemes": ["git"], "keep_releases": 2,
                                                     "provision_nodejs": False})
    starter = FakeStarter()
    kit = DeployKit.from_config(config, clock=FakeClock(), starter=starter)
    try:
        remote = await kit.validate(runtime="static", version="", remote=daemon.url("app"), branch="main")
        run = await kit.queue.submit(kit.spec(service="web", runtime="static", version="", remote=remote,
                                              branch="main", build_cmd="./build.sh", env={"A": "1"}))
        await kit.queue.wait(run)
    finally:
        await kit.close()
    assert run.status == Stage.SUCCEEDED, run.failure
    release = await kit.releases.get("web", run.release_id or "")
    assert release.path.is_relative_to(tmp_path / "state" / "apps" / "web" / "releases")
    log = kit.log_path("web").read_text()
    assert f" git fetched commit {run.commit}\n" in log and " deploy $ ./build.sh\n" in log
    assert kit.log_path("web") == tmp_path / "state" / "apps" / "web" / "logs" / "deploy.log"
    assert starter.requests[0].env == {"A": "1"}
