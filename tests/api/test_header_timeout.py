"""``[server] header_timeout``: the deadline covers a request's head only, never an idle
kept-alive connection or a slow body."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from agent.api.server import AgentRunner
from tests.support.agent import free_port

TIMEOUT = 0.5


async def _echo(request: web.Request) -> web.Response:
    return web.Response(text=f"got {len(await request.read())}")


@pytest.fixture
async def port() -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_route("*", "/", _echo)
    runner = AgentRunner(app, access_log=None, header_timeout=TIMEOUT, keepalive_timeout=30)
    await runner.setup()
    number = free_port()
    await web.TCPSite(runner, "127.0.0.1", number).start()
    try:
        yield number
    finally:
        await runner.cleanup()


async def _response(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    return await asyncio.wait_for(reader.readexactly(length), 5)


async def test_idle_keepalive_longer_than_header_timeout_still_serves(port: int) -> None:
    """A kept-alive connection idle for longer than the header timeout still gets an answer
    to its next request: the deadline starts at the request's first byte."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await _response(reader) == b"got 0"
    await asyncio.sleep(TIMEOUT * 3)  # idle on purpose: longer than the header timeout
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await _response(reader) == b"got 0"
    writer.close()


async def test_body_slower_than_header_timeout_is_read(port: int) -> None:
    """A request whose body arrives after the header timeout is still read and answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab")
    await writer.drain()
    await asyncio.sleep(TIMEOUT * 3)  # a slow upload: the body has no deadline here
    writer.write(b"cd")
    assert await _response(reader) == b"got 4"
    writer.close()


async def test_unfinished_head_is_closed_without_answer(port: int) -> None:
    """A head that never completes is closed after the timeout, with nothing sent back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()


async def test_second_head_on_kept_alive_connection_has_its_own_deadline(port: int) -> None:
    """After one answered request, a second head left unfinished is closed after the timeout."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await _response(reader) == b"got 0"
    writer.write(b"GET / HT")
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
