"""HTTP details through each backend: curl end to end, 100-continue, HEAD, static methods."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.proxy import StaticSite
from tests.integration.proxy.conftest import ProxyHarness


async def test_curl_reaches_the_app_after_one_post(proxy: ProxyHarness) -> None:
    """The issue's 'done when': curl -H 'Host: myapp.example.com' reaches the app."""
    assert shutil.which("curl"), "curl is needed"
    backend = await proxy.start_backend("myapp")
    await proxy.service("svc-myapp", backend)
    await proxy.route("myapp.example.com", "svc-myapp", port=3000)
    process = await asyncio.create_subprocess_exec(
        "curl", "-s", "-H", "Host: myapp.example.com", proxy.url + "/",
        stdout=asyncio.subprocess.PIPE)
    out, _ = await process.communicate()
    assert process.returncode == 0
    assert json.loads(out)["backend"] == "myapp"


async def test_expect_100_continue_is_answered(proxy: ProxyHarness) -> None:
    """A client that waits for '100 Continue' before its body gets it, then the answer."""
    backend = await proxy.start_backend("up")
    await proxy.service("svc", backend)
    await proxy.route("up.test", "svc")
    url = urlsplit(proxy.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    body = b"x" * 100_000
    writer.write(b"POST /upload HTTP/1.1\r\nHost: up.test\r\nExpect: 100-continue\r\n"
                 b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
    await writer.drain()
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=20)
    assert interim.startswith(b"HTTP/1.1 100")
    writer.write(body)
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), timeout=20)
    writer.close()
    while response.startswith(b"HTTP/1.1 100"):  # Caddy relays the app's own 100 as well
        response = response.split(b"\r\n\r\n", 1)[1]
    assert response.startswith(b"HTTP/1.1 200")
    assert b'"size": 100000' in response or b'"size":100000' in response


async def test_head_keeps_the_length_of_get(proxy: ProxyHarness) -> None:
    """HEAD answers with the headers GET would have, and no body."""
    backend = await proxy.start_backend("h")
    await proxy.service("svc", backend)
    await proxy.route("head.test", "svc")
    async with proxy.request("HEAD", "head.test", "/download?size=200000&length=1") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == "200000"
        assert await resp.read() == b""


async def test_static_sites_accept_only_reads(proxy: ProxyHarness, tmp_path: Path) -> None:
    """Writing to a static site is 405 in the error envelope."""
    (tmp_path / "index.html").write_text("hi")
    proxy.locator.add("site", StaticSite(tmp_path))
    await proxy.route("static.test", "site")
    async with proxy.request("POST", "static.test", "/index.html", data=b"x") as resp:
        assert resp.status == 405
        assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_http10_clients_get_a_complete_answer(proxy: ProxyHarness) -> None:
    """An HTTP/1.0 request (no keep-alive, no chunking) gets the whole body, then a close."""
    backend = await proxy.start_backend("old")
    await proxy.service("svc", backend)
    await proxy.route("old.test", "svc")
    url = urlsplit(proxy.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(b"GET /download?size=100000 HTTP/1.0\r\nHost: old.test\r\n\r\n")
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), timeout=20)  # until the proxy closes
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200"))
    assert b"chunked" not in head.lower()
    assert len(body) == 100_000


async def test_routes_survive_an_agent_restart(make_proxy: Any) -> None:
    """Built-in: a new agent on the same state serves the stored routes from its start."""
    first: ProxyHarness = await make_proxy("builtin")
    backend = await first.start_backend("app")
    await first.service("svc", backend)
    await first.route("app.test", "svc")
    await first.api.close()
    second: ProxyHarness = await make_proxy("builtin", state=first.state, locator=first.locator)
    second.backends.append(backend)
    status, body = await second.get_json("app.test")
    assert (status, body["backend"]) == (200, "app")
