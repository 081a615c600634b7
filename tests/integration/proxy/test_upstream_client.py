"""The built-in proxy's HTTP/1.1 client against raw socket servers that answer byte by byte."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from agent.proxy.upstream import UpstreamError, UpstreamPool
from tests.support.agent import eventually

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A TCP server on 127.0.0.1 running ``handler`` per connection; counts connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.active = 0
        self.max_active = 0
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.active -= 1
            writer.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])


Serve = Callable[[Handler], Awaitable[RawServer]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start raw servers for the test; close them after."""
    servers: list[RawServer] = []

    async def _start(handler: Handler) -> RawServer:
        raw = RawServer(handler)
        raw.server = await asyncio.start_server(raw._serve, "127.0.0.1", 0)
        servers.append(raw)
        return raw

    yield _start
    for raw in servers:
        assert raw.server is not None
        raw.server.close()


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    """A pool with no connection limit."""
    pool = UpstreamPool(connect_timeout=5, read_timeout=5, limit=0, keepalive_timeout=30)
    yield pool
    await pool.close()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


async def _trickle(writer: asyncio.StreamWriter, data: bytes) -> None:
    for i in range(len(data)):
        writer.write(data[i:i + 1])
        await writer.drain()


async def _get(pool: UpstreamPool, port: int, method: str = "GET") -> tuple[int, bytes]:
    async with await pool.request("127.0.0.1", port, method, "/", [("Host", "t")], None,
                                  None) as answer:
        return answer.status, await answer.read()


async def test_chunked_body_split_byte_by_byte_with_trailers(serve: Serve, pool: UpstreamPool) -> None:
    """A chunked body arriving one byte at a time is reassembled; the connection is reused."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            await _read_request(reader)
            await _trickle(writer, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n")

    server = await serve(handler)
    assert await _get(pool, server.port) == (200, b"hello, world")
    assert await _get(pool, server.port) == (200, b"hello, world")
    assert server.connections == 1


async def test_interim_responses_are_skipped(serve: Serve, pool: UpstreamPool) -> None:
    """100 Continue and 103 Early Hints before the answer are not the answer."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                     b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    server = await serve(handler)
    assert await _get(pool, server.port) == (201, b"ok")


async def test_body_until_close_and_no_reuse(serve: Serve, pool: UpstreamPool) -> None:
    """Without a length the body ends with the connection, which is then not reused."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nall of it")
        await writer.drain()

    server = await serve(handler)
    assert await _get(pool, server.port) == (200, b"all of it")
    assert await _get(pool, server.port) == (200, b"all of it")
    assert server.connections == 2


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    b"SPDY/9 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n folded: header\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nX-A: a\nSet-Cookie: injected\r\nContent-Length: 0\r\n\r\n",
])
async def test_malformed_answers_are_errors(serve: Serve, pool: UpstreamPool,
                                            head: bytes) -> None:
    """Conflicting lengths, bad status lines, folded headers, bad chunks: UpstreamError."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(head)
        await writer.drain()
        await asyncio.sleep(0.5)  # keep the connection open: the error is in the bytes

    server = await serve(handler)
    with pytest.raises(UpstreamError):
        await _get(pool, server.port)


async def test_a_stale_pooled_connection_is_retried_once(serve: Serve, pool: UpstreamPool) -> None:
    """An app that closes idle keep-alive connections costs the client nothing."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        # ...and close without saying so (as Node's 5 s keep-alive timeout does).

    server = await serve(handler)
    for _ in range(5):
        assert await _get(pool, server.port) == (200, b"ok")
    assert server.connections == 5


async def test_silence_is_a_timeout(serve: Serve) -> None:
    """No answer within read_timeout raises TimeoutError."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(10)

    server = await serve(handler)
    pool = UpstreamPool(connect_timeout=5, read_timeout=0.2, limit=0, keepalive_timeout=30)
    with pytest.raises(TimeoutError):
        await _get(pool, server.port)
    await pool.close()


async def test_the_pool_limit_queues_requests(serve: Serve) -> None:
    """With a limit of one connection, concurrent requests wait their turn and all succeed."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await _read_request(reader)
            await asyncio.sleep(0.01)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    server = await serve(handler)
    pool = UpstreamPool(connect_timeout=5, read_timeout=5, limit=1, keepalive_timeout=30)
    results = await asyncio.gather(*(_get(pool, server.port) for _ in range(10)))
    assert results == [(200, b"ok")] * 10
    assert server.max_active == 1
    await pool.close()


async def test_head_and_no_content_have_no_body(serve: Serve, pool: UpstreamPool) -> None:
    """HEAD, 204 and 304 end at their head whatever Content-Length says; reuse continues."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for status in (b"200 OK", b"204 No Content", b"304 Not Modified"):
            await _read_request(reader)
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 5\r\n\r\n")
            await writer.drain()

    server = await serve(handler)
    assert await _get(pool, server.port, "HEAD") == (200, b"")
    assert await _get(pool, server.port) == (204, b"")
    assert await _get(pool, server.port) == (304, b"")
    assert server.connections == 1


async def test_connections_idle_past_the_keepalive_timeout_are_not_reused(serve: Serve) -> None:
    """A connection that sat in the pool longer than upstream_keepalive_timeout is replaced."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await _read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    server = await serve(handler)
    pool = UpstreamPool(connect_timeout=5, read_timeout=5, limit=0, keepalive_timeout=30)
    assert await _get(pool, server.port) == (200, b"ok")
    assert await _get(pool, server.port) == (200, b"ok")
    assert server.connections == 1
    for idle in pool._idle.values():  # as if 31 s had passed
        for conn in idle:
            conn.idle_since -= 31
    assert await _get(pool, server.port) == (200, b"ok")
    assert server.connections == 2
    await pool.close()


async def test_an_idle_connection_that_speaks_unasked_is_not_reused(serve: Serve,
                                                                     pool: UpstreamPool) -> None:
    """Bytes arriving on an idle pooled connection (a stray 408) retire it."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await _read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()

    server = await serve(handler)
    assert await _get(pool, server.port) == (200, b"ok")

    async def tainted() -> bool:
        return all(c.tainted for idle in pool._idle.values() for c in idle)

    await eventually(tainted, message="the stray bytes to arrive")
    assert await _get(pool, server.port) == (200, b"ok")
    assert server.connections == 2


async def test_a_waiter_cancelled_after_its_wake_up_passes_the_slot_on(serve: Serve) -> None:
    """Limit 1: the woken waiter is cancelled before it runs; the next waiter still gets the
    free slot (the wake-up is not lost, nobody waits forever)."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    server = await serve(handler)
    pool = UpstreamPool(connect_timeout=5, read_timeout=5, limit=1, keepalive_timeout=30)
    key = ("127.0.0.1", server.port)
    held = await pool.acquire(key)
    first = asyncio.ensure_future(pool.acquire(key))
    second = asyncio.ensure_future(pool.acquire(key))
    await asyncio.sleep(0)  # both are queued
    pool.release(key, held, reuse=False)  # wakes the first
    first.cancel()  # ... which is cancelled before it gets to run
    conn = await asyncio.wait_for(second, 10)  # a bound on a hang, not a timing assertion
    assert first.cancelled()
    pool.release(key, conn, reuse=False)
    await pool.close()
