"""The built-in proxy of a real ``dployr-agent serve``, on each event loop it can run on: the
unit tests of the proxy run in the test's own (asyncio) loop, and uvloop's transports are not
asyncio.Transport subclasses, which once made every proxied request fail on the default loop."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import pytest

from tests.support.agent import LiveAgent, wait_until
from tests.support.services import SERVER_APP, kill_apps, write_app


def _get(port: int, host: str, conn: http.client.HTTPConnection | None = None) -> tuple[int, str]:
    """GET / with ``Host: host`` on ``conn`` (kept open), else on a connection of its own."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/", headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        if own:
            conn.close()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_requests_reach_the_app_through_the_built_in_proxy(tmp_path: Path, loop: str) -> None:
    """A routed domain answers with the app's body, on one keep-alive connection and on new
    ones, whatever the agent's event loop."""
    apps = write_app(tmp_path / "srv", "web", {"app.py": SERVER_APP})
    agent = LiveAgent(state_dir=tmp_path / "state", extra_env={
        "DPLOYR_SERVER__EVENT_LOOP": loop,
        "DPLOYR_SERVICES__ALLOWED_LOCAL_ROOTS": json.dumps([str(apps.parent)]),
    })
    try:
        agent.start()
        token = agent.login()
        status, _, dep = agent.request("POST", "/v1/deployments", token=token, body={
            "name": "web", "source": "local", "path": str(apps), "run_cmd": "exec python3 app.py",
            "env": {"GREETING": f"hello over {loop}"},
            "health_check": {"type": "http", "path": "/", "interval": 1}})
        assert status == 201, dep
        wait_until(lambda: agent.request("GET", "/v1/services/web", token=token)[2]["state"]
                   == "running", timeout=30, message="the app to run")
        status, _, route = agent.request("POST", "/v1/proxy/routes", token=token, body={
            "domain": "web.test", "service_id": dep["service_id"]})
        assert status == 201, route
        proxy = agent.request("GET", "/v1/proxy/status", token=token)[2]
        port = int(proxy["listen"][0].rsplit(":", 1)[1])
        keep_alive = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for _ in range(5):
            assert _get(port, "web.test", keep_alive) == (200, f"hello over {loop}")
            assert _get(port, "web.test") == (200, f"hello over {loop}")
        keep_alive.close()
        assert _get(port, "nobody.test")[0] == 404
        assert "proxy_request_failed" not in agent.log()
    finally:
        agent.stop()
        kill_apps(agent.state_dir)
