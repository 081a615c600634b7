"""Real HTTP through each proxy backend (built-in and a real Caddy) to real aiohttp backends."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import time
from collections.abc import AsyncIterator

import aiohttp

from tests.integration.proxy.conftest import MakeProxy, ProxyHarness
from tests.support.agent import eventually
from tests.support.proxy import CHUNK, pattern

TEN_MB = 10 * 1024 * 1024


async def test_routes_by_host_wildcard_and_path_prefix(proxy: ProxyHarness) -> None:
    """Host picks the service (exact before wildcard); the longest path prefix wins."""
    a, b = await proxy.start_backend("a"), await proxy.start_backend("b")
    await proxy.service("svc-a", a)
    await proxy.service("svc-b", b)
    await proxy.route("a.example.test", "svc-a", port=3000)
    await proxy.route("b.example.test", "svc-b")
    await proxy.route("b.example.test", "svc-a", path_prefix="/api")
    await proxy.route("*.wild.test", "svc-b")
    await proxy.route("exact.wild.test", "svc-a")

    cases = [("a.example.test", "/", "a"), ("B.Example.Test:80", "/x", "b"),
             ("b.example.test", "/api", "a"), ("b.example.test", "/api/v1?q=1", "a"),
             ("b.example.test", "/apix", "b"), ("any.wild.test", "/", "b"),
             ("exact.wild.test", "/", "a")]
    for host, path, expected in cases:
        status, body = await proxy.get_json(host, path)
        assert (status, body["backend"]) == (200, expected), (host, path, body)
    _, body = await proxy.get_json("b.example.test", "/api/v1?q=1")
    assert body["path"] == "/api/v1?q=1"

    for host in ("nowhere.test", "deep.any.wild.test", "wild.test"):
        status, body = await proxy.get_json(host)
        assert status == 404, host
        assert body["error"]["code"] == "not_found"


async def test_ten_megabyte_streamed_upload_and_download(proxy: ProxyHarness) -> None:
    """10 MB go up (chunked and with a length) and come down (both ways) intact."""
    backend = await proxy.start_backend("files")
    await proxy.service("svc", backend)
    await proxy.route("files.test", "svc")
    data = pattern(TEN_MB)
    digest = hashlib.sha256(data).hexdigest()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, TEN_MB, len(CHUNK)):
            yield data[start:start + len(CHUNK)]

    for body, length in ((chunks(), None), (io.BytesIO(data), str(TEN_MB))):
        async with proxy.request("POST", "files.test", "/upload", data=body) as resp:
            assert resp.status == 200
            result = await resp.json()
        assert (result["size"], result["sha256"]) == (TEN_MB, digest)
        assert result["content_length"] == length

    for query in ("", "&length=1"):
        async with proxy.request("GET", "files.test", f"/download?size={TEN_MB}{query}") as resp:
            assert resp.status == 200
            received = hashlib.sha256()
            size = 0
            async for chunk in resp.content.iter_any():
                received.update(chunk)
                size += len(chunk)
        assert (size, received.hexdigest()) == (TEN_MB, digest)


async def test_response_streams_before_the_backend_finishes(proxy: ProxyHarness) -> None:
    """The first bytes of a slow response reach the client while the backend still waits."""
    backend = await proxy.start_backend("slow")
    await proxy.service("svc", backend)
    await proxy.route("slow.test", "svc")
    async with proxy.request("GET", "slow.test", "/slow") as resp:
        assert resp.status == 200
        # The backend finishes only when released, after the first line came through.
        first = await asyncio.wait_for(resp.content.readline(), timeout=20)
        assert first == b"first-chunk\n"
        assert not backend.slow_release.is_set()
        backend.slow_release.set()
        assert await resp.content.read() == b"last-chunk\n"


async def test_request_body_streams_before_the_client_finishes(proxy: ProxyHarness) -> None:
    """The backend sees the first chunk of an upload while the client still holds the rest."""
    backend = await proxy.start_backend("up")
    backend.upload_release = asyncio.Event()
    await proxy.service("svc", backend)
    await proxy.route("up.test", "svc")
    client_may_finish = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield CHUNK
        await client_may_finish.wait()
        yield CHUNK

    async def upload() -> dict[str, object]:
        async with proxy.request("POST", "up.test", "/upload", data=body()) as resp:
            assert resp.status == 200
            result: dict[str, object] = await resp.json()
            return result

    task = asyncio.create_task(upload())
    await asyncio.wait_for(backend.upload_started.wait(), timeout=20)
    client_may_finish.set()
    backend.upload_release.set()
    result = await asyncio.wait_for(task, timeout=20)
    assert result["size"] == 2 * len(CHUNK)


async def test_websocket_echo_both_ways(proxy: ProxyHarness) -> None:
    """Text and binary messages cross both ways; subprotocol and close code come through."""
    backend = await proxy.start_backend("ws")
    await proxy.service("svc", backend)
    await proxy.route("ws.test", "svc")
    async with proxy.http.ws_connect(proxy.url + "/ws", headers={"Host": "ws.test"},
                                     protocols=("echo.v1",)) as ws:
        assert ws.protocol == "echo.v1"
        for i in range(20):
            await ws.send_str(f"hello {i}")
            assert await ws.receive_str(timeout=20) == f"ws:hello {i}"
        await ws.send_bytes(b"\x00\x01\x02abc")
        assert await ws.receive_bytes(timeout=20) == b"cba\x02\x01\x00"
        await ws.send_str("close-4001")
        msg = await ws.receive(timeout=20)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 4001


async def test_backend_down_and_service_not_running_give_502(proxy: ProxyHarness) -> None:
    """Nothing listening, or a service with nothing to serve: 502 in the error envelope."""
    backend = await proxy.start_backend("gone")
    await proxy.service("svc-down", backend)
    await backend.stop()
    await proxy.service("svc-stopped", None)
    await proxy.route("down.test", "svc-down")
    await proxy.route("stopped.test", "svc-stopped")
    for host in ("down.test", "stopped.test"):
        status, body = await proxy.get_json(host)
        assert status == 502, (host, body)
        assert body["error"]["code"] == "bad_gateway"
    async with proxy.request("GET", "down.test", "/ws",
                             headers={"Connection": "Upgrade", "Upgrade": "websocket",
                                      "Sec-WebSocket-Version": "13",
                                      "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as resp:
        assert resp.status == 502


async def test_slow_backend_gives_504(kind: str, make_proxy: MakeProxy) -> None:
    """A backend that does not answer within read_timeout: 504 in the error envelope."""
    proxy: ProxyHarness = await make_proxy(kind, read_timeout=0.5)
    backend = await proxy.start_backend("sleepy")
    await proxy.service("svc", backend)
    await proxy.route("sleepy.test", "svc")
    status, body = await proxy.get_json("sleepy.test", "/sleep?s=20")
    assert status == 504, body
    assert body["error"]["code"] == "gateway_timeout"


async def test_deleting_a_route_stops_traffic(proxy: ProxyHarness) -> None:
    """Once DELETE returns, the domain is unknown to the proxy again."""
    backend = await proxy.start_backend("a")
    await proxy.service("svc", backend)
    route = await proxy.route("del.test", "svc")
    other = await proxy.route("keep.test", "svc")
    assert (await proxy.get_json("del.test"))[0] == 200
    await proxy.delete_route(route["id"])
    status, body = await proxy.get_json("del.test")
    assert status == 404 and body["error"]["code"] == "not_found"
    assert (await proxy.get_json("keep.test"))[0] == 200
    await proxy.delete_route(other["id"])
    assert (await proxy.get_json("keep.test"))[0] == 404


async def test_redeploy_under_a_request_loop_drops_nothing(proxy: ProxyHarness) -> None:
    """Switching the service to a new release while clients hammer it loses no request:
    refresh() returns once nothing new goes to the old release, which then stops gracefully."""
    old = await proxy.start_backend("v1")
    await proxy.service("svc", old)
    await proxy.route("app.test", "svc")
    seen: list[str] = []
    failures: list[str] = []
    stop = asyncio.Event()

    marks: dict[str, float] = {}

    async def client() -> None:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                async with proxy.request("GET", "app.test", "/") as resp:
                    body = await resp.json(content_type=None)
                    if resp.status != 200:
                        failures.append(f"{resp.status} {body} {_when(sent, marks)}")
                    else:
                        seen.append(body["backend"])
            except aiohttp.ClientError as exc:
                failures.append(f"{exc!r} {_when(sent, marks)}")

    clients = [asyncio.create_task(client()) for _ in range(8)]
    await eventually(lambda: _at_least(seen, "v1", 50), message="traffic to v1")
    new = await proxy.start_backend("v2")
    marks["switch"] = time.monotonic()
    proxy.locator.set_target("svc", new.upstream)  # what the supervisor does on a redeploy
    await proxy.backend.refresh("svc")
    marks["refreshed"] = time.monotonic()
    switched_at = len(seen)
    await old.stop()  # graceful: requests in flight on v1 finish
    marks["old_stopped"] = time.monotonic()
    await eventually(lambda: _at_least(seen, "v2", 50), message="traffic to v2")
    stop.set()
    await asyncio.gather(*clients)
    assert failures == []
    # Anything sent after refresh() returned and v1 drained went to v2.
    assert "v1" not in seen[switched_at + 8 * 2:]


def _when(sent: float, marks: dict[str, float]) -> str:
    """When a failed request was sent and answered, relative to the redeploy's steps."""
    now = time.monotonic()
    steps = ", ".join(f"{name} {at - sent:+.4f}s" for name, at in marks.items())
    return f"(answered {now - sent:.4f}s after sending; {steps})"


async def _at_least(seen: list[str], name: str, count: int) -> bool:
    return seen.count(name) >= count


async def test_forwarded_headers_and_hop_by_hop_removal(proxy: ProxyHarness) -> None:
    """Apps see the Host, X-Forwarded-*, end-to-end headers; hop-by-hop ones are dropped."""
    backend = await proxy.start_backend("h")
    await proxy.service("svc", backend)
    await proxy.route("hdr.test", "svc")
    headers = {"Connection": "keep-alive, X-Private", "X-Private": "secret",
               "Keep-Alive": "timeout=5", "Proxy-Authorization": "Basic eA==",
               "X-Forwarded-For": "6.6.6.6", "X-Custom": "kept", "Cookie": "session=abc"}
    async with proxy.request("GET", "hdr.test:8080", "/h", headers=headers) as resp:
        body = await resp.json()
    seen = {k.lower(): v for k, v in body["headers"]}
    assert seen["host"] == "hdr.test:8080"
    assert seen["x-forwarded-for"] == "127.0.0.1"  # the client's claim is not trusted
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == "hdr.test:8080"
    assert seen["x-custom"] == "kept" and seen["cookie"] == "session=abc"
    for name in ("x-private", "keep-alive", "proxy-authorization"):
        assert name not in seen, name

    async with proxy.request("GET", "hdr.test", "/hop") as resp:
        assert resp.status == 200
        assert "X-Private" not in resp.headers and "Keep-Alive" not in resp.headers
        assert sorted(resp.headers.getall("Set-Cookie")) == ["a=1", "b=2"]


async def test_compressed_bodies_pass_through_untouched(proxy: ProxyHarness) -> None:
    """A gzip body reaches the client as the backend sent it, Content-Encoding kept."""
    backend = await proxy.start_backend("z")
    await proxy.service("svc", backend)
    await proxy.route("gz.test", "svc")
    async with proxy.request("GET", "gz.test", "/gzip", auto_decompress=False,
                             headers={"Accept-Encoding": "gzip"}) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(await resp.read()) == b"compressed " * 1000


async def test_a_release_gone_between_lookup_and_connect_is_retried_on_the_new_one(
        make_proxy: MakeProxy) -> None:
    """Built-in: a request refused by a just-stopped release goes to the current one."""
    proxy: ProxyHarness = await make_proxy("builtin")
    new = await proxy.start_backend("v2")
    gone = await proxy.start_backend("v1")
    await gone.stop()
    answers = iter([gone.upstream, new.upstream])  # stale on the first lookup only
    await proxy.service("svc", new)
    proxy.locator.target = (  # type: ignore[method-assign]
        lambda service_id, port: next(answers, new.upstream))
    await proxy.route("app.test", "svc")
    for method in ("GET", "POST"):  # refused: nothing was sent, so even a POST may go again
        answers = iter([gone.upstream, new.upstream])
        body = b"x" if method == "POST" else None
        async with proxy.request(method, "app.test", "/", data=body) as resp:
            assert resp.status == 200
            assert (await resp.json())["backend"] == "v2"
