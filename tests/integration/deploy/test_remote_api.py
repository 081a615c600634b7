"""The API of deployments from git: validation before anything runs, roles, listing, PUT
semantics, credentials kept secret."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import structlog

from tests.conftest import bearer, login
from tests.support.git import GitDaemon, GitRepo, SmartHttpGit
from tests.support.gitdeploy import Deployer, py_files, remote_body


async def test_each_invalid_field_is_a_400_naming_it(deployer: Deployer, daemon: GitDaemon,
                                                     app_repo: GitRepo) -> None:
    """Runtime, version, remote, branch, port, run_cmd, env, project and credentials are checked first."""
    url = daemon.url("app")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"runtime": None}, "runtime"),
        ({"runtime": "cobol"}, "runtime"),
        ({"version": "20.x"}, "version"),
        ({"version": "2.1"}, "version"),
        ({"remote": None}, "remote"),
        ({"remote": "ftp://example.com/app.git"}, "remote"),
        ({"remote": "https://example.com"}, "remote"),
        ({"branch": "a..b"}, "branch"),
        ({"port": 70000}, "port"),
        ({"run_cmd": None}, "run_cmd"),
        ({"fixed_port": True}, "port"),
        ({"env": {"1BAD": "x"}}, "env"),
        ({"env": {"PORT": "1"}}, "env.PORT"),
        ({"project_id": "prj_nope"}, "project_id"),
        ({"credentials": {"ssh_key": "-----BEGIN OPENSSH PRIVATE KEY-----"}}, "credentials.ssh_key"),
        ({"path": "/srv"}, "path"),
        ({"health_check": {"type": "udp"}}, "health_check.type"),
    ]
    for change, field in cases:
        body = {k: v for k, v in {**remote_body("bad", url), **change}.items() if v is not None}
        error = await deployer.create(body, expect=400)
        assert error["error"]["code"] == "invalid_request", change
        assert error["error"]["details"]["field"] == field, (change, error)
    unavailable = await deployer.create(remote_body("bad", url, version="2.1"), expect=400)
    details = unavailable["error"]["details"]
    assert details["issue"].startswith("Unsupported runtime version") and details["available"]
    assert (await deployer.request("GET", "/v1/deployments"))["data"] == []
    await deployer.create({"name": "site", "source": "remote", "runtime": "static", "remote": url})
    taken = await deployer.create({"name": "site", "source": "remote", "runtime": "static",
                                   "remote": url}, expect=409)
    assert taken["error"]["details"]["field"] == "name"


async def test_injection_attempts_are_refused_and_run_nothing(deployer: Deployer, tmp_path: Path,
                                                             daemon: GitDaemon,
                                                             app_repo: GitRepo) -> None:
    """Option, transport-helper and ssh ProxyCommand injections in remote or branch: 400, no marker file."""
    marker = tmp_path / "pwned"
    remotes = [f"--upload-pack=touch {marker}", f"--upload-pack=touch%20{marker}",
               f"ext::sh -c touch% {marker}", f"ext::sh%20-c%20touch%20{marker}",
               f"ssh://-oProxyCommand=touch%20{marker}/x", f"-oProxyCommand=touch {marker}",
               f"ssh://git@-oProxyCommand=touch%20{marker}/x",
               f"-oProxyCommand=touch%20{marker}:repo", f"fd::17/{marker}",
               f"{daemon.url('app')} --upload-pack=touch {marker}",
               f"file://{marker}?x=1", "git://127.0.0.1:0/app%0a--upload-pack=x"]
    branches = [f"--upload-pack=touch {marker}", "-x", f"main;touch {marker}",
                f"$(touch {marker})", "main\nx", "-c core.sshCommand=x"]
    for remote in remotes:
        error = await deployer.create(remote_body("inj", remote), expect=400)
        assert error["error"]["details"]["field"] == "remote", remote
    for branch in branches:
        error = await deployer.create(remote_body("inj", daemon.url("app"), branch=branch),
                                      expect=400)
        assert error["error"]["details"]["field"] == "branch", branch
    dep = await deployer.create({"name": "ok", "source": "remote", "runtime": "static",
                                 "remote": daemon.url("app")})
    await deployer.settled("ok")
    for change in ({"branch": "-x"}, {"remote": f"ext::sh -c touch% {marker}"}):
        error = await deployer.put(dep["id"], change, expect=400)
        assert error["error"]["details"]["field"] == next(iter(change))
    assert not marker.exists()
    assert [d["name"] for d in (await deployer.request("GET", "/v1/deployments"))["data"]] == ["ok"]


async def test_put_with_an_unavailable_version_changes_nothing(
        deployer: Deployer, daemon: GitDaemon, repos_root: Path) -> None:
    """PUT with a version that is not available is a 400 naming version; fields, env and the run stay."""
    GitRepo.create(repos_root / "py", py_files("v1"))
    dep = await deployer.deploy(remote_body("py", daemon.url("py"), env={"A": "1"}))
    pid = (await deployer.service("py"))["pid"]
    error = await deployer.put("py", {"version": "2.7", "env": {"A": "2"}, "run_cmd": "x"},
                               expect=400)
    assert error["error"]["details"]["field"] == "version"
    assert "available" in error["error"]["details"]["issue"]
    after = await deployer.get("py")
    for key in ("version", "run_cmd", "status", "status_detail", "release_id", "updated_at"):
        assert after[key] == dep[key], key
    env = await deployer.request("GET", "/v1/services/py/env", expect=200)
    assert [(e["key"], e["value"]) for e in env["data"]] == [("A", "1")]
    assert (await deployer.service("py"))["pid"] == pid
    for body, field in (({"runtime": None}, "runtime"), ({"name": "x"}, "name"),
                        ({"runtime": "static"}, "runtime"), ({"port": 0}, "port")):
        error = await deployer.put("py", body, expect=400)
        assert error["error"]["details"]["field"] == field, body
    again = await deployer.redeploy("py", {"env": {"A": "2", "B": "3"}})
    assert again["status"] == "succeeded" and again["release_id"] != dep["release_id"]
    env = await deployer.request("GET", "/v1/services/py/env", expect=200)
    assert [(e["key"], e["value"]) for e in env["data"]] == [("A", "2"), ("B", "3")]
    await deployer.redeploy("py", {"env": {"B": None}})
    env = await deployer.request("GET", "/v1/services/py/env", expect=200)
    assert [e["key"] for e in env["data"]] == ["A"]


async def test_roles_listing_filters_and_pages(deployer: Deployer, daemon: GitDaemon,
                                              app_repo: GitRepo) -> None:
    """Developers deploy from git, viewers cannot; the list filters by project and status and pages."""
    client = deployer.client
    for role in ("developer", "viewer"):
        resp = await client.post("/v1/users", headers=deployer.headers, json={
            "email": f"{role}@example.com", "password": f"{role}-password", "role": role})
        assert resp.status == 201
    dev = bearer((await login(client, "developer@example.com", "developer-password"))["access_token"])
    viewer = bearer((await login(client, "viewer@example.com", "viewer-password"))["access_token"])
    body = {"name": "s1", "source": "remote", "runtime": "static", "remote": daemon.url("app")}
    assert (await client.post("/v1/deployments", json=body, headers=viewer)).status == 403
    resp = await client.post("/v1/deployments", json=body, headers=dev)
    assert resp.status == 202 and resp.headers["Location"].startswith("/v1/deployments/dep_")
    project = await deployer.request("POST", "/v1/projects", json={"name": "p"}, expect=201)
    await deployer.create({**body, "name": "s2", "project_id": project["id"]})
    await deployer.create({**body, "name": "s3", "branch": "missing"})
    for name in ("s1", "s2", "s3"):
        await deployer.settled(name)

    async def names(query: str) -> list[str]:
        page = await deployer.request("GET", f"/v1/deployments{query}", expect=200)
        return [d["name"] for d in page["data"]]

    assert await names(f"?project_id={project['id']}") == ["s2"]
    assert await names("?status=failed") == ["s3"]
    assert await names("?status=succeeded") == ["s1", "s2"]
    first = await deployer.request("GET", "/v1/deployments?limit=2", expect=200)
    assert [d["name"] for d in first["data"]] == ["s1", "s2"] and first["next_cursor"]
    assert await names(f"?limit=2&cursor={first['next_cursor']}") == ["s3"]
    await deployer.request("GET", "/v1/deployments?status=nope", expect=400)


async def test_private_repository_credentials_are_never_shown_or_logged(
        deployer: Deployer, http_git: SmartHttpGit, daemon: GitDaemon, app_repo: GitRepo) -> None:
    """A token (given apart or in the URL) deploys a private repo and appears in no answer, log or file."""
    token = http_git.password
    with structlog.testing.capture_logs() as agent_log:
        dep = await deployer.deploy({"name": "priv", "source": "remote", "runtime": "static",
                                     "remote": http_git.url("app"),
                                     "credentials": {"username": "deploy", "password": token}})
        url_token = http_git.url("app").replace("http://", f"http://deploy:{token}@")
        other = await deployer.deploy({"name": "priv2", "source": "remote",
                                       "runtime": "static", "remote": url_token})
        bad = await deployer.create({"name": "priv3", "source": "remote", "runtime": "static",
                                     "remote": http_git.url("app"),
                                     "credentials": {"username": "deploy", "password": "nope-123"}})
        failed = await deployer.settled(bad["id"])
    assert dep["has_credentials"] and other["has_credentials"]
    assert other["remote"] == http_git.url("app")
    assert failed["status_detail"]["failure"]["code"] == "authentication_failed"
    answers = [await deployer.request("GET", "/v1/deployments"),
               await deployer.releases("priv"), await deployer.deploy_log("priv"),
               await deployer.deploy_log("priv2"), await deployer.deploy_log("priv3")]
    text = json.dumps(answers) + json.dumps(agent_log, default=str)
    assert token not in text and "nope-123" not in text
    for path in (deployer.state_dir / "apps").rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
    # Credentials belong to their origin: moving the remote elsewhere forgets them.
    moved = await deployer.redeploy("priv", {"remote": daemon.url("app")})
    assert moved["status"] == "succeeded" and not moved["has_credentials"]
    back = await deployer.redeploy("priv", {"remote": http_git.url("app")})
    assert back["status_detail"]["failure"]["code"] == "authentication_failed"
