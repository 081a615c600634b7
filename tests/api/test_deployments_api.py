"""Local deployments through the API: who may create them, where from, and what delete does."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.conftest import Client, bearer, login
from tests.support.services import PYTHON, TICKER_APP, Harness, alive, wrappers_of


def _body(path: Path | str, name: str = "app", **extra: Any) -> dict[str, Any]:
    return {"name": name, "source": "local", "path": str(path), "run_cmd": "sleep 1000", **extra}


async def test_paths_outside_the_allowed_roots_are_refused(svc: Harness, tmp_path: Path) -> None:
    """Outside, `..` tricks, symlinks out, relative, missing and non-directories: 400."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (svc.apps_root / "escape").symlink_to(outside)
    (svc.apps_root / "file.txt").write_text("x")
    inside = svc.apps_root / "ok"
    inside.mkdir()
    cases = {
        str(outside): "Outside",
        f"{svc.apps_root}/../elsewhere": "Outside",
        f"{inside}/../../elsewhere": "Outside",
        str(svc.apps_root / "escape"): "Outside",
        "srv/ok": "absolute",
        str(svc.apps_root / "missing"): "No such directory",
        str(svc.apps_root / "file.txt"): "Not a directory",
        "/": "Outside",
    }
    for path, issue in cases.items():
        error = await svc.request("POST", "/v1/deployments", json=_body(path), expect=400)
        assert error["error"]["details"]["field"] == "path", path
        assert issue in error["error"]["details"]["issue"], (path, error)
    assert (await svc.request("GET", "/v1/deployments"))["data"] == []
    link_in = svc.apps_root / "link-in"
    link_in.symlink_to(inside)
    created = await svc.request("POST", "/v1/deployments", json=_body(link_in), expect=201)
    assert created["path"] == str(inside.resolve())


async def test_local_deployments_are_for_admins_only(client: Client,
                                                    role_headers: dict[str, dict[str, str]],
                                                    tmp_path: Path) -> None:
    """A developer may call the endpoint but gets 403 for a local source; a viewer 403 too."""
    for role in ("developer", "viewer"):
        resp = await client.post("/v1/deployments", json=_body(tmp_path), headers=role_headers[role])
        assert resp.status == 403, role
        assert (await resp.json())["error"]["details"]["required_role"] == (
            "admin" if role == "developer" else "developer")


async def test_without_allowed_roots_local_deployments_are_disabled(client: Client,
                                                                    tmp_path: Path) -> None:
    """The default config allows no local path at all."""
    headers = bearer((await login(client))["access_token"])
    resp = await client.post("/v1/deployments", json=_body(tmp_path), headers=headers)
    body = await resp.json()
    assert resp.status == 400 and "allowed_local_roots" in body["error"]["details"]["issue"]


async def test_create_validation_names_the_field(svc: Harness) -> None:
    """Missing or misplaced fields, bad names or references: 400 naming the field; a taken name 409."""
    path = svc.apps_root / "v"
    path.mkdir()
    checks: list[tuple[dict[str, Any], str]] = [
        ({"name": "Bad_Name", "source": "local", "path": str(path), "run_cmd": "x"}, "name"),
        ({"name": "a", "source": "local", "run_cmd": "x"}, "path"),
        ({"name": "a", "source": "local", "path": str(path)}, "run_cmd"),
        ({**_body(path), "fixed_port": True}, "port"),
        ({**_body(path), "port": 70000}, "port"),
        ({**_body(path), "stop_signal": "SIGKILL"}, "stop_signal"),
        ({**_body(path), "restart": {"mode": "sometimes"}}, "restart.mode"),
        ({**_body(path), "restart": {"initial_delay": 5, "max_delay": 1}}, "restart"),
        ({**_body(path), "health_check": {"type": "http", "path": "no-slash"}}, "health_check.path"),
        ({"name": "r", "source": "image", "image": "nginx:1", "path": str(path)}, "path"),
        ({"name": "r", "source": "image", "image": "Not A Reference"}, "image"),
        ({"name": "r", "source": "image"}, "image"),
        ({**_body(path), "memory": "256m"}, "memory"),
        ({**_body(path), "image": "nginx:1"}, "image"),
        ({"name": "r", "source": "remote", "remote": "https://example.com/x.git",
          "runtime": "nodejs", "cpus": 1}, "cpus"),
        ({"name": "r", "source": "remote", "remote": "https://example.com/x.git"}, "runtime"),
        ({**_body(path), "remote": "https://example.com/x.git"}, "remote"),
        ({**_body(path), "project_id": "prj_nope"}, "project_id"),
        ({**_body(path), "run_cmd": "echo a\u0000b"}, "run_cmd"),
        ({**_body(path), "path": "/srv/\u0000x"}, "path"),
        ({**_body(path), "build_cmd": "echo \ud800"}, "body"),  # not UTF-8: not valid JSON
        ({**_body(path), "env": {"A": "\ud800"}}, "body"),
    ]
    for body, field in checks:
        error = await svc.request("POST", "/v1/deployments", json=body, expect=400)
        assert error["error"]["details"]["field"] == field, (body, error)
    await svc.request("POST", "/v1/deployments", json=_body(path, "taken"), expect=201)
    conflict = await svc.request("POST", "/v1/deployments", json=_body(path, "taken"), expect=409)
    assert conflict["error"]["code"] == "conflict"


async def test_list_get_and_delete_remove_everything(svc: Harness) -> None:
    """Delete stops the service and removes its env, logs, files and rows."""
    dep = await svc.deploy("gone", f"exec {PYTHON} app.py", files={"app.py": TICKER_APP},
                           env={"A": "1"}, port=3000)
    sid = dep["service_id"]
    assert dep["status"] == "succeeded" and dep["port"] == 3000 and dep["source"] == "local"
    pid = (await svc.wait_state(sid, "running"))["pid"]
    listing = await svc.request("GET", "/v1/deployments?limit=10", expect=200)
    assert [d["id"] for d in listing["data"]] == [dep["id"]]
    assert (await svc.request("GET", f"/v1/deployments/{dep['id']}"))["service_id"] == sid
    assert (await svc.request("GET", "/v1/deployments/gone"))["id"] == dep["id"]
    await svc.request("DELETE", f"/v1/deployments/{dep['id']}", expect=204)
    assert not alive(pid) and wrappers_of(svc.state_dir) == []
    assert not (svc.state_dir / "apps" / "gone").exists()
    await svc.request("GET", f"/v1/deployments/{dep['id']}", expect=404)
    await svc.request("GET", f"/v1/services/{sid}", expect=404)
    await svc.request("GET", f"/v1/services/{sid}/logs", expect=404)
    assert (await svc.request("GET", "/v1/services"))["data"] == []
    await svc.request("DELETE", f"/v1/deployments/{dep['id']}", expect=404)
    # The name is free again.
    again = await svc.deploy("gone", "exec sleep 1000")
    assert again["id"] != dep["id"]
    assert os.path.isdir(svc.state_dir / "apps" / "gone")


async def test_a_project_with_deployments_cannot_be_deleted(svc: Harness) -> None:
    """deployments.project_id restricts project deletion: 409 until the deployment is gone."""
    project = await svc.request("POST", "/v1/projects", json={"name": "p1"}, expect=201)
    dep = await svc.deploy("inproject", "exec sleep 1000", project_id=project["id"])
    assert dep["project_id"] == project["id"]
    await svc.request("DELETE", f"/v1/projects/{project['id']}", expect=409)
    await svc.request("DELETE", f"/v1/deployments/{dep['id']}", expect=204)
    await svc.request("DELETE", f"/v1/projects/{project['id']}", expect=204)
