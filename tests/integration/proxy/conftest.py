"""The proxy under test, through each backend: the agent app (API + proxy), a locator the
test controls, backends it starts, and for ``caddy`` a real Caddy the test runs itself."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop
from aiohttp.test_utils import TestClient

from agent.app import AdminSeed, create_app
from agent.keys import PROXY_KEY
from agent.proxy import ProxyBackend
from agent.proxy.builtin import BuiltinProxy
from agent.proxy.caddy import CaddyBackend
from agent.testing import MemoryServiceLocator
from tests.conftest import bearer, have_binary, login, require
from tests.support.agent import ADMIN_EMAIL, ADMIN_PASSWORD, make_config
from tests.support.proxy import Backend, CaddyProcess, stop_all


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item,
                                   ) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The built-in proxy's own protocol is tested on both loops the agent runs on; the
    other proxy tests on asyncio's (a single factory adds nothing to their ids)."""
    if item.path.name == "test_fast_path.py":
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


@dataclass
class ProxyHarness:
    """One agent with its proxy; helpers to route and to send traffic through it."""

    kind: str
    state: Path
    api: TestClient
    auth: dict[str, str]
    locator: MemoryServiceLocator
    url: str
    http: aiohttp.ClientSession
    caddy: CaddyProcess | None
    backends: list[Backend] = field(default_factory=list)

    @property
    def backend(self) -> ProxyBackend:
        return self.api.server.app[PROXY_KEY]

    async def start_backend(self, name: str) -> Backend:
        backend = await Backend(name).start()
        self.backends.append(backend)
        return backend

    async def service(self, service_id: str, backend: Backend | None) -> None:
        """Declare a service whose current release is ``backend`` (None: not running)."""
        self.locator.add(service_id, backend.upstream if backend else None)

    async def route(self, domain: str, service_id: str, *, expect: int = 201,
                    **extra: Any) -> dict[str, Any]:
        resp = await self.api.post("/v1/proxy/routes", headers=self.auth,
                                   json={"domain": domain, "service_id": service_id, **extra})
        body: dict[str, Any] = await resp.json()
        assert resp.status == expect, body
        return body

    async def delete_route(self, route_id: str) -> None:
        resp = await self.api.delete(f"/v1/proxy/routes/{route_id}", headers=self.auth)
        assert resp.status == 204, await resp.text()

    def request(self, method: str, host: str, path: str = "/",
                **kw: Any) -> aiohttp.client._RequestContextManager:
        headers = {"Host": host, **kw.pop("headers", {})}
        return self.http.request(method, self.url + path, headers=headers, **kw)

    async def get_json(self, host: str, path: str = "/") -> tuple[int, Any]:
        async with self.request("GET", host, path) as resp:
            return resp.status, await resp.json(content_type=None)


def _proxy_config(kind: str, caddy: CaddyProcess | None, **overrides: Any) -> dict[str, Any]:
    if kind == "builtin":
        return {"backend": "builtin", "listen": "127.0.0.1:0", **overrides}
    assert caddy is not None
    return {"backend": "caddy", "caddy_admin": caddy.admin_url,
            "caddy_listen": [f"127.0.0.1:{caddy.listen_port}"], "caddy_poll_interval": 0.2,
            **overrides}


def _proxy_url(harness_backend: ProxyBackend) -> str:
    if isinstance(harness_backend, BuiltinProxy):
        host, port = harness_backend.address
        return f"http://{host}:{port}"
    assert isinstance(harness_backend, CaddyBackend)
    return f"http://{harness_backend.status().listen[0]}"


MakeProxy = Callable[..., Any]


@pytest.fixture
async def make_proxy(aiohttp_client: Any, tmp_path: Path) -> AsyncIterator[MakeProxy]:
    """Build a ``ProxyHarness`` for a backend kind, with ``[proxy]`` overrides."""
    made: list[ProxyHarness] = []
    caddies: list[CaddyProcess] = []

    async def _make(kind: str, *, caddy: CaddyProcess | None = None,
                    state: Path | None = None, locator: MemoryServiceLocator | None = None,
                    **overrides: Any) -> ProxyHarness:
        """``caddy``/``state``/``locator``: reuse those of an earlier harness (an agent
        restart); ``overrides``: keys of ``[proxy]``."""
        if kind == "caddy" and caddy is None:
            require("caddy", have_binary("caddy"), "the caddy binary is not on PATH")
            caddy = CaddyProcess(tmp_path / f"caddy-{len(caddies)}")
            caddies.append(caddy)
            caddy.start()
            await caddy.wait_ready()
        locator = locator or MemoryServiceLocator()
        config = make_config(state or tmp_path / f"state-{len(made)}",
                             proxy=_proxy_config(kind, caddy, **overrides))
        app = create_app(config, admin=AdminSeed(ADMIN_EMAIL, ADMIN_PASSWORD), locator=locator)
        api = await aiohttp_client(app)
        auth = bearer((await login(api))["access_token"])
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        harness = ProxyHarness(kind=kind, state=config.state.dir, api=api, auth=auth, locator=locator,
                               url=_proxy_url(app[PROXY_KEY]), http=http, caddy=caddy)
        made.append(harness)
        return harness

    try:
        yield _make
    finally:
        for harness in made:
            await harness.http.close()
            await stop_all(harness.backends)
        for caddy in caddies:
            caddy.stop()


@pytest.fixture(params=["builtin", "caddy"])
def kind(request: pytest.FixtureRequest) -> str:
    """Each proxy backend in turn."""
    return str(request.param)


@pytest.fixture
async def proxy(kind: str, make_proxy: MakeProxy) -> ProxyHarness:
    """The agent with the ``kind`` proxy backend and default settings."""
    harness: ProxyHarness = await make_proxy(kind)
    return harness
