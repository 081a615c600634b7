"""The webhooks resource: create, read, change, delete, ping, delivery log, access rules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from agent.events import EVENT_TYPES
from agent.keys import DB_KEY
from tests.conftest import Client, bearer, login
from tests.support.agent import eventually
from tests.support.webhooks import Receiver

Headers = dict[str, str]


@pytest.fixture
async def receiver(aiohttp_server: Any) -> Receiver:
    """A real receiver on 127.0.0.1 verifying deliveries with the standardwebhooks library."""
    rec = Receiver()
    await aiohttp_server(rec.app(), port=rec.port)
    return rec


@pytest.fixture
async def private_client(make_client: Callable[..., Any]) -> Client:
    """An agent that may deliver to 127.0.0.1 (where the test receivers listen)."""
    client: Client = await make_client(webhooks={"allow_private_targets": True})
    return client


async def _admin(client: Client) -> Headers:
    return bearer((await login(client))["access_token"])


async def _create(client: Client, headers: Headers, **body: Any) -> dict[str, Any]:
    resp = await client.post("/v1/webhooks", json=body, headers=headers)
    assert resp.status == 201, await resp.text()
    created: dict[str, Any] = await resp.json()
    return created


async def test_create_returns_generated_secret_once(client: Client, admin_headers: Headers) -> None:
    """Without a secret one is generated (whsec_ form), shown in the POST response only."""
    created = await _create(client, admin_headers, url="https://example.com/webhook",
                            events=["deployment.created", "deployment.failed"])
    assert created["secret"].startswith("whsec_") and created["enabled"] is True
    assert created["events"] == ["deployment.created", "deployment.failed"]
    resp = await client.get(f"/v1/webhooks/{created['id']}", headers=admin_headers)
    shown = await resp.json()
    assert "secret" not in shown and created["secret"] not in await resp.text()
    assert shown["secret_hint"] == "whsec_..." + created["secret"][-4:]
    listed = await (await client.get("/v1/webhooks", headers=admin_headers)).json()
    assert [h["id"] for h in listed["data"]] == [created["id"]]
    assert created["secret"] not in str(listed)


async def test_seed_example_with_plain_secret(client: Client, admin_headers: Headers) -> None:
    """The seed's request body (a plain-string secret) is accepted and echoed once."""
    created = await _create(client, admin_headers, url="https://example.com/webhook",
                            events=["deployment.created", "deployment.failed"],
                            secret="webhook-secret")
    assert created["secret"] == "webhook-secret" and created["secret_hint"] == "..."


@pytest.mark.parametrize(("body", "field", "needle"), [
    ({"url": "https://example.com/h", "events": ["deployment.created", "deploy.nope"]},
     "events[1]", "deploy.nope"),
    ({"url": "https://example.com/h", "events": []}, "events", "at least 1"),
    ({"url": "ftp://example.com/h", "events": ["*"]}, "url", "http or https"),
    ({"url": "http://127.0.0.1:9/h", "events": ["*"]}, "url", "loopback"),
    ({"url": "http://169.254.169.254/latest", "events": ["*"]}, "url", "metadata"),
    ({"url": "http://2130706433/", "events": ["*"]}, "url", "canonical"),
    ({"url": "https://example.com/h", "events": ["*"], "secret": "short"}, "secret", "8 to 256"),
    ({"url": "https://example.com/h", "events": ["*"], "secret": "whsec_%%%"}, "secret", "base64"),
    ({"url": "https://example.com/h", "events": ["*"], "secret": "whsec_AAAA"}, "secret", "bytes"),
    ({"url": "https://example.com/h", "events": ["*"], "colour": "red"}, "colour", "Unknown"),
])
async def test_invalid_bodies_are_400_naming_the_field(client: Client, admin_headers: Headers,
                                                       body: dict[str, Any], field: str,
                                                       needle: str) -> None:
    """Bad events, URLs and secrets are refused with 400 naming the field and the problem."""
    resp = await client.post("/v1/webhooks", json=body, headers=admin_headers)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "invalid_request" and error["details"]["field"] == field
    assert needle in error["details"]["issue"]


async def test_star_subscribes_to_everything(client: Client, admin_headers: Headers) -> None:
    """'*' stands alone in the stored subscription; every EVENT_TYPES name is accepted."""
    star = await _create(client, admin_headers, url="https://example.com/a",
                         events=["service.started", "*"])
    assert star["events"] == ["*"]
    every = await _create(client, admin_headers, url="https://example.com/b",
                          events=sorted(EVENT_TYPES))
    assert every["events"] == sorted(EVENT_TYPES)


async def test_only_admins_may_see_or_change_webhooks(client: Client,
                                                      role_headers: dict[str, Headers]) -> None:
    """Developers and viewers get 403 on every webhook endpoint; no token gets 401."""
    hook = await _create(client, role_headers["admin"], url="https://example.com/h",
                         events=["*"])
    for role in ("developer", "viewer"):
        for method, path in (("GET", "/v1/webhooks"), ("POST", "/v1/webhooks"),
                             ("GET", f"/v1/webhooks/{hook['id']}"),
                             ("PATCH", f"/v1/webhooks/{hook['id']}"),
                             ("DELETE", f"/v1/webhooks/{hook['id']}"),
                             ("POST", f"/v1/webhooks/{hook['id']}/test"),
                             ("GET", f"/v1/webhooks/{hook['id']}/deliveries")):
            resp = await client.request(method, path, headers=role_headers[role], json={})
            assert resp.status == 403, (role, method, path)
    assert (await client.get("/v1/webhooks")).status == 401


async def test_patch_and_delete(client: Client, admin_headers: Headers) -> None:
    """PATCH changes url/events/enabled (and keeps the secret hidden); DELETE removes it."""
    hook = await _create(client, admin_headers, url="https://example.com/h", events=["*"])
    resp = await client.patch(f"/v1/webhooks/{hook['id']}", headers=admin_headers,
                              json={"url": "https://example.org/x", "events": ["route.created"],
                                    "enabled": False, "secret": "a-new-secret-value"})
    assert resp.status == 200, await resp.text()
    changed = await resp.json()
    assert changed["url"] == "https://example.org/x" and changed["events"] == ["route.created"]
    assert changed["enabled"] is False and changed["disabled_reason"] == "disabled by a user"
    assert "secret" not in changed
    resp = await client.patch(f"/v1/webhooks/{hook['id']}", headers=admin_headers,
                              json={"events": ["nope.nope"]})
    assert resp.status == 400
    assert (await client.delete(f"/v1/webhooks/{hook['id']}", headers=admin_headers)).status == 204
    assert (await client.get(f"/v1/webhooks/{hook['id']}", headers=admin_headers)).status == 404
    assert (await client.delete(f"/v1/webhooks/{hook['id']}", headers=admin_headers)).status == 404


async def test_ping_is_delivered_signed_and_logged(private_client: Client,
                                                   receiver: Receiver) -> None:
    """POST /test sends a webhook.ping that the standardwebhooks library verifies; the
    delivery log shows one successful attempt with its status code and duration."""
    headers = await _admin(private_client)
    hook = await _create(private_client, headers, url=receiver.url("/ping"),
                         events=["service.crashed"])
    receiver.expect("/ping", hook["secret"])
    resp = await private_client.post(f"/v1/webhooks/{hook['id']}/test", headers=headers)
    assert resp.status == 202, await resp.text()
    ping = await resp.json()

    async def delivered() -> list[str]:
        return receiver.verified_ids("/ping")

    assert await eventually(delivered, message="the ping") == [ping["event_id"]]
    got = receiver.at("/ping")[0]
    assert got.payload is not None and got.payload["type"] == "webhook.ping"
    assert got.payload["data"]["webhook_id"] == hook["id"]
    assert got.headers["dployr-event"] == "webhook.ping" and got.attempt == 1

    async def logged() -> dict[str, Any] | None:
        page = await (await private_client.get(f"/v1/webhooks/{hook['id']}/deliveries",
                                               headers=headers)).json()
        done = [d for d in page["data"] if d["status"] == "succeeded"]
        return done[0] if done else None

    delivery = await eventually(logged, message="the delivery log")
    assert delivery["event_id"] == ping["event_id"] and delivery["attempts"] == 1
    [attempt] = delivery["attempt_log"]
    assert attempt["outcome"] == "succeeded" and attempt["status_code"] == 200
    assert attempt["duration_ms"] >= 0 and attempt["error"] is None


async def test_ping_unknown_or_disabled_hook(client: Client, admin_headers: Headers) -> None:
    """Pinging an unknown hook is 404; a disabled one is 409."""
    assert (await client.post("/v1/webhooks/whk_nope/test", headers=admin_headers)).status == 404
    hook = await _create(client, admin_headers, url="https://example.com/h", events=["*"])
    await client.patch(f"/v1/webhooks/{hook['id']}", headers=admin_headers,
                       json={"enabled": False})
    resp = await client.post(f"/v1/webhooks/{hook['id']}/test", headers=admin_headers)
    assert resp.status == 409


async def test_events_fan_out_by_subscription(private_client: Client, receiver: Receiver) -> None:
    """Each hook receives exactly the subscribed events emitted after it was created."""
    headers = await _admin(private_client)
    db = private_client.app[DB_KEY]
    await db.write(lambda tx: tx.emit("service.started", {"service": "before"}))
    crashes = await _create(private_client, headers, url=receiver.url("/crashes"),
                            events=["service.crashed"])
    everything = await _create(private_client, headers, url=receiver.url("/all"), events=["*"])
    receiver.expect("/crashes", crashes["secret"])
    receiver.expect("/all", everything["secret"])
    started = await db.write(lambda tx: tx.emit("service.started", {"service": "web"}))
    crashed = await db.write(lambda tx: tx.emit("service.crashed",
                                                {"service": "web", "exit_code": 1}))

    async def all_in() -> bool:
        return len(receiver.verified_ids("/all")) == 2 and len(receiver.at("/crashes")) == 1

    await eventually(all_in, message="both hooks to get their events")
    assert sorted(receiver.verified_ids("/all")) == sorted([started.id, crashed.id])
    assert receiver.verified_ids("/crashes") == [crashed.id]
    body = receiver.at("/crashes")[0].payload
    assert body is not None and set(body) == {"type", "timestamp", "data"}
    assert body["data"] == {"service": "web", "exit_code": 1}
    assert body["timestamp"].endswith("Z")


async def test_deliveries_paginate(private_client: Client, receiver: Receiver) -> None:
    """The delivery log pages with limit and cursor, oldest first."""
    headers = await _admin(private_client)
    hook = await _create(private_client, headers, url=receiver.url("/p"), events=["*"])
    receiver.expect("/p", hook["secret"])
    db = private_client.app[DB_KEY]
    for n in range(5):
        await db.write(lambda tx, n=n: tx.emit("route.created", {"n": n}))

    async def five() -> bool:
        return len(receiver.verified_ids("/p")) == 5

    await eventually(five, message="five deliveries")
    path = f"/v1/webhooks/{hook['id']}/deliveries"
    first = await (await private_client.get(path + "?limit=2", headers=headers)).json()
    assert len(first["data"]) == 2 and first["next_cursor"] == first["data"][-1]["id"]
    rest = await (await private_client.get(f"{path}?limit=10&cursor={first['next_cursor']}",
                                           headers=headers)).json()
    assert len(rest["data"]) == 3 and rest["next_cursor"] is None
    ids = [d["id"] for d in first["data"] + rest["data"]]
    assert ids == sorted(ids)
    assert (await private_client.get("/v1/webhooks/whk_x/deliveries",
                                     headers=headers)).status == 404
