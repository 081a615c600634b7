"""The Caddy JSON the agent generates, the @id plan that updates it, and Caddy's own check."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from agent.config import ProxyConfig
from agent.proxy import Route, StaticSite, Upstream
from agent.proxy.caddy_config import (
    ACME_STAGING,
    CaddySettings,
    build_server,
    build_tls_policy,
    plan,
)
from agent.proxy.static import escaping_links
from tests.conftest import have_binary, require

SERVER = "/config/apps/http/servers/dployr"


def _route(rid: str, domain: str, prefix: str = "/") -> Route:
    return Route(id=rid, domain=domain, path_prefix=prefix, service_id=f"svc-{rid}", port=None,
                 created_at=0.0)


def _settings(**overrides: Any) -> CaddySettings:
    return CaddySettings.of(ProxyConfig.model_validate(
        {"backend": "caddy", "caddy_listen": ["127.0.0.1:18080"], **overrides}))


ROUTES = [_route("r1", "a.test"), _route("r2", "*.w.test"), _route("r3", "a.test", "/api")]
TARGETS = {"r1": Upstream("127.0.0.1", 3000), "r2": None, "r3": StaticSite(Path("/srv/site"))}


def test_server_orders_routes_and_renders_each_target_kind() -> None:
    """Upstreams proxy, static sites are file-served under their prefix, no target is 502."""
    server = build_server(ROUTES, TARGETS, _settings())
    ids = [r["@id"] for r in server["routes"]]
    assert ids == ["dployr-r3", "dployr-r1", "dployr-r2", "dployr-catchall"]
    static, upstream, stopped, catchall = server["routes"]
    assert static["match"] == [{"host": ["a.test"], "path": ["/api", "/api/*"]}]
    reads, refused = static["handle"][0]["routes"]
    assert reads["match"] == [{"method": ["GET", "HEAD"]}]
    assert reads["handle"][0] == {"handler": "rewrite", "strip_path_prefix": "/api"}
    assert reads["handle"][1]["root"] == "/srv/site"
    assert refused["handle"][0]["status_code"] == 405
    assert upstream["handle"][0]["upstreams"] == [{"dial": "127.0.0.1:3000"}]
    assert "flush_interval" not in upstream["handle"][0]  # -1 panics Caddy 2.6.2 on reload
    assert stopped["handle"][0]["status_code"] == 502
    assert json.loads(catchall["handle"][0]["body"])["error"]["code"] == "not_found"
    assert server["automatic_https"] == {"disable": True}


def test_https_skips_wildcards_and_sets_the_acme_policy() -> None:
    """With https, wildcard names are left out of automatic HTTPS; email and staging CA set."""
    settings = _settings(https=True, acme_email="ops@example.com", acme_staging=True)
    server = build_server(ROUTES, TARGETS, settings)
    assert server["automatic_https"] == {"skip": ["*.w.test"]}
    policy = build_tls_policy(ROUTES, settings)
    assert policy == {"@id": "dployr-acme", "subjects": ["a.test"], "issuers": [
        {"module": "acme", "email": "ops@example.com", "ca": ACME_STAGING}]}
    assert build_tls_policy(ROUTES, _settings(https=True)) is None
    assert build_tls_policy(ROUTES, _settings(acme_email="ops@example.com")) is None


def test_plan_uses_single_id_calls_for_route_changes() -> None:
    """Added, removed and changed routes become PUT-at-index, DELETE and PATCH by @id."""
    settings = _settings()
    before = build_server(ROUTES[:2], TARGETS, settings)
    after = build_server([ROUTES[0], ROUTES[2]],
                         {**TARGETS, "r1": Upstream("127.0.0.1", 4000)}, settings)
    ops = plan(before, after, SERVER)
    assert ops is not None
    assert [(op.method, op.path) for op in ops] == [
        ("DELETE", "/id/dployr-r2"), ("PATCH", "/id/dployr-r1"), ("PUT", f"{SERVER}/routes/0")]
    assert plan(after, after, SERVER) == []


def test_plan_replaces_the_whole_server_when_more_than_routes_differ() -> None:
    """A new listen address (or foreign-looking routes) cannot be patched route by route."""
    before = build_server(ROUTES, TARGETS, _settings())
    after = build_server(ROUTES, TARGETS, _settings(caddy_listen=["127.0.0.1:9999"]))
    assert plan(before, after, SERVER) is None
    assert plan({**before, "routes": [{"handle": []}]}, before, SERVER) is None


def test_escaping_links_are_found_and_hidden(tmp_path: Path) -> None:
    """Symlinks leading out of a static root are listed and added to file_server's hide."""
    root = tmp_path / "site"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "secret").write_text("x")
    (root / "ok.txt").write_text("ok")
    (root / "inside").symlink_to(root / "ok.txt")
    (root / "sub" / "out").symlink_to(tmp_path / "secret")
    (root / "outdir").symlink_to(tmp_path)
    links = escaping_links(root)
    assert links == (str(root / "outdir"), str(root / "sub" / "out"))
    server = build_server([_route("r", "s.test")], {"r": StaticSite(root)}, _settings(),
                          {root: links})
    file_server = server["routes"][0]["handle"][0]["routes"][0]["handle"][0]
    assert file_server["hide"] == [".*", *links]


def test_caddy_accepts_the_generated_config(tmp_path: Path) -> None:
    """`caddy validate` loads and provisions what the agent generates, HTTPS included."""
    require("caddy", have_binary("caddy"), "the caddy binary is not on PATH")
    settings = _settings(https=True, acme_email="ops@example.com", acme_staging=True,
                         trusted_proxies=["10.0.0.0/8"], caddy_listen=[":18443"])
    config = {"apps": {
        "http": {"servers": {"dployr": build_server(ROUTES, TARGETS, settings)}},
        "tls": {"automation": {"policies": [build_tls_policy(ROUTES, settings)]}}}}
    path = tmp_path / "caddy.json"
    path.write_text(json.dumps(config))
    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "c"),
           "XDG_DATA_HOME": str(tmp_path / "d"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(["caddy", "validate", "--config", str(path)], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
