"""The control-plane link against a control plane written here: hello and numbered updates,
tasks relayed through the agent's own auth, reconnects that lose no result or event,
duplicate task ids, heartbeats, TLS verification, and tokens kept out of the logs."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
import trustme
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient

from agent.app import AdminSeed, create_app
from agent.keys import DB_KEY, UPSTREAM_KEY
from tests.conftest import Client, bearer, login
from tests.support.agent import ADMIN_EMAIL, ADMIN_PASSWORD, eventually, free_port, make_config
from tests.support.controlplane import ControlPlane

Factory = Callable[..., Awaitable[TestClient]]


class Gate:
    """A route /v1/test/slow that hangs until opened: a long task."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.entered = 0

    async def handler(self, _request: web.Request) -> web.Response:
        self.entered += 1
        await self.open.wait()
        return web.json_response({"slow": "done"})


@pytest.fixture
async def control_plane(aiohttp_server: Any) -> ControlPlane:
    cp = ControlPlane()
    await aiohttp_server(cp.app(), port=cp.port)
    return cp


@pytest.fixture
def agent_factory(control_plane: ControlPlane, aiohttp_client: Any, state_dir: Path) -> Factory:
    """Start an in-process agent whose [upstream] points at the test control plane and whose
    listener is on the port its config names (tasks are replayed there). Agents are torn down
    before the control plane."""
    port = free_port()

    async def start(gate: Gate | None = None, url: str | None = None,
                    before_start: Callable[[web.Application], None] | None = None,
                    sections: dict[str, dict[str, Any]] | None = None,
                    **upstream: Any) -> TestClient:
        settings = {"url": url or control_plane.url, "token": control_plane.token,
                    "update_interval": 0.2, "reconnect_min_delay": 0.05,
                    "reconnect_max_delay": 0.2, **upstream}
        config = make_config(state_dir, server={"listen": f"127.0.0.1:{port}"},
                             upstream=settings, **(sections or {}))
        app = create_app(config, admin=AdminSeed(ADMIN_EMAIL, ADMIN_PASSWORD))
        if gate is not None:
            app.router.add_get("/v1/test/slow", gate.handler)
        if before_start is not None:
            before_start(app)
        client: TestClient = await aiohttp_client(app, server_kwargs={"port": port})
        return client

    return start


async def _until(predicate: Callable[[], Any], message: str, timeout: float = 10.0) -> Any:
    async def check() -> Any:
        return predicate()

    return await eventually(check, message=message, timeout=timeout)


async def _user(client: Client, admin: dict[str, str], email: str, role: str) -> str:
    resp = await client.post("/v1/users", headers=admin,
                             json={"email": email, "password": "password-1", "role": role})
    assert resp.status == 201, await resp.text()
    return str((await login(client, email, "password-1"))["access_token"])


async def test_hello_and_numbered_updates(agent_factory: Factory,
                                          control_plane: ControlPlane) -> None:
    """The agent connects with its token, says hello (instance id, version, capabilities) and
    sends updates numbered 1, 2, 3 with status, services and a metrics summary."""
    client = await agent_factory()
    await _until(lambda: len(control_plane.received("update")) >= 3, "three updates")
    conn = control_plane.current
    hello = conn.received[0]
    assert hello["type"] == "hello" and hello["protocol"] == 1
    row = client.app[DB_KEY].query_one("SELECT value FROM meta WHERE key = 'instance_id'")
    assert row is not None and hello["instance_id"] == row[0]
    assert hello["version"] and set(hello["capabilities"]) >= {"tasks", "events", "updates"}
    updates = conn.of_type("update")
    assert [u["seq"] for u in updates[:3]] == [1, 2, 3]
    first = updates[0]
    assert first["status"]["state"] == "running" and first["status"]["uptime_seconds"] >= 0
    assert first["services"] == []
    assert 0 <= first["metrics"]["memory_used_percent"] <= 100
    assert first["metrics"]["disk_total_bytes"] > 0
    assert control_plane.refused_handshakes == 0


async def test_wrong_upstream_token_is_refused_and_retried(agent_factory: Factory,
                                                           control_plane: ControlPlane) -> None:
    """A control plane refusing the agent's token sees it retry with backoff, never connected."""
    client = await agent_factory(token="not-the-token")
    await _until(lambda: control_plane.refused_handshakes >= 3, "three refused handshakes")
    assert control_plane.connections == []
    assert "401" in (client.app[UPSTREAM_KEY].last_error or "")


async def test_injected_providers_are_reported(agent_factory: Factory,
                                               control_plane: ControlPlane) -> None:
    """Providers set on the link before start feed the updates; a failing one is reported as
    an error for its part only."""

    async def services() -> list[dict[str, Any]]:
        return [{"name": "web", "state": "running"}]

    async def broken() -> dict[str, Any]:
        raise RuntimeError("sampler down")

    def wire(app: web.Application) -> None:
        link = app[UPSTREAM_KEY]
        link.providers = dataclasses.replace(link.providers, services=services, metrics=broken)

    await agent_factory(before_start=wire)
    update = await _until(lambda: control_plane.received("update"), "an update")
    assert update[0]["services"] == [{"name": "web", "state": "running"}]
    assert update[0]["metrics"] == {"error": "metrics unavailable (RuntimeError)"}


async def test_tasks_go_through_auth_validation_and_rate_limits(
        agent_factory: Factory, control_plane: ControlPlane) -> None:
    """Tasks carry the caller's token: admin may create, a viewer gets 403, a bad or missing
    token 401, a bad body 400 naming the field, a bad path or method 400, and the caller's
    rate limit applies (429 with Retry-After)."""
    client = await agent_factory(sections={"ratelimit": {"authenticated_per_hour": 5}})
    admin = bearer((await login(client))["access_token"])
    viewer = await _user(client, admin, "viewer@example.com", "viewer")
    limited = await _user(client, admin, "limited@example.com", "viewer")
    await _until(lambda: control_plane.connections, "the connection")
    admin_token = admin["Authorization"].split()[1]
    await control_plane.task("t-admin", "POST", "/v1/projects", token=admin_token,
                             body={"name": "from-control-plane"})
    await control_plane.task("t-viewer", "POST", "/v1/projects", token=viewer,
                             body={"name": "nope"})
    await control_plane.task("t-bad", "GET", "/v1/projects", token="garbage")
    await control_plane.task("t-none", "GET", "/v1/projects")
    await control_plane.task("t-invalid", "POST", "/v1/projects", token=admin_token,
                             body={"name": "Not A Label!"})
    await control_plane.task("t-path", "GET", "/etc/passwd", token=admin_token)
    await control_plane.task("t-method", "TRACE", "/v1/projects", token=admin_token)
    for n in range(6):
        await control_plane.task(f"t-rate-{n}", "GET", "/v1/projects", token=limited)
    ids = ["t-admin", "t-viewer", "t-bad", "t-none", "t-invalid", "t-path", "t-method",
           *(f"t-rate-{n}" for n in range(6))]
    await _until(lambda: all(control_plane.responses(i) for i in ids), "every task response")
    got = {i: control_plane.responses(i)[0] for i in ids}
    assert got["t-admin"]["status"] == 201
    assert got["t-admin"]["body"]["name"] == "from-control-plane"
    assert got["t-admin"]["headers"]["X-RateLimit-Limit"] == "5"
    assert got["t-viewer"]["status"] == 403
    assert got["t-viewer"]["body"]["error"]["code"] == "forbidden"
    assert got["t-bad"]["status"] == 401 and got["t-none"]["status"] == 401
    assert got["t-invalid"]["status"] == 400
    assert got["t-invalid"]["body"]["error"]["details"]["field"] == "name"
    assert got["t-path"]["status"] == 400 and got["t-method"]["status"] == 400
    rates = [got[f"t-rate-{n}"] for n in range(6)]
    assert sorted(r["status"] for r in rates) == [200, 200, 200, 200, 200, 429]
    assert next(r for r in rates if r["status"] == 429)["headers"]["Retry-After"]
    resp = await client.get("/v1/projects", headers=admin)
    assert [p["name"] for p in (await resp.json())["data"]] == ["from-control-plane"]


async def test_long_task_does_not_block_the_link(agent_factory: Factory,
                                                 control_plane: ControlPlane) -> None:
    """While a slow task runs, a later quick task is answered and updates keep flowing."""
    gate = Gate()
    await agent_factory(gate=gate)
    await _until(lambda: control_plane.connections, "the connection")
    await control_plane.task("slow", "GET", "/v1/test/slow")
    await _until(lambda: gate.entered == 1, "the slow task to start")
    await control_plane.task("quick", "GET", "/v1/health")
    updates_before = len(control_plane.received("update"))
    await _until(lambda: control_plane.responses("quick"), "the quick answer")
    await _until(lambda: len(control_plane.received("update")) > updates_before + 1,
                 "updates while the slow task runs")
    assert control_plane.responses("slow") == []
    gate.open.set()
    slow = await _until(lambda: control_plane.responses("slow"), "the slow answer")
    assert slow[0]["status"] == 200 and slow[0]["body"] == {"slow": "done"}


async def test_result_finished_while_disconnected_is_sent_after_reconnect(
        agent_factory: Factory, control_plane: ControlPlane) -> None:
    """A task that finishes while the link is down is answered on the next connection, and
    once acknowledged it is not sent again."""
    gate = Gate()
    client = await agent_factory(gate=gate)
    db = client.app[DB_KEY]
    await _until(lambda: control_plane.connections, "the connection")
    await control_plane.task("offline", "GET", "/v1/test/slow")
    await _until(lambda: gate.entered == 1, "the task to start")
    control_plane.accepting = False
    await control_plane.drop()
    gate.open.set()
    await _until(lambda: db.query_one("SELECT 1 FROM upstream_tasks WHERE id = 'offline'"
                                      " AND state = 'done'"), "the task to finish offline")
    await _until(lambda: control_plane.refused_handshakes >= 1, "a refused reconnect")
    assert control_plane.responses("offline") == []
    control_plane.accepting = True
    await _until(lambda: control_plane.responses("offline"), "the answer after reconnecting")
    assert control_plane.current.number == 2
    assert control_plane.current.of_type("task_response")[0]["body"] == {"slow": "done"}
    await _until(lambda: db.query_one("SELECT 1 FROM upstream_tasks WHERE id = 'offline'"
                                      " AND acked_at IS NOT NULL"), "the ack to be stored")
    await control_plane.drop()
    await _until(lambda: len(control_plane.connections) == 3
                 and control_plane.current.of_type("update"), "a third connection's update")
    assert control_plane.current.of_type("task_response") == []


async def test_duplicate_task_id_is_not_run_twice(agent_factory: Factory,
                                                  control_plane: ControlPlane) -> None:
    """A repeated task id is never run again: while it runs the repeat is ignored, before its
    ack the stored answer is re-sent, after it (and after an agent restart) the control plane
    gets a duplicate_task error."""
    control_plane.ack_tasks = False
    client = await agent_factory()
    admin = bearer((await login(client))["access_token"])
    token = admin["Authorization"].split()[1]
    await _until(lambda: control_plane.connections, "the connection")
    for _ in range(2):  # the second arrives while the first runs: ignored
        await control_plane.task("dup-1", "POST", "/v1/projects", token=token,
                                 body={"name": "only-once"})
    await _until(lambda: control_plane.responses("dup-1"), "the answer")
    await control_plane.task("dup-1", "POST", "/v1/projects", token=token,
                             body={"name": "only-once"})
    await _until(lambda: len(control_plane.responses("dup-1")) == 2, "the stored answer again")
    assert [r["status"] for r in control_plane.responses("dup-1")] == [201, 201]
    await control_plane.send({"type": "task_ack", "ids": ["dup-1"]})
    db = client.app[DB_KEY]
    await _until(lambda: db.query_one("SELECT 1 FROM upstream_tasks WHERE id = 'dup-1'"
                                      " AND acked_at IS NOT NULL"), "the ack")
    await control_plane.task("dup-1", "POST", "/v1/projects", token=token,
                             body={"name": "only-once"})
    errors = await _until(lambda: control_plane.received("error"), "a duplicate_task error")
    assert errors[0]["code"] == "duplicate_task" and errors[0]["ref"] == "dup-1"
    await client.close()

    again = await agent_factory()
    await _until(lambda: len(control_plane.connections) == 2, "the restarted agent")
    await control_plane.task("dup-1", "POST", "/v1/projects", token=token,
                             body={"name": "only-once"})
    await _until(lambda: len(control_plane.received("error")) == 2, "a second duplicate error")
    resp = await again.get("/v1/projects", headers=admin)
    assert [p["name"] for p in (await resp.json())["data"]] == ["only-once"]
    assert len(control_plane.responses("dup-1")) == 2


async def test_task_running_at_shutdown_is_answered_as_interrupted(
        agent_factory: Factory, control_plane: ControlPlane) -> None:
    """A task cut short by the agent stopping is answered 503 task_interrupted at the next
    start, not re-run."""
    gate = Gate()
    first = await agent_factory(gate=gate)
    await _until(lambda: control_plane.connections, "the connection")
    await control_plane.task("cut", "GET", "/v1/test/slow")
    await _until(lambda: gate.entered == 1, "the task to start")
    closing = asyncio.create_task(first.close())
    await _until(lambda: first.app[UPSTREAM_KEY].runner.running == 0, "the link to stop")
    gate.open.set()  # the server waits for its in-flight request before it stops
    await closing
    second_gate = Gate()
    await agent_factory(gate=second_gate)
    answer = await _until(lambda: control_plane.responses("cut"), "the interrupted answer")
    assert answer[0]["status"] == 503
    assert answer[0]["body"]["error"]["code"] == "task_interrupted"
    assert second_gate.entered == 0


async def test_events_survive_reconnects(agent_factory: Factory,
                                         control_plane: ControlPlane) -> None:
    """Events are sent as they happen; those not acknowledged when the link drops, and those
    emitted while it is down, arrive on the next connection in order: none is lost."""
    client = await agent_factory()
    db = client.app[DB_KEY]
    await _until(lambda: control_plane.connections, "the connection")
    emitted = []
    for n in range(3):
        emitted.append(await db.write(lambda tx, n=n: tx.emit("service.started", {"n": n})))
    await _until(lambda: len(control_plane.received("event")) == 3, "three events")
    first = control_plane.received("event")
    assert [e["event"]["id"] for e in first] == [e.id for e in emitted]
    assert first[0]["event"]["type"] == "service.started" and first[0]["event"]["data"] == {"n": 0}
    await _until(lambda: db.query_one("SELECT 1 FROM consumer_cursors WHERE name = 'upstream'"
                                      " AND last_seq = ?", (emitted[-1].seq,)), "the acks")
    control_plane.ack_events = False
    for n in range(3, 5):
        emitted.append(await db.write(lambda tx, n=n: tx.emit("service.stopped", {"n": n})))
    await _until(lambda: len(control_plane.received("event")) == 5, "two unacked events")
    control_plane.accepting = False
    await control_plane.drop()
    for n in range(5, 7):
        emitted.append(await db.write(lambda tx, n=n: tx.emit("service.crashed", {"n": n})))
    control_plane.ack_events = True
    control_plane.accepting = True
    await _until(lambda: len(control_plane.connections) == 2
                 and len(control_plane.current.of_type("event")) == 4, "the rest")
    second = control_plane.current
    assert second.received[0]["last_event_seq"] == emitted[2].seq
    assert [e["event"]["id"] for e in second.of_type("event")] == [e.id for e in emitted[3:]]
    assert {e["event"]["id"] for e in control_plane.received("event")} == {e.id for e in emitted}


async def test_heartbeat_detects_a_silent_control_plane(agent_factory: Factory,
                                                        aiohttp_server: Any) -> None:
    """A control plane that stops answering pings is dropped and reconnected to."""
    pings = 0
    connections = 0

    async def silent(request: web.Request) -> web.WebSocketResponse:
        nonlocal pings, connections
        connections += 1
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.PING:
                pings += 1  # and no pong
        return ws

    app = web.Application()
    app.router.add_get("/agent", silent)
    server = await aiohttp_server(app)
    await agent_factory(url=f"ws://127.0.0.1:{server.port}/agent", heartbeat=0.2)
    await _until(lambda: connections >= 2, "a reconnect after missed pongs")
    assert pings >= 1


async def test_tls_is_verified(agent_factory: Factory, aiohttp_server: Any, tmp_path: Path,
                               control_plane: ControlPlane) -> None:
    """Over wss the control plane's certificate is verified: trusted through ca_file the link
    comes up; without it the handshake is refused and the reason recorded."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    secure = ControlPlane(token=control_plane.token)
    await aiohttp_server(secure.app(), port=secure.port, ssl=server_ctx)
    url = f"wss://localhost:{secure.port}/agent"

    untrusting = await agent_factory(url=url)
    link = untrusting.app[UPSTREAM_KEY]
    await _until(lambda: "Certificate" in (link.last_error or ""), "a certificate failure")
    assert secure.connections == []
    await untrusting.close()

    await agent_factory(url=url, ca_file=str(ca_file))
    hello = await _until(lambda: secure.received("hello"), "hello over TLS")
    assert hello[0]["protocol"] == 1


async def test_tokens_never_reach_the_logs(agent_factory: Factory,
                                           control_plane: ControlPlane) -> None:
    """Neither the upstream token nor a caller's token relayed in a task is logged."""
    with structlog.testing.capture_logs() as logs:
        client = await agent_factory()
        token = (await login(client))["access_token"]
        await _until(lambda: control_plane.connections, "the connection")
        await control_plane.task("logged", "GET", "/v1/projects", token=token)
        await _until(lambda: control_plane.responses("logged"), "the answer")
        await control_plane.drop()
        await _until(lambda: len(control_plane.connections) == 2, "a reconnect")
    text = repr(logs)
    assert "upstream_connected" in text and "upstream_task_done" in text
    assert control_plane.token not in text and token not in text
