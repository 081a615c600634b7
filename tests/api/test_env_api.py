"""Env vars through the API: validation in the envelope, masking, applying, no leaks."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
import structlog

from tests.support.services import PYTHON, SERVER_APP, Harness


async def _web(svc: Harness) -> str:
    dep = await svc.deploy("web", f"exec {PYTHON} server.py", files={"server.py": SERVER_APP},
                           env={"GREETING": "hi from deploy"})
    return str(dep["service_id"])


def _get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
        return str(resp.read().decode())


@pytest.mark.parametrize(("body", "field", "issue"), [
    ({"key": "1ABC", "value": "x"}, "key", "Must match"),
    ({"key": "MY-VAR", "value": "x"}, "key", "Must match"),
    ({"key": "A" * 256, "value": "x"}, "key", "String should have at most 255 characters"),
    ({"key": "PORT", "value": "80"}, "key", "PORT is set by the agent"),
    ({"key": "NUL", "value": "a\u0000b"}, "value", "NUL"),
    ({"key": "BIG", "value": "x" * 32769}, "value", "At most 32768 bytes"),
    ({"key": "MULTI", "value": "é" * 16385}, "value", "At most 32768 bytes"),
    ({"key": "K", "value": 5}, "value", "Input should be a valid string"),
    ({"key": "K"}, "value", "Field required"),
    ({"key": "K", "value": "v", "extra": 1}, "extra", "Unknown field"),
])
async def test_bad_env_vars_are_refused_in_the_envelope(svc: Harness, body: dict[str, object],
                                                       field: str, issue: str) -> None:
    """Invalid names, reserved PORT, NUL, oversized values: 400 naming the field."""
    sid = await _web(svc)
    error = await svc.request("POST", f"/v1/services/{sid}/env", json=body, expect=400)
    assert error["error"]["code"] == "invalid_request"
    assert error["error"]["details"]["field"] == field
    assert issue in error["error"]["details"]["issue"]


async def test_deployment_env_is_validated_too(svc: Harness) -> None:
    """The same rules apply to a deployment's env."""
    for env, field in (({"PORT": "1"}, "env.PORT"), ({"bad-key": "1"}, "env"),
                       ({"OK": "a\u0000"}, "env.OK")):
        error = await svc.deploy("envcheck", "true", env=env, expect=400)
        assert error["error"]["details"]["field"] == field


async def test_secret_values_are_masked_in_listings(svc: Harness) -> None:
    """secret: true shows ******** in the listing and in the answer; others show the value."""
    sid = await _web(svc)
    created = await svc.request("POST", f"/v1/services/{sid}/env",
                                json={"key": "API_KEY", "value": "s3cr3t-value", "secret": True},
                                expect=201)
    assert created["value"] == "********" and created["created"] is True
    listing = await svc.request("GET", f"/v1/services/{sid}/env", expect=200)
    values = {v["key"]: (v["value"], v["secret"]) for v in listing["data"]}
    assert values == {"API_KEY": ("********", True), "GREETING": ("hi from deploy", False)}
    replaced = await svc.request("POST", f"/v1/services/{sid}/env",
                                 json={"key": "GREETING", "value": "hey"}, expect=200)
    assert replaced["created"] is False and replaced["restarted"] is False


async def test_changes_apply_at_next_start_or_now_with_restart(svc: Harness) -> None:
    """A set value reaches the app after a restart; ?restart=true restarts at once."""
    sid = await _web(svc)
    status = await svc.wait_state(sid, "running")
    assert await asyncio.to_thread(_get, status["listen_port"]) == "hi from deploy"
    await svc.request("POST", f"/v1/services/{sid}/env", json={"key": "GREETING", "value": "v2"})
    assert await asyncio.to_thread(_get, status["listen_port"]) == "hi from deploy"
    answer = await svc.request("POST", f"/v1/services/{sid}/env?restart=true",
                               json={"key": "GREETING", "value": "v3"}, expect=200)
    assert answer["restarted"] is True
    status = await svc.wait_state(sid, "running", where=lambda s: s["pid"] != status["pid"])
    assert await asyncio.to_thread(_get, status["listen_port"]) == "v3"
    await svc.request("DELETE", f"/v1/services/{sid}/env/GREETING?restart=true", expect=204)
    status = await svc.wait_state(sid, "running", where=lambda s: s["pid"] != status["pid"])
    assert await asyncio.to_thread(_get, status["listen_port"]) == "hello"
    missing = await svc.request("DELETE", f"/v1/services/{sid}/env/GREETING", expect=404)
    assert missing["error"]["code"] == "not_found"


async def test_env_values_never_reach_the_agents_log(svc: Harness) -> None:
    """Neither setting, listing, validation errors nor restarts log a value."""
    sid = await _web(svc)
    secret = "do-not-log-me-7f3a"
    with structlog.testing.capture_logs() as logs:
        await svc.request("POST", f"/v1/services/{sid}/env?restart=true",
                          json={"key": "TOKEN", "value": secret, "secret": True}, expect=201)
        await svc.request("POST", f"/v1/services/{sid}/env",
                          json={"key": "bad key", "value": secret}, expect=400)
        await svc.request("POST", f"/v1/services/{sid}/env",
                          json={"key": "X", "value": secret + "\u0000"}, expect=400)
        await svc.request("GET", f"/v1/services/{sid}/env", expect=200)
        await svc.wait_state(sid, "running")
    assert logs and secret not in repr(logs)


async def test_env_needs_developer_and_a_known_service(svc: Harness) -> None:
    """No token: 401; unknown service: 404."""
    resp = await svc.client.get("/v1/services/svc_x/env")
    assert resp.status == 401
    await svc.request("GET", "/v1/services/svc_missing/env", expect=404)
