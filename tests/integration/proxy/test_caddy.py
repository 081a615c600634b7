"""The Caddy backend's own promises, against a real Caddy the test starts, kills and restarts."""

from __future__ import annotations

from typing import Any

import aiohttp

from agent.proxy.caddy import CaddyBackend
from tests.integration.proxy.conftest import MakeProxy, ProxyHarness
from tests.support.agent import eventually, free_port


async def _serves(proxy: ProxyHarness, host: str, expected: str) -> bool:
    try:
        status, body = await proxy.get_json(host)
    except (aiohttp.ClientError, ValueError):
        return False
    return status == 200 and body.get("backend") == expected


async def _status(proxy: ProxyHarness) -> dict[str, Any]:
    resp = await proxy.api.get("/v1/proxy/status", headers=proxy.auth)
    assert resp.status == 200
    body: dict[str, Any] = await resp.json()
    return body


async def test_caddy_killed_and_restarted_gets_its_routes_back(make_proxy: MakeProxy) -> None:
    """kill -9 Caddy, start it again empty: the agent notices and re-applies every route."""
    proxy: ProxyHarness = await make_proxy("caddy")
    assert proxy.caddy is not None
    backend = await proxy.start_backend("app")
    await proxy.service("svc", backend)
    await proxy.route("one.test", "svc")
    await proxy.route("two.test", "svc", path_prefix="/api")
    assert await _serves(proxy, "one.test", "app")

    proxy.caddy.kill()
    await eventually(lambda: _unreachable(proxy), message="the agent to see Caddy gone")
    status = await _status(proxy)
    assert status["error"] and not status["in_sync"], status

    proxy.caddy.start()
    await proxy.caddy.wait_ready()
    await eventually(lambda: _serves(proxy, "one.test", "app"), message="routes back")
    assert not await _serves(proxy, "two.test", "app")  # "/" is outside "/api"
    async with proxy.request("GET", "two.test", "/api/x") as resp:
        assert resp.status == 200
    # Traffic flows as soon as the server is back; the status once the whole pass is done.
    status = await eventually(lambda: _in_sync(proxy), message="the status to recover")
    assert status["reachable"] and status["error"] is None
    assert status["routes"] == 2 and status["backend"] == "caddy"
    assert int(status["details"]["reapplied"]) >= 2  # at the first start, and after the kill


async def _unreachable(proxy: ProxyHarness) -> bool:
    return not (await _status(proxy))["reachable"]


async def _in_sync(proxy: ProxyHarness) -> dict[str, Any] | None:
    status = await _status(proxy)
    return status if status["in_sync"] else None


async def test_foreign_config_is_kept_when_the_agent_adds_its_server(make_proxy: MakeProxy,
                                                                      tmp_path: Any) -> None:
    """Caddy restarted with someone else's server: ours is added next to it, theirs untouched."""
    proxy: ProxyHarness = await make_proxy("caddy")
    assert proxy.caddy is not None
    backend = await proxy.start_backend("app")
    await proxy.service("svc", backend)
    await proxy.route("mine.test", "svc")

    foreign_port = free_port()
    foreign = {"apps": {"http": {"servers": {"theirs": {
        "listen": [f"127.0.0.1:{foreign_port}"], "automatic_https": {"disable": True},
        "routes": [{"handle": [{"handler": "static_response", "body": "foreign site"}]}]}}}}}
    proxy.caddy.kill()
    proxy.caddy.start(extra=foreign)
    await proxy.caddy.wait_ready()
    await eventually(lambda: _serves(proxy, "mine.test", "app"), message="our route back")
    async with proxy.http.get(f"http://127.0.0.1:{foreign_port}/") as resp:
        assert await resp.text() == "foreign site"
    servers = (await proxy.caddy.config("/config/apps/http/servers"))
    assert set(servers) == {"theirs", "dployr"}


async def test_routes_created_while_caddy_is_down_are_applied_when_it_returns(
        make_proxy: MakeProxy) -> None:
    """The API accepts the route while Caddy is away (status says so); Caddy gets it later."""
    proxy: ProxyHarness = await make_proxy("caddy")
    assert proxy.caddy is not None
    backend = await proxy.start_backend("app")
    await proxy.service("svc", backend)
    proxy.caddy.kill()
    await proxy.route("later.test", "svc")
    status = await _status(proxy)
    assert not status["reachable"] and "unreachable" in status["error"]
    proxy.caddy.start()
    await proxy.caddy.wait_ready()
    await eventually(lambda: _serves(proxy, "later.test", "app"), message="the late route")


async def test_refresh_moves_traffic_before_it_returns(make_proxy: MakeProxy) -> None:
    """After refresh(service) returns, the very next request reaches the new release."""
    proxy: ProxyHarness = await make_proxy("caddy")
    old, new = await proxy.start_backend("v1"), await proxy.start_backend("v2")
    await proxy.service("svc", old)
    await proxy.route("app.test", "svc")
    await proxy.route("other.test", "svc")
    assert await _serves(proxy, "app.test", "v1")
    proxy.locator.set_target("svc", new.upstream)
    await proxy.backend.refresh("svc")
    assert await _serves(proxy, "app.test", "v2")
    assert await _serves(proxy, "other.test", "v2")


async def test_routes_carry_ids_in_matching_order_and_drift_is_repaired(
        make_proxy: MakeProxy) -> None:
    """Each route is an @id'd Caddy route, exact hosts and long prefixes first; a route
    removed behind the agent's back comes back."""
    proxy: ProxyHarness = await make_proxy("caddy")
    assert proxy.caddy is not None
    backend = await proxy.start_backend("app")
    await proxy.service("svc", backend)
    wild = await proxy.route("*.example.test", "svc")
    root = await proxy.route("a.example.test", "svc")
    api = await proxy.route("a.example.test", "svc", path_prefix="/api")
    routes = await proxy.caddy.config("/config/apps/http/servers/dployr/routes")
    assert [r["@id"] for r in routes] == [f"dployr-{api['id']}", f"dployr-{root['id']}",
                                          f"dployr-{wild['id']}", "dployr-catchall"]

    async with aiohttp.ClientSession() as session, \
            session.delete(f"{proxy.caddy.admin_url}/id/dployr-{root['id']}") as resp:
        assert resp.status == 200
    await eventually(lambda: _serves(proxy, "a.example.test", "app"), message="repair")
    assert isinstance(proxy.backend, CaddyBackend)


async def test_agent_restart_reapplies_and_caddy_serves_while_the_agent_is_away(
        make_proxy: MakeProxy) -> None:
    """Caddy keeps serving when the agent stops; a new agent re-applies routes on start."""
    first: ProxyHarness = await make_proxy("caddy")
    assert first.caddy is not None
    backend = await first.start_backend("app")
    await first.service("svc", backend)
    await first.route("app.test", "svc")
    await first.api.close()  # the agent stops (its proxy backend with it)
    assert await _serves(first, "app.test", "app")  # apps outlive the agent

    first.caddy.kill()
    first.caddy.start()
    await first.caddy.wait_ready()
    assert not await _serves(first, "app.test", "app")
    second: ProxyHarness = await make_proxy("caddy", caddy=first.caddy, state=first.state,
                                            locator=first.locator)
    assert await _serves(second, "app.test", "app")  # applied during the agent's start
