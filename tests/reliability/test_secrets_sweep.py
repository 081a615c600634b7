"""Secrets sweep: canary values planted as passwords, tokens, env vars (secret and not),
webhook secrets, git credentials, the upstream and metrics tokens; then every endpoint and
failure path is exercised. No canary may appear in the agent's log (at debug level), in a
file it wrote, in a webhook delivery or its log, or in an API response other than the one
where the user asked for it (a token at creation, a non-secret env var's value, a webhook
secret in the response that created it)."""

from __future__ import annotations

import json
import re
import sys
import urllib.parse
from pathlib import Path

from tests.reliability.sweep import Canaries, Recorder
from tests.support.agent import LiveAgent, free_port, wait_until
from tests.support.cli import run_cli
from tests.support.services import SERVER_APP, kill_apps, write_app
from tests.support.webhooks import Receiver, ThreadedServer

ADMIN = "admin@example.com"
DEV = "dev@example.com"
# Files in the state dir that hold secrets on purpose (the store, the signing key).
SECRET_HOLDERS = re.compile(r"(^|/)(agent\.db(-wal|-shm)?|jwt-secret)$")


def _walk_every_operation(rec: Recorder, token: str, fuzz: str) -> int:
    """Call every operation of the OpenAPI document with made-up ids and a body and a query
    whose every field is ``fuzz``; return how many operations were called. (Ids in paths are
    not secrets: a 404 may name the id it did not find, so they are not canaries.)"""
    status, spec = rec.call("GET", "/v1/openapi.json")
    assert status == 200
    schemas = spec["components"]["schemas"] if "components" in spec else {}
    called = 0
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            if path == "/v1/auth/logout":
                continue  # would end the sweep's session; done at the end
            concrete = re.sub(r"\{[^}]+\}", "doesnotexist", path)
            body = None
            content = op.get("requestBody", {}).get("content", {}).get("application/json")
            if content is not None:
                schema = content["schema"]
                if "$ref" in schema:
                    schema = schemas[schema["$ref"].rsplit("/", 1)[1]]
                body = dict.fromkeys(schema.get("properties", {}), fuzz)
            query = "?" + urllib.parse.urlencode({p["name"]: fuzz for p in op.get("parameters", [])
                                                  if p.get("in") == "query"})
            rec.call(method.upper(), concrete + query.rstrip("?"), body, token=token)
            called += 1
    return called


def test_canaries_appear_nowhere_they_should_not(tmp_path: Path) -> None:
    """Every secret stays out of logs, files, deliveries and responses that did not ask."""
    c = Canaries()
    admin_pw = c.make("admin_password")
    metrics_token = c.make("metrics_token")
    upstream_token = c.make("upstream_token")
    apps = write_app(tmp_path / "srv", "web", {"server.py": SERVER_APP})
    receiver = Receiver()
    server = ThreadedServer(receiver.app(), receiver.port).start()
    agent = LiveAgent(state_dir=tmp_path / "state", extra_env={
        "DPLOYR_ADMIN_PASSWORD": admin_pw,
        "DPLOYR_LOGGING__LEVEL": "debug",
        "DPLOYR_SERVICES__ALLOWED_LOCAL_ROOTS": json.dumps([str(apps.parent)]),
        "DPLOYR_SERVICES__STARTUP_SECONDS": "0.2",
        "DPLOYR_WEBHOOKS__ALLOW_PRIVATE_TARGETS": "true",
        "DPLOYR_METRICS__TOKEN": metrics_token,
        "DPLOYR_METRICS__ALLOW": "",
        "DPLOYR_METRICS__INTERVAL": "1",
        # A control plane that is not there: the link retries, and logs, with the token set.
        "DPLOYR_UPSTREAM__URL": f"ws://127.0.0.1:{free_port()}/agent",
        "DPLOYR_UPSTREAM__TOKEN": upstream_token,
        "DPLOYR_UPSTREAM__RECONNECT_MIN_DELAY": "0.2",
        "DPLOYR_UPSTREAM__RECONNECT_MAX_DELAY": "0.5",
    })
    rec = Recorder(agent.url)
    cli_outputs: list[tuple[str, str, frozenset[str]]] = []
    try:
        agent.start()
        # -- auth: failed logins, logins, refresh, bogus tokens --------------------------------
        wrong = c.make("wrong_password")
        assert rec.call("POST", "/v1/auth/login", {"email": ADMIN, "password": wrong})[0] == 401
        assert rec.call("POST", "/v1/auth/login",
                        {"email": "nobody@example.com", "password": wrong})[0] == 401
        status, tokens = rec.call("POST", "/v1/auth/login", {"email": ADMIN, "password": admin_pw},
                                  allow=("access_1", "refresh_1"))
        assert status == 200
        token = c.add("access_1", tokens["access_token"])
        c.add("refresh_1", tokens["refresh_token"])
        status, tokens = rec.call("POST", "/v1/auth/refresh",
                                  {"refresh_token": tokens["refresh_token"]},
                                  allow=("access_2", "refresh_2"))
        assert status == 200
        token = c.add("access_2", tokens["access_token"])
        c.add("refresh_2", tokens["refresh_token"])
        bogus = c.make("bogus_bearer")
        assert rec.call("GET", "/v1/auth/me", token=bogus)[0] == 401
        assert rec.call("GET", "/v1/auth/me", token=f"eyJ{bogus}.eyJ{bogus}.{bogus}")[0] == 401
        assert rec.call("POST", "/v1/auth/refresh",
                        {"refresh_token": c.make("bogus_refresh")})[0] == 401
        # -- users and machine tokens ----------------------------------------------------------
        dev_pw = c.make("dev_password")
        assert rec.call("POST", "/v1/users", {"email": DEV, "password": dev_pw,
                                              "role": "developer"}, token=token)[0] == 201
        assert rec.call("POST", "/v1/users", {"email": "short@example.com",
                                              "password": c.make("short")[:7]},
                        token=token)[0] == 400
        new_dev_pw = c.make("dev_password_2")
        result = run_cli(agent.state_dir, "user", "passwd", DEV, "--password-stdin",
                         stdin=new_dev_pw + "\n")
        assert result.returncode == 0, result.stderr
        cli_outputs.append(("user passwd", result.stdout + result.stderr, frozenset()))
        assert rec.call("POST", "/v1/auth/login", {"email": DEV, "password": dev_pw})[0] == 401
        status, dev = rec.call("POST", "/v1/auth/login", {"email": DEV, "password": new_dev_pw},
                               allow=("dev_access", "dev_refresh"))
        assert status == 200
        c.add("dev_access", dev["access_token"])
        c.add("dev_refresh", dev["refresh_token"])
        status, made = rec.call("POST", "/v1/tokens", {"name": "ci", "role": "developer"},
                                token=token, allow=("api_token",))
        assert status == 201
        api_token = c.add("api_token", made["token"])
        assert rec.call("GET", "/v1/services", token=api_token)[0] == 200
        result = run_cli(agent.state_dir, "token", "create", "cli-made", "--role", "viewer")
        cli_token = c.add("cli_token", result.stdout.strip())
        cli_outputs.append(("token create", result.stdout + result.stderr,
                            frozenset({"cli_token"})))
        assert rec.call("GET", "/v1/projects", token=cli_token)[0] == 200
        # -- webhooks --------------------------------------------------------------------------
        hook_secret = c.make("hook_secret")
        status, hook = rec.call("POST", "/v1/webhooks", {"url": receiver.url(), "events": ["*"],
                                                         "secret": hook_secret},
                                token=token, allow=("hook_secret",))
        assert status == 201, hook
        receiver.expect("/hook", hook_secret)
        assert rec.call("POST", "/v1/webhooks", {"url": "http://169.254.169.254/x",
                                                 "events": ["*"], "secret": c.make("ssrf")},
                        token=token)[0] == 400
        assert rec.call("POST", "/v1/webhooks", {"url": receiver.url(), "events": ["nope"],
                                                 "secret": c.make("bad_event")},
                        token=token)[0] == 400
        # -- a deployment with env, secret and plain env vars ----------------------------------
        status, dep = rec.call("POST", "/v1/deployments", {
            "name": "web", "source": "local", "path": str(apps),
            "run_cmd": f"exec {sys.executable} server.py",
            "env": {"DEPLOY_SECRET": c.make("deploy_env")}}, token=token)
        assert status == 201, dep
        service = dep["service_id"]
        wait_until(lambda: rec.call("GET", f"/v1/services/{service}",
                                    token=token)[1]["state"] == "running", timeout=30)
        secret_value, plain_value = c.make("env_secret"), c.make("env_plain")
        assert rec.call("POST", f"/v1/services/{service}/env",
                        {"key": "API_KEY", "value": secret_value, "secret": True},
                        token=token)[0] == 201
        assert rec.call("POST", f"/v1/services/{service}/env?restart=true",
                        {"key": "GREETING", "value": plain_value},
                        token=token, allow=("env_plain",))[0] == 201
        assert rec.call("GET", f"/v1/services/{service}/env", token=token,
                        allow=("env_plain", "deploy_env"))[0] == 200
        for bad in ({"key": "BAD", "value": c.make("env_nul") + "\0"},
                    {"key": "1BAD", "value": c.make("env_badkey")},
                    {"key": "PORT", "value": c.make("env_port")},
                    {"key": "BIG", "value": c.make("env_big") * 5000},
                    {"key": "API_KEY", "value": c.make("env_extra"), "unknown": True}):
            assert rec.call("POST", f"/v1/services/{service}/env", bad, token=token)[0] in (400, 413)
        status, _ = rec.call("POST", f"/v1/services/{service}/restart?wait=true", token=token)
        assert status == 200
        # -- a git remote with credentials (whatever the agent answers, they stay hidden) -----
        git_pw = c.make("git_password")
        status, answer = rec.call("POST", "/v1/deployments", {
            "name": "private", "source": "remote", "runtime": "nodejs", "version": "20",
            "remote": f"https://deployer:{git_pw}@127.0.0.1:{free_port()}/private.git",
            "branch": "main", "run_cmd": "npm start"}, token=token)
        assert status < 500, answer
        # -- hostile bodies ---------------------------------------------------------------------
        rec.raw("POST", "/v1/auth/login", data=f'{{"password": "{c.make("bad_json")}", '.encode())
        rec.raw("POST", "/v1/auth/login",
                data=json.dumps({"email": ADMIN, "password": c.make("too_big") * 40000}).encode())
        rec.raw("POST", "/v1/projects", data=c.make("not_json").encode(), token=token,
                headers={"Content-Type": "text/plain"})
        # -- metrics ---------------------------------------------------------------------------
        assert rec.call("GET", "/metrics", token=c.make("metrics_wrong"))[0] in (401, 403)
        assert rec.call("GET", "/metrics", token=metrics_token)[0] == 200
        # -- every operation, with a canary in every field ----------------------------------------
        assert _walk_every_operation(rec, token, c.make("fuzz")) >= 40
        # -- deliveries reached the receiver; their log is read back ------------------------------
        assert rec.call("POST", f"/v1/webhooks/{hook['id']}/test", token=token)[0] in (200, 202)
        patched_secret = c.make("hook_secret_2")
        assert rec.call("PATCH", f"/v1/webhooks/{hook['id']}", {"secret": patched_secret},
                        token=token)[0] == 200
        wait_until(lambda: any(r.event_type == "service.started" for r in receiver.at("/hook")),
                   timeout=30, message="service events to be delivered")
        assert rec.call("GET", f"/v1/webhooks/{hook['id']}/deliveries", token=token)[0] == 200
        assert rec.call("GET", f"/v1/services/{service}/logs?tail=100", token=token)[0] == 200
        assert rec.call("POST", "/v1/auth/logout", token=token)[0] == 204
        result = run_cli(agent.state_dir, "config", "check",
                         env={k: v for k, v in agent.env().items() if k.startswith("DPLOYR_")})
        cli_outputs.append(("config check", result.stdout + result.stderr, frozenset()))
    finally:
        agent.stop()
        kill_apps(agent.state_dir)
        server.stop()

    leaks: list[str] = []
    for seen in rec.seen:
        leaks += [f"response to {seen.what} ({seen.status}): {name}"
                  for name in c.found_in(seen.text, allowed=seen.allowed)]
    leaks += [f"agent log: {name}" for name in c.found_in(agent.log())]
    for what, text, allowed in cli_outputs:
        leaks += [f"CLI {what}: {name}" for name in c.found_in(text, allowed=allowed)]
    for delivery in receiver.at("/hook"):
        leaks += [f"webhook delivery {delivery.event_type}: {name}"
                  for name in c.found_in(delivery.body.decode(errors="replace"))]
    files = 0
    for path in agent.state_dir.rglob("*"):
        if path.is_file() and not SECRET_HOLDERS.search(str(path)):
            files += 1
            text = path.read_bytes().decode(errors="replace")
            leaks += [f"file {path.relative_to(agent.state_dir)}: {name}"
                      for name in c.found_in(text)]
    assert not leaks, "\n".join(leaks)
    # The sweep saw what it was meant to see.
    assert len(rec.seen) > 80 and files > 3 and receiver.at("/hook")
    assert "upstream" in agent.log()  # the link ran (and failed to connect) with its token
