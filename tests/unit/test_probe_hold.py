"""TCP probes that hold the connection: how the gate tells Docker's proxy (which accepts and
closes at once while nothing listens in the container) from an app that accepted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from agent.supervisor.health import CONTAINER_HOLD, HealthCheck, probe

TCP = HealthCheck(type="tcp", timeout=2.0)
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _closes_at_once(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


async def _keeps_open(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # until the prober hangs up
    writer.close()


async def _greets(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 ready\r\n")
    await writer.drain()
    await reader.read()
    writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[int]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> int:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_a_connection_closed_at_once_fails_a_held_probe(
        serve: Callable[[Handler], Awaitable[int]]) -> None:
    """Accepted then closed at once (Docker's proxy with nothing behind it): a plain TCP probe
    passes, a held one fails saying why."""
    port = await serve(_closes_at_once)
    assert (await probe(TCP, port)).ok
    held = await probe(TCP, port, hold=CONTAINER_HOLD)
    assert not held.ok and "closed at once" in (held.error or "")


async def test_a_connection_kept_open_or_greeted_passes_a_held_probe(
        serve: Callable[[Handler], Awaitable[int]]) -> None:
    """An app that keeps the connection open, or greets first, passes a held probe."""
    assert (await probe(TCP, await serve(_keeps_open), hold=CONTAINER_HOLD)).ok
    assert (await probe(TCP, await serve(_greets), hold=CONTAINER_HOLD)).ok
