"""The SSRF guard end to end, with a canary listener on loopback: no form of the address
reaches it, and the attempt log says why."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent.clock import SystemClock
from agent.config import WebhooksConfig
from agent.webhooks.sender import Message, Sender
from tests.conftest import Client, bearer, login
from tests.support.agent import eventually
from tests.support.webhooks import Canary

MakeClient = Callable[..., Any]


@pytest.fixture
def canary() -> Iterator[Canary]:
    listener = Canary()
    try:
        yield listener
    finally:
        listener.close()


def literal_forms(port: int) -> list[str]:
    """URLs that name the canary (127.0.0.1:port) by address, in every disguise."""
    return [f"http://{host}:{port}/hook" for host in (
        "127.0.0.1", "127.1", "127.0.1", "2130706433", "0x7f.1", "0x7f000001", "017700000001",
        "0177.0.0.1", "127.000.000.001", "[::1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]",
        "[::127.0.0.1]", "0.0.0.0", "[::]", "[0:0:0:0:0:ffff:127.0.0.1]")]


def name_forms(port: int) -> list[str]:
    """URLs that reach the canary only through name resolution."""
    return [f"http://{host}:{port}/hook" for host in ("localhost", "LocalHost")]


async def _admin(client: Client) -> dict[str, str]:
    return bearer((await login(client))["access_token"])


async def test_literal_forms_are_refused_at_creation(client: Client, canary: Canary) -> None:
    """Every address form of loopback (and the metadata and private ranges) is a 400 naming
    the reason; nothing connects."""
    headers = await _admin(client)
    urls = [
        *literal_forms(canary.port), "http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/",
        "http://10.0.0.1/", "http://172.16.5.4/", "http://192.168.1.1/", "http://100.64.0.1/",
        "http://224.0.0.1/", "http://[fe80::1]/", "http://[fc00::1]/"]
    for url in urls:
        resp = await client.post("/v1/webhooks", headers=headers,
                                 json={"url": url, "events": ["*"]})
        assert resp.status == 400, url
        details = (await resp.json())["error"]["details"]
        assert details["field"] == "url" and details["issue"], url
    assert canary.connections == 0


async def test_names_resolving_to_loopback_are_refused_per_attempt(client: Client,
                                                                   canary: Canary) -> None:
    """A hook whose host name resolves to loopback is accepted, but every attempt is refused
    before connecting, and the attempt log says which address and why."""
    headers = await _admin(client)
    hooks = []
    for url in name_forms(canary.port):
        resp = await client.post("/v1/webhooks", headers=headers,
                                 json={"url": url, "events": ["*"]})
        assert resp.status == 201, await resp.text()
        hooks.append((await resp.json())["id"])
        assert (await client.post(f"/v1/webhooks/{hooks[-1]}/test", headers=headers)).status == 202
    for hook in hooks:
        attempt = await eventually(lambda hook=hook: _first_attempt(client, headers, hook),
                                   message="the refused attempt")
        assert attempt["outcome"] == "refused" and attempt["status_code"] is None
        assert "resolves to 127.0.0.1, a loopback address" in attempt["error"]
    assert canary.connections == 0


async def _first_attempt(client: Client, headers: dict[str, str], hook: str) -> Any:
    page = await (await client.get(f"/v1/webhooks/{hook}/deliveries", headers=headers)).json()
    if not page["data"]:
        return None
    done = [a for a in page["data"][0]["attempt_log"] if a["outcome"] != "in_progress"]
    return done[0] if done else None


async def test_hooks_stored_while_allowed_are_refused_once_disallowed(
        make_client: MakeClient, canary: Canary) -> None:
    """Hooks created while private targets were allowed are refused at every attempt after
    the agent restarts with them disallowed: the check is made per attempt, not only once."""
    forms = [f"http://{host}:{canary.port}/hook" for host in (
        "127.0.0.1", "[::1]", "[::ffff:127.0.0.1]", "[::127.0.0.1]", "0.0.0.0", "localhost")]
    allowed: Client = await make_client(webhooks={"allow_private_targets": True})
    headers = await _admin(allowed)
    hooks = []
    for url in forms:
        resp = await allowed.post("/v1/webhooks", headers=headers,
                                  json={"url": url, "events": ["*"]})
        assert resp.status == 201, (url, await resp.text())
        hooks.append((await resp.json())["id"])
    await allowed.close()

    strict: Client = await make_client()
    headers = await _admin(strict)
    for hook in hooks:
        assert (await strict.post(f"/v1/webhooks/{hook}/test", headers=headers)).status == 202
    for hook, url in zip(hooks, forms, strict=True):
        attempt = await eventually(lambda hook=hook: _first_attempt(strict, headers, hook),
                                   message=f"the refused attempt to {url}")
        assert attempt["outcome"] == "refused", url
        assert attempt["error"].startswith("refused: "), url
    assert canary.connections == 0


async def test_sender_refuses_odd_forms_even_when_private_allowed(canary: Canary) -> None:
    """With allow_private_targets = true the sender still never connects to a numeric
    disguise of an address (or to a metadata address)."""
    sender = Sender(WebhooksConfig(allow_private_targets=True), SystemClock(), user_agent="t")
    await sender.start()
    try:
        message = Message(msg_id="evt_x", event_type="webhook.ping", body=b"{}",
                          delivery_id="dlv_x", attempt=1)
        odd = [u for u in literal_forms(canary.port)
               if not any(h in u for h in ("//127.0.0.1:", "//[", "//0.0.0.0:"))]
        for url in [*odd, "http://169.254.169.254/latest/meta-data/"]:
            result = await sender.send(url, b"k" * 32, message)
            assert result.outcome == "refused", url
        result = await sender.send(f"http://127.0.0.1:{canary.port}/hook", b"k" * 32, message)
        assert result.outcome != "refused"  # the canary works: a plain allowed form connects
    finally:
        await sender.close()
    await eventually(lambda: _async(canary.connections == 1), message="the control connection")


async def _async(value: bool) -> bool:
    return value
