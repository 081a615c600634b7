"""The built-in proxy's own HTTP/1.1 protocol, over raw sockets, on asyncio and on uvloop:
malformed and oversized requests, pipelining, half-closes, chunked and slow bodies, and the
connections it hands to aiohttp (static sites, WebSockets)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import aiohttp

from agent.proxy import StaticSite, Upstream
from tests.integration.proxy.conftest import MakeProxy, ProxyHarness
from tests.support.proxy import CHUNK, RawClient, pattern


async def _proxy_to_backend(make_proxy: MakeProxy, host: str = "app.test") -> ProxyHarness:
    proxy: ProxyHarness = await make_proxy("builtin")
    backend = await proxy.start_backend("app")
    await proxy.service("svc", backend)
    await proxy.route(host, "svc")
    return proxy


async def test_malformed_requests_get_400_in_the_envelope_then_a_close(
        make_proxy: MakeProxy) -> None:
    """Requests that cannot be read safely are refused with 400 and the connection closed."""
    proxy = await _proxy_to_backend(make_proxy)
    bad = [b"GARBAGE\r\n\r\n",
           b"GET / HTTP/1.1\r\nHost: app.test\r\nBad Header: x\r\n\r\n",
           b"GET / HTTP/1.1\r\nHost: app.test\r\nHost: other.test\r\n\r\n",
           b"GET / HTTP/1.1\r\nX-No-Host: 1\r\n\r\n",
           b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
           b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3x\r\n\r\nabc",
           b"GET / HTTP/1.1\r\nHost: app.test\r\nX: a\x01b\r\n\r\n",
           b"GET / HTTP/1.1\nHost: app.test\n\n",
           b"CONNECT app.test:443 HTTP/1.1\r\nHost: app.test\r\n\r\n"]
    for request in bad:
        client = await RawClient.connect(proxy.url)
        await client.send(request)
        status, headers, body = await client.response()
        assert status in (400, 405), request
        assert headers["content-type"] == "application/json"
        assert json.loads(body)["error"]["code"] in ("invalid_request", "method_not_allowed")
        assert await client.closed(), request
        await client.close()
    assert (await proxy.get_json("app.test"))[0] == 200  # the proxy is fine


async def test_an_oversized_head_gets_431(make_proxy: MakeProxy) -> None:
    """A request head larger than the proxy reads is answered 431 in the envelope."""
    proxy = await _proxy_to_backend(make_proxy)
    client = await RawClient.connect(proxy.url)
    await client.send(b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n")
    status, _, body = await client.response()
    assert status == 431
    assert json.loads(body)["error"]["code"] == "request_header_fields_too_large"
    assert await client.closed()
    await client.close()


async def test_pipelined_requests_are_answered_in_order(make_proxy: MakeProxy) -> None:
    """Requests sent back to back on one connection get their own answers, in order."""
    proxy = await _proxy_to_backend(make_proxy)
    client = await RawClient.connect(proxy.url)
    await client.send(b"GET /one HTTP/1.1\r\nHost: app.test\r\n\r\n"
                      b"POST /two HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\n\r\nabc"
                      b"POST /three HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n"
                      b"\r\n2\r\nxy\r\n0\r\n\r\n"
                      b"GET /four HTTP/1.1\r\nHost: nobody.test\r\n\r\n"
                      b"HEAD /five HTTP/1.1\r\nHost: app.test\r\n\r\n")
    answers = []
    for head_request in (False, False, False, False, True):
        status, _, body = await client.response(head_request=head_request)
        answers.append((status, json.loads(body) if body else None))
    assert [(s, b and (b.get("path"), b.get("body_size"))) for s, b in answers[:3]] == [
        (200, ("/one", 0)), (200, ("/two", 3)), (200, ("/three", 2))]
    assert answers[3][0] == 404 and answers[3][1]["error"]["code"] == "not_found"
    assert answers[4] == (200, None)
    await client.close()


async def test_a_body_still_arriving_after_the_answer_is_drained(make_proxy: MakeProxy) -> None:
    """An app may answer before the client has sent all of its body: the client gets the
    answer, and its connection serves the next request once the body is in."""
    proxy: ProxyHarness = await make_proxy("builtin")
    app = await _early_answering_app()
    proxy.locator.add("early", Upstream("127.0.0.1", app.sockets[0].getsockname()[1]))
    await proxy.route("early.test", "early")
    client = await RawClient.connect(proxy.url)
    await client.send(b"POST /upload HTTP/1.1\r\nHost: early.test\r\nContent-Length: 20000\r\n\r\n"
                      + b"a" * 5000)
    status, _, body = await client.response()
    assert (status, body) == (200, b"early")
    await client.send(b"a" * 15000)  # the rest of the body, after the answer
    await client.send(b"GET /again HTTP/1.1\r\nHost: early.test\r\n\r\n")
    status, _, body = await client.response()
    assert (status, body) == (200, b"early")
    await client.close()
    app.close()


async def _early_answering_app() -> asyncio.Server:
    """A raw app that answers every request at once, then reads and drops its body."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly")
                await writer.drain()
                if b"content-length" in head.lower():
                    await reader.read(65536)  # some of it; the proxy gives this one up
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


async def test_a_half_closed_client_still_gets_its_answer(make_proxy: MakeProxy) -> None:
    """A client that shuts its sending side after the request reads the whole answer."""
    proxy = await _proxy_to_backend(make_proxy)
    client = await RawClient.connect(proxy.url)
    await client.send(b"GET /download?size=300000 HTTP/1.1\r\nHost: app.test\r\n\r\n")
    client.writer.write_eof()
    status, _, body = await client.response()
    assert status == 200 and body == pattern(300_000)
    assert await client.closed()
    await client.close()


async def test_chunked_request_bodies_arrive_whole_and_reframed(make_proxy: MakeProxy) -> None:
    """A chunked upload (extensions, trailers, split anywhere) reaches the app intact."""
    proxy = await _proxy_to_backend(make_proxy)
    data = pattern(3 * len(CHUNK) + 123)
    encoded = b"".join(b"%x;ext=1\r\n%b\r\n" % (len(part), part)
                       for part in (data[:1000], data[1000:150_000], data[150_000:]))
    encoded += b"0\r\nX-Trailer: t\r\n\r\n"
    client = await RawClient.connect(proxy.url)
    await client.send(b"POST /upload HTTP/1.1\r\nHost: app.test\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n")
    for start in range(0, len(encoded), 7777):
        await client.send(encoded[start:start + 7777])
    status, _, body = await client.response()
    result = json.loads(body)
    assert status == 200
    assert (result["size"], result["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    await client.send(b"POST /upload HTTP/1.1\r\nHost: app.test\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\nzz\r\n")  # not a chunk size
    status, _, body = await client.response()
    assert status == 400 and await client.closed()
    await client.close()


async def test_errors_before_forwarding_keep_the_connection(make_proxy: MakeProxy) -> None:
    """A 404 to a request with a body drains the body; the next request works; HTTP/1.0
    keep-alive is honoured."""
    proxy = await _proxy_to_backend(make_proxy)
    client = await RawClient.connect(proxy.url)
    await client.send(b"POST / HTTP/1.1\r\nHost: nobody.test\r\nContent-Length: 4\r\n\r\nbody")
    status, _, _ = await client.response()
    assert status == 404
    await client.send(b"GET /x HTTP/1.0\r\nHost: app.test\r\nConnection: keep-alive\r\n\r\n")
    status, headers, body = await client.response()
    assert status == 200 and json.loads(body)["path"] == "/x"
    assert headers["connection"].lower() == "keep-alive"
    await client.send(b"GET /y HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
    status, headers, body = await client.response()
    assert status == 200 and json.loads(body)["path"] == "/y"
    assert headers["connection"] == "close" and await client.closed()
    await client.close()


async def test_handed_over_connections_serve_static_files_websockets_and_more(
        make_proxy: MakeProxy, tmp_path: Path) -> None:
    """Static sites and WebSockets are served on connections handed to aiohttp, which then
    keeps answering (proxied requests included) on the same connection."""
    proxy = await _proxy_to_backend(make_proxy)
    (tmp_path / "index.html").write_text("<h1>site</h1>")
    proxy.locator.add("site", StaticSite(tmp_path))
    await proxy.route("app.test", "site", path_prefix="/site")
    client = await RawClient.connect(proxy.url)
    await client.send(b"GET /site/ HTTP/1.1\r\nHost: app.test\r\n\r\n")
    status, _, body = await client.response()
    assert (status, body) == (200, b"<h1>site</h1>")
    await client.send(b"GET /api HTTP/1.1\r\nHost: app.test\r\n\r\n")
    status, _, body = await client.response()
    assert status == 200 and json.loads(body)["path"] == "/api"
    await client.close()
    async with proxy.http.ws_connect(proxy.url + "/ws", headers={"Host": "app.test"}) as ws:
        await ws.send_str("hi")
        assert await ws.receive_str(timeout=20) == "app:hi"
        await ws.send_bytes(b"abc")
        assert await ws.receive_bytes(timeout=20) == b"cba"
        await ws.close()
    assert ws.close_code == aiohttp.WSCloseCode.OK


async def test_large_answers_reach_a_client_with_a_small_buffer(make_proxy: MakeProxy) -> None:
    """A download many times the client's read buffer (so the proxy must wait for it to
    drain) arrives whole, chunked and with a length, on one reused connection."""
    proxy = await _proxy_to_backend(make_proxy)
    client = await RawClient.connect(proxy.url)
    for query in (b"", b"&length=1"):
        await client.send(b"GET /download?size=3000000" + query + b" HTTP/1.1\r\n"
                          b"Host: app.test\r\n\r\n")
        status, headers, body = await client.response()
        assert status == 200 and body == pattern(3_000_000)
        assert ("content-length" in headers) == bool(query)
    await client.close()


async def test_stopping_lets_answers_under_way_finish_and_closes_idle_connections(
        make_proxy: MakeProxy) -> None:
    """When the proxy stops, an idle keep-alive connection closes at once, and an answer
    under way completes before its connection closes."""
    proxy = await _proxy_to_backend(make_proxy)
    backend = proxy.backends[0]
    idle = await RawClient.connect(proxy.url)
    await idle.send(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
    assert (await idle.response())[0] == 200
    busy = await RawClient.connect(proxy.url)
    await busy.send(b"GET /slow HTTP/1.1\r\nHost: app.test\r\n\r\n")
    answer = asyncio.create_task(busy.response())
    await asyncio.wait_for(backend.slow_started.wait(), timeout=20)
    stopping = asyncio.create_task(proxy.backend.stop())
    assert await idle.closed()
    assert not answer.done()
    backend.slow_release.set()
    status, _, body = await answer
    assert (status, body) == (200, b"first-chunk\nlast-chunk\n")
    assert await busy.closed()
    await asyncio.wait_for(stopping, timeout=20)
    for client in (idle, busy):
        await client.close()


async def test_a_broken_app_gives_502_or_a_visibly_cut_answer(make_proxy: MakeProxy) -> None:
    """An app that answers garbage gives 502 in the envelope; one that dies in the middle of
    its body has the client connection cut, so the short body shows."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"GET /garbage"):
            writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()
        writer.close()

    app = await asyncio.start_server(serve, "127.0.0.1", 0)
    proxy: ProxyHarness = await make_proxy("builtin")
    proxy.locator.add("broken", Upstream("127.0.0.1", app.sockets[0].getsockname()[1]))
    await proxy.route("broken.test", "broken")
    client = await RawClient.connect(proxy.url)
    await client.send(b"GET /garbage HTTP/1.1\r\nHost: broken.test\r\n\r\n")
    status, _, body = await client.response()
    assert status == 502 and json.loads(body)["error"]["code"] == "bad_gateway"
    await client.send(b"GET /cut HTTP/1.1\r\nHost: broken.test\r\n\r\n")
    head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), timeout=20)
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 100" in head
    assert await asyncio.wait_for(client.reader.read(), timeout=20) == b"only part"
    await client.close()
    app.close()
