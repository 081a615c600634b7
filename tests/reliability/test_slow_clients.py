"""Slow clients: connections that send their request head one byte at a time are closed after
``[server] header_timeout``, while the API keeps answering everyone else."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from tests.reliability.figures import percentile, record
from tests.support.agent import LiveAgent, eventually

SLOW_CLIENTS = 500
HEADER_TIMEOUT = 2.0
# Far more than the head could take at this pace, so only the timeout can end a connection.
HEAD = b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"z" * 200 + b"\r\n\r\n"
BYTE_INTERVAL = 0.25


class SlowClient:
    """One connection that dribbles ``HEAD`` a byte at a time until the server closes it."""

    def __init__(self) -> None:
        self.closed_after: float | None = None
        self.answered = False
        self.opened = False

    async def run(self, port: int) -> None:
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self.opened = True
        eof = asyncio.ensure_future(reader.read(1))
        try:
            for byte in HEAD:
                if eof.done():
                    break
                writer.write(bytes([byte]))
                try:
                    await writer.drain()
                except ConnectionError:
                    break
                await asyncio.wait([eof], timeout=BYTE_INTERVAL)
            data = await asyncio.wait_for(eof, timeout=60)
            self.answered = bool(data)
        except ConnectionError:
            pass
        finally:
            self.closed_after = time.monotonic() - started
            writer.close()


async def test_slowloris_connections_are_closed_while_health_answers(tmp_path) -> None:
    """500 connections sending headers a byte at a time are closed without an answer after the
    header timeout; GET /v1/health answers every time meanwhile."""
    agent = LiveAgent(state_dir=tmp_path / "state",
                      extra_env={"DPLOYR_SERVER__HEADER_TIMEOUT": str(HEADER_TIMEOUT),
                                 "DPLOYR_LOGGING__ACCESS_LOG": "false"})
    agent.start()
    clients = [SlowClient() for _ in range(SLOW_CLIENTS)]
    tasks = [asyncio.ensure_future(c.run(agent.port)) for c in clients]
    latencies: list[float] = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            async def all_open() -> bool:
                return all(c.opened for c in clients)

            await eventually(all_open, timeout=30, message="500 slow connections to open")
            # While all 500 are connected and dribbling, the API answers.
            while not any(c.closed_after is not None for c in clients):
                started = time.monotonic()
                async with session.get(f"{agent.url}/v1/health") as resp:
                    assert resp.status == 200
                    await resp.read()
                latencies.append(time.monotonic() - started)
                await asyncio.sleep(0.05)

            async def all_closed() -> bool:
                return all(c.closed_after is not None for c in clients)

            await eventually(all_closed, timeout=60, interval=0.1,
                             message="every slow connection to be closed")
            # The agent is still fine afterwards.
            async with session.get(f"{agent.url}/v1/health") as resp:
                assert resp.status == 200
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        agent.stop()

    assert not any(c.answered for c in clients), "a slow client got a response"
    assert latencies, "health was never measured while the slow clients were connected"
    closed = sorted(c.closed_after or 0.0 for c in clients)
    record("slow_clients", connections=SLOW_CLIENTS, header_timeout_s=HEADER_TIMEOUT,
           health_requests=len(latencies),
           health_p50_ms=round(percentile(latencies, 0.5) * 1000, 2),
           health_max_ms=round(max(latencies) * 1000, 2),
           closed_after_min_s=round(closed[0], 2), closed_after_max_s=round(closed[-1], 2))
    assert "Traceback" not in agent.log()
