"""The proxy wired into a real `dployr-agent serve` process."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from tests.support.agent import LiveAgent, free_port, wait_until


def test_serve_starts_the_builtin_proxy_and_reports_it(live_agent: LiveAgent) -> None:
    """The agent process listens for proxied traffic and answers unknown hosts with a 404."""
    port = free_port()
    live_agent.extra_env["DPLOYR_PROXY__LISTEN"] = f"127.0.0.1:{port}"
    live_agent.start()
    token = live_agent.login()
    status, _, body = live_agent.request("GET", "/v1/proxy/status", token=token)
    assert status == 200, body
    assert body["backend"] == "builtin" and body["reachable"]
    assert body["listen"] == [f"127.0.0.1:{port}"]
    # No supervisor yet: the default locator knows no service, so no route can be created.
    status, _, body = live_agent.request("POST", "/v1/proxy/routes", token=token,
                                         body={"domain": "a.example.com", "service_id": "x"})
    assert status == 400 and body["error"]["details"]["field"] == "service_id"

    def unknown_host() -> dict[str, object] | None:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/",
                                         headers={"Host": "nowhere.test"})
        try:
            urllib.request.urlopen(request, timeout=5)
        except urllib.error.HTTPError as err:
            return {"status": err.code, **json.loads(err.read())}
        return None

    answer = wait_until(unknown_host, message="the proxy to answer")
    assert answer["status"] == 404 and answer["error"]["code"] == "not_found"  # type: ignore[index]
