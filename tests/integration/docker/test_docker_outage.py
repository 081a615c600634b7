"""The Docker engine goes away and comes back (a dedicated dockerd this test stops and starts;
the shared one is never touched): 503 ``runtime_unavailable`` for Docker operations while
everything else works, a degraded instance, then the re-sync: containers re-adopted with
their logs resumed, runs that ended meanwhile restarted, starts that failed meanwhile
retried."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import Client, bearer, login, require
from tests.support.agent import eventually
from tests.support.docker import (
    TICKER,
    Dockerd,
    can_run_dockerd,
    cleanup,
    inspect,
    need_docker,
)


@pytest.fixture
def dockerd() -> Iterator[Dockerd]:
    """A dedicated engine with the test image loaded."""
    need_docker()
    available, why = can_run_dockerd()
    require("docker", available, why)
    engine = Dockerd()
    try:
        engine.setup()
        yield engine
    finally:
        engine.teardown()


class Agent:
    def __init__(self, client: Client, headers: dict[str, str]) -> None:
        self.client = client
        self.headers = headers

    async def call(self, method: str, path: str, expect: int = 200, **kwargs: Any) -> Any:
        resp = await self.client.request(method, path, headers=self.headers, **kwargs)
        body = await resp.json()
        assert resp.status == expect, (method, path, resp.status, body)
        return body

    async def status(self, sid: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.call("GET", f"/v1/services/{sid}/status")
        return result

    async def until(self, sid: str, check: Callable[[dict[str, Any]], bool], what: str,
                    timeout: float = 30) -> dict[str, Any]:
        async def poll() -> dict[str, Any] | None:
            status = await self.status(sid)
            return status if check(status) else None

        result: dict[str, Any] = await eventually(poll, timeout=timeout, interval=0.1,
                                                  message=what)
        return result

    async def deploy(self, name: str, image: str, **extra: Any) -> str:
        body = {"name": name, "source": "image", "image": image, **extra}
        return str((await self.call("POST", "/v1/deployments", 201, json=body))["service_id"])

    async def numbers(self, sid: str) -> list[int]:
        resp = await self.client.get(f"/v1/services/{sid}/logs?tail=100000&stream=stdout",
                                     headers=self.headers)
        return [int(n) for n in re.findall(r" stdout line (\d+)$", await resp.text(), re.M)]


@pytest.fixture
async def agent(make_client: Callable[..., Any], dockerd: Dockerd,
                state_dir: Any) -> AsyncIterator[Agent]:
    client: Client = await make_client(
        docker={"host": dockerd.host, "ping_interval": 0.3, "retry_interval": 0.3,
                "stats_interval": 1.0},
        services={"startup_seconds": 0.2}, metrics={"interval": 0.5})
    try:
        yield Agent(client, bearer((await login(client))["access_token"]))
    finally:
        await client.close()
        if dockerd.process is not None:
            cleanup(state_dir, env=dockerd.env)


async def _http(port: int) -> bool:
    try:
        async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{port}/", timeout=aiohttp.ClientTimeout(total=2)) as resp:
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


def _running(status: dict[str, Any]) -> bool:
    return bool(status["state"] == "running")


async def test_engine_outage_gives_503_degrades_and_recovers(agent: Agent,
                                                             dockerd: Dockerd) -> None:
    """Stop the engine: Docker operations answer 503 runtime_unavailable, reads and other
    endpoints work, the instance is degraded. Start it again: the same containers are
    re-adopted and their logs continue without loss; a container whose process died
    meanwhile is replaced; a restart that failed meanwhile is retried."""
    image = "dployr-test/busybox:latest"
    ticker = await agent.deploy("ticker", image, run_cmd=TICKER, env={"TICK": "0.1"})
    web = await agent.deploy("web", image)
    fast = {"initial_delay": 0.2, "max_delay": 0.2, "jitter": 0}
    sleeper = await agent.deploy("sleeper", image, run_cmd="exec sleep 1000", restart=fast)
    slow = {"initial_delay": 6.0, "max_delay": 6.0, "jitter": 0}
    bouncer = await agent.deploy("bouncer", image, run_cmd="exec sleep 1000", restart=slow)
    before = {sid: await agent.until(sid, _running, f"{sid} to run")
              for sid in (ticker, web, sleeper, bouncer)}
    assert await eventually(lambda: _http(before[web]["listen_port"]), message="web answers")
    await eventually(lambda: _has_lines(agent, ticker, 5), message="ticker lines")

    # This engine's cgroups are not where the sampler's own cgroup reader looks: figures of
    # its containers can only come from Docker's stats.
    async def usage() -> dict[str, Any] | None:
        body: dict[str, Any] = await agent.call("GET", f"/v1/services/{ticker}/metrics")
        return body["usage"] if body["usage"] else None

    figures = await eventually(usage, timeout=30, message="Docker stats of the ticker")
    assert figures["rss_bytes"] > 0 and figures["threads"] >= 1

    # The bouncer's process dies: it waits 6 s in backoff, and its restart will come while
    # the engine is away.
    os.kill(before[bouncer]["pid"], signal.SIGKILL)
    await agent.until(bouncer, lambda s: s["state"] == "backoff", "bouncer in backoff")
    dockerd.stop()

    # The sleeper's process dies while the engine is away.
    os.kill(before[sleeper]["pid"], signal.SIGKILL)

    async def degraded() -> dict[str, Any] | None:
        body: dict[str, Any] = await agent.call("GET", "/v1/instances/self")
        return body if body["status"] == "degraded" else None

    instance = await eventually(degraded, timeout=20, message="a degraded instance")
    assert "runtime_unavailable" in {r["code"] for r in instance["reasons"]}
    refused = await agent.call("POST", f"/v1/services/{ticker}/restart", 503)
    assert refused["error"]["code"] == "runtime_unavailable"
    assert dockerd.host in refused["error"]["message"]
    await agent.call("POST", f"/v1/services/{ticker}/stop", 503)
    await agent.call("POST", "/v1/deployments", 503,
                     json={"name": "late", "source": "image", "image": image})
    await agent.call("DELETE", "/v1/deployments/web", 503)
    listed = await agent.call("GET", "/v1/services")
    assert len(listed["data"]) == 4
    assert (await agent.status(ticker))["state"] == "running"
    await agent.call("GET", "/v1/projects")
    await agent.call("POST", "/v1/projects", 201, json={"name": "still-works"})
    failed = await agent.until(bouncer, lambda s: s["state"] == "failed",
                               "the bouncer's restart to fail", timeout=20)
    assert "Docker engine" in " ".join(failed["last_exit"]["stderr_tail"])
    outage_last = (await agent.numbers(ticker))[-1]

    dockerd.start()

    async def healthy() -> bool:
        return bool((await agent.call("GET", "/v1/instances/self"))["status"] == "healthy")

    await eventually(healthy, timeout=30, message="the instance to recover")
    after_ticker = await agent.until(ticker, _running, "ticker")
    assert after_ticker["container_id"] == before[ticker]["container_id"]
    started = inspect(after_ticker["container_id"], env=dockerd.env)["State"]["StartedAt"]
    assert started == inspect(before[ticker]["container_id"], env=dockerd.env)["State"][
        "StartedAt"]
    await eventually(lambda: _has_lines(agent, ticker, outage_last + 20), timeout=30,
                     message="ticker lines after the outage")
    numbers = await agent.numbers(ticker)
    assert numbers == list(range(1, len(numbers) + 1)), "lines lost or doubled"

    assert (await agent.status(web))["container_id"] == before[web]["container_id"]
    assert await eventually(lambda: _http(before[web]["listen_port"]), timeout=30,
                            message="web answers again")

    replaced = await agent.until(sleeper, lambda s: _running(s) and s["container_id"] !=
                                 before[sleeper]["container_id"], "a new sleeper container")
    assert replaced["last_exit"]["signal"] == "SIGKILL"
    retried = await agent.until(bouncer, lambda s: _running(s) and s["container_id"] !=
                                before[bouncer]["container_id"], "the bouncer restarted")
    assert retried["desired_state"] == "running"
    await agent.call("POST", f"/v1/services/{ticker}/restart?wait=true")


async def _has_lines(agent: Agent, sid: str, count: int) -> bool:
    numbers = await agent.numbers(sid)
    return bool(numbers) and numbers[-1] >= count
