"""Delivery behaviour against real receivers: retries on a fake clock, Retry-After, 410, 3xx,
timeouts, capped reads, one slow target not delaying another, interrupted attempts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from email.utils import format_datetime
from typing import Any

import pytest
from aiohttp import web

from agent.keys import DB_KEY, WEBHOOK_RUNTIME_KEY
from agent.testing import FakeClock
from agent.timefmt import from_epoch
from tests.conftest import Client, bearer, login
from tests.support.agent import eventually
from tests.support.webhooks import Receiver, Reply

Headers = dict[str, str]
MakeClient = Callable[..., Any]


async def _setup(make_client: MakeClient, aiohttp_server: Any, *, clock: FakeClock | None = None,
                 **webhooks: Any) -> tuple[Client, Headers, Receiver]:
    receiver = Receiver(fresh_timestamps=clock is None)
    await aiohttp_server(receiver.app(), port=receiver.port)
    client: Client = await make_client(clock=clock,
                                       webhooks={"allow_private_targets": True, **webhooks})
    return client, bearer((await login(client))["access_token"]), receiver


async def _hook(client: Client, headers: Headers, receiver: Receiver, path: str,
                events: list[str] | None = None) -> str:
    resp = await client.post("/v1/webhooks", headers=headers,
                             json={"url": receiver.url(path), "events": events or ["*"]})
    assert resp.status == 201, await resp.text()
    hook = await resp.json()
    receiver.expect(path, hook["secret"])
    return str(hook["id"])


async def _emit(client: Client, event_type: str = "service.crashed", **data: Any) -> str:
    event = await client.app[DB_KEY].write(lambda tx: tx.emit(event_type, dict(data)))
    return event.id


async def _deliveries(client: Client, headers: Headers, hook_id: str) -> list[dict[str, Any]]:
    resp = await client.get(f"/v1/webhooks/{hook_id}/deliveries?limit=500", headers=headers)
    assert resp.status == 200, await resp.text()
    data: list[dict[str, Any]] = (await resp.json())["data"]
    return data


async def _attempts_done(client: Client, headers: Headers, hook_id: str,
                         count: int) -> dict[str, Any]:
    """Wait until the hook's only delivery has ``count`` finished attempts; return it."""

    async def check() -> dict[str, Any] | None:
        found = await _deliveries(client, headers, hook_id)
        if not found:
            return None
        log = [a for a in found[0]["attempt_log"] if a["outcome"] != "in_progress"]
        return found[0] if len(log) >= count else None

    return await eventually(check, message=f"{count} finished attempts")


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


async def test_retry_schedule_on_a_fake_clock(make_client: MakeClient, aiohttp_server: Any) -> None:
    """Failed attempts are retried after 10 s, 30 s, 90 s (+-20 % jitter), the same webhook-id
    every time; a success ends it, and a target that always fails is given up after
    max_attempts."""
    clock = FakeClock()
    client, headers, receiver = await _setup(make_client, aiohttp_server, clock=clock,
                                             max_attempts=4)
    worker = client.app[WEBHOOK_RUNTIME_KEY].worker
    flaky = await _hook(client, headers, receiver, "/flaky")
    dead = await _hook(client, headers, receiver, "/dead")
    receiver.script("/flaky", Reply(500), Reply(503), Reply(500))
    receiver.script("/dead", default=Reply(500))
    event_id = await _emit(client, service="web")
    for number, nominal in ((1, 10.0), (2, 30.0), (3, 90.0)):
        for hook_id in (flaky, dead):
            delivery = await _attempts_done(client, headers, hook_id, number)
            attempt = delivery["attempt_log"][number - 1]
            assert attempt["outcome"] == "failed" and delivery["status"] == "pending"
            wait = _epoch(attempt["next_attempt_at"]) - clock.time()
            assert 0.8 * nominal <= wait <= 1.2 * nominal, (number, wait)
        clock.advance(1.2 * nominal + 0.001)
        worker.kick()
    done = await _attempts_done(client, headers, flaky, 4)
    assert done["status"] == "succeeded" and done["attempts"] == 4
    failed = await _attempts_done(client, headers, dead, 4)
    assert failed["status"] == "failed" and failed["next_attempt_at"] is None
    assert failed["attempt_log"][-1]["next_attempt_at"] is None
    for path in ("/flaky", "/dead"):
        got = receiver.at(path)
        assert [r.attempt for r in got] == [1, 2, 3, 4]
        assert {r.msg_id for r in got} == {event_id} and all(r.verified for r in got)


@pytest.mark.parametrize("form", ["seconds", "http-date"])
async def test_retry_after_is_honoured(make_client: MakeClient, aiohttp_server: Any,
                                       form: str) -> None:
    """A 429 with Retry-After (seconds or HTTP date) is not retried before that time, even
    though the backoff alone would retry after about 10 s."""
    clock = FakeClock()
    client, headers, receiver = await _setup(make_client, aiohttp_server, clock=clock)
    worker = client.app[WEBHOOK_RUNTIME_KEY].worker
    hook = await _hook(client, headers, receiver, "/busy")
    value = "120" if form == "seconds" else format_datetime(from_epoch(clock.time() + 120),
                                                            usegmt=True)
    receiver.script("/busy", Reply(429, headers={"Retry-After": value}))
    await _emit(client)
    first = await _attempts_done(client, headers, hook, 1)
    assert first["attempt_log"][0]["status_code"] == 429
    assert _epoch(first["next_attempt_at"]) >= clock.time() + 119
    start = clock.time()
    clock.advance(60)  # past any backoff, before Retry-After
    rounds = worker.rounds
    worker.kick()
    await eventually(lambda: _true(worker.rounds > rounds), message="a scheduling round")
    clock.advance(61)
    worker.kick()
    second = await _attempts_done(client, headers, hook, 2)
    assert second["status"] == "succeeded"
    assert _epoch(second["attempt_log"][1]["started_at"]) >= start + 120


async def _true(value: bool) -> bool:
    return value


async def test_410_disables_the_hook(make_client: MakeClient, aiohttp_server: Any) -> None:
    """A 410 Gone fails the delivery, disables the hook with a reason, cancels what was
    pending for it, and nothing more is sent to it."""
    client, headers, receiver = await _setup(make_client, aiohttp_server, per_hook_concurrency=1)
    hook = await _hook(client, headers, receiver, "/gone")
    gate = asyncio.Event()
    receiver.script("/gone", Reply(410, gate=gate), default=Reply(200))
    await _emit(client)
    await eventually(lambda: _true(len(receiver.at("/gone")) == 1), message="the first attempt")
    await _emit(client)  # waits behind the first (one attempt per hook at a time)
    await eventually(lambda: _deliveries_count(client, headers, hook, 2), message="2 deliveries")
    gate.set()

    async def disabled() -> dict[str, Any] | None:
        shown = await (await client.get(f"/v1/webhooks/{hook}", headers=headers)).json()
        return shown if not shown["enabled"] else None

    shown = await eventually(disabled, message="the hook to be disabled")
    assert "410" in shown["disabled_reason"]
    states = [d["status"] for d in await _deliveries(client, headers, hook)]
    assert states == ["failed", "cancelled"]
    await _emit(client)
    resp = await client.post(f"/v1/webhooks/{hook}/test", headers=headers)
    assert resp.status == 409
    assert len(receiver.at("/gone")) == 1 and len(await _deliveries(client, headers, hook)) == 2


async def _deliveries_count(client: Client, headers: Headers, hook: str, n: int) -> bool:
    return len(await _deliveries(client, headers, hook)) == n


async def test_redirects_are_not_followed(make_client: MakeClient, aiohttp_server: Any) -> None:
    """A 3xx counts as a failed attempt; the Location is never requested."""
    client, headers, receiver = await _setup(make_client, aiohttp_server)
    hook = await _hook(client, headers, receiver, "/moved")
    receiver.script("/moved", default=Reply(307, headers={"Location": receiver.url("/elsewhere")}))
    await _emit(client)
    delivery = await _attempts_done(client, headers, hook, 1)
    attempt = delivery["attempt_log"][0]
    assert attempt["outcome"] == "failed" and attempt["status_code"] == 307
    assert "redirects are not followed" in attempt["error"]
    assert delivery["status"] == "pending"
    assert receiver.at("/elsewhere") == []


async def test_timeout_and_capped_read(make_client: MakeClient, aiohttp_server: Any) -> None:
    """A target slower than the timeout fails with 'timed out'; an endless 200 response is a
    success after reading only max_response_bytes."""
    client, headers, receiver = await _setup(make_client, aiohttp_server, timeout=0.5,
                                             max_response_bytes=4096)
    slow = await _hook(client, headers, receiver, "/slow")
    receiver.script("/slow", default=Reply(200, delay=5))
    endless_server = await aiohttp_server(_endless_app())
    resp = await client.post("/v1/webhooks", headers=headers, json={
        "url": f"http://127.0.0.1:{endless_server.port}/stream", "events": ["*"]})
    endless = (await resp.json())["id"]
    await _emit(client)
    timed_out = (await _attempts_done(client, headers, slow, 1))["attempt_log"][0]
    assert timed_out["outcome"] == "failed" and timed_out["error"] == "timed out after 0.5 s"
    streamed = (await _attempts_done(client, headers, endless, 1))["attempt_log"][0]
    assert streamed["outcome"] == "succeeded" and streamed["status_code"] == 200
    assert streamed["response_excerpt"] == "x" * 512


def _endless_app() -> web.Application:
    async def stream(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse()
        await resp.prepare(request)
        while True:  # until the agent hangs up
            await resp.write(b"x" * 65536)
            await asyncio.sleep(0)

    app = web.Application()
    app.router.add_post("/stream", stream)
    return app


async def test_slow_target_does_not_delay_others(make_client: MakeClient,
                                                 aiohttp_server: Any) -> None:
    """While one target hangs on every request, another hook gets all its deliveries; the
    hanging one holds at most per_hook_concurrency requests and gets the rest once it answers."""
    client, headers, receiver = await _setup(make_client, aiohttp_server, concurrency=3,
                                             per_hook_concurrency=2)
    gate = asyncio.Event()
    slow = await _hook(client, headers, receiver, "/slow")
    await _hook(client, headers, receiver, "/fast")
    receiver.script("/slow", default=Reply(200, gate=gate))
    ids = [await _emit(client, n=n) for n in range(6)]
    await eventually(lambda: _true(len(receiver.verified_ids("/fast")) == 6),
                     message="the fast hook to get all six")
    assert len(receiver.at("/slow")) == 2  # its two slots, both still hanging
    gate.set()
    await eventually(lambda: _true(len(receiver.verified_ids("/slow")) == 6),
                     message="the slow hook to catch up")
    assert sorted(receiver.verified_ids("/slow")) == sorted(ids)
    assert {d["status"] for d in await _deliveries(client, headers, slow)} == {"succeeded"}


async def test_attempt_cut_short_is_retried_and_counted(make_client: MakeClient,
                                                        aiohttp_server: Any) -> None:
    """An agent stopped mid-attempt retries at its next start; the delivery counts the
    interrupted attempt (a possible duplicate) and its log says so."""
    receiver = Receiver()
    await aiohttp_server(receiver.app(), port=receiver.port)
    gate = asyncio.Event()
    receiver.script("/cut", Reply(200, gate=gate))
    first: Client = await make_client(webhooks={"allow_private_targets": True})
    headers = bearer((await login(first))["access_token"])
    hook = await _hook(first, headers, receiver, "/cut")
    event_id = await _emit(first)
    await eventually(lambda: _true(len(receiver.at("/cut")) == 1), message="the first attempt")
    await first.close()  # the attempt is still hanging on the gate
    gate.set()
    second: Client = await make_client(webhooks={"allow_private_targets": True})
    headers = bearer((await login(second))["access_token"])

    async def redelivered() -> dict[str, Any] | None:
        found = await _deliveries(second, headers, hook)
        return found[0] if found and found[0]["status"] == "succeeded" else None

    delivery = await eventually(redelivered, message="the retry after restart")
    assert delivery["interrupted"] == 1 and delivery["attempts"] == 2
    assert [a["outcome"] for a in delivery["attempt_log"]] == ["interrupted", "succeeded"]
    assert [r.msg_id for r in receiver.at("/cut")] == [event_id, event_id]


async def test_disabling_cancels_pending(make_client: MakeClient, aiohttp_server: Any) -> None:
    """A hook disabled by a user gets nothing more: its pending retries are cancelled."""
    clock = FakeClock()
    client, headers, receiver = await _setup(make_client, aiohttp_server, clock=clock)
    hook = await _hook(client, headers, receiver, "/off")
    receiver.script("/off", default=Reply(500))
    await _emit(client)
    await _attempts_done(client, headers, hook, 1)
    resp = await client.patch(f"/v1/webhooks/{hook}", headers=headers, json={"enabled": False})
    assert resp.status == 200
    [delivery] = await _deliveries(client, headers, hook)
    assert delivery["status"] == "cancelled" and "disabled" in delivery["last_error"]
    clock.advance(3600)
    worker = client.app[WEBHOOK_RUNTIME_KEY].worker
    rounds = worker.rounds
    worker.kick()
    await eventually(lambda: _true(worker.rounds > rounds), message="a scheduling round")
    assert len(receiver.at("/off")) == 1


async def test_shutdown_mid_burst_then_restart_loses_nothing(make_client: MakeClient,
                                                             aiohttp_server: Any) -> None:
    """Stopping the agent while a burst is being delivered finishes (no hang), and the next
    start delivers the rest: every event arrives, verified."""
    receiver = Receiver()
    await aiohttp_server(receiver.app(), port=receiver.port)
    first: Client = await make_client(webhooks={"allow_private_targets": True})
    headers = bearer((await login(first))["access_token"])
    for path in ("/a", "/b"):
        await _hook(first, headers, receiver, path)
    db = first.app[DB_KEY]

    def burst(tx: Any) -> list[str]:
        return [tx.emit("route.created", {"n": n}).id for n in range(150)]

    ids = await db.write(burst)
    await eventually(lambda: _true(len(receiver.at("/a")) >= 10), message="the burst to start")
    async with asyncio.timeout(60):  # a hang guard, not a timing assertion
        await first.close()
    await make_client(webhooks={"allow_private_targets": True})
    for path in ("/a", "/b"):
        await eventually(lambda path=path: _true(set(ids) <= set(receiver.verified_ids(path))),
                         timeout=30, message=f"every event at {path}")
