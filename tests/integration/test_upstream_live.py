"""A real ``dployr-agent serve`` driven by a control plane over its one outbound connection."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.support.agent import LiveAgent, eventually
from tests.support.controlplane import ControlPlane
from tests.support.webhooks import Receiver


async def _until(predicate: Any, message: str, timeout: float = 15.0) -> Any:
    async def check() -> Any:
        return predicate()

    return await eventually(check, message=message, timeout=timeout)


async def test_control_plane_drives_a_real_agent(live_agent: LiveAgent,
                                                 aiohttp_server: Any) -> None:
    """Through tasks alone, a control plane registers a webhook and pings it (the receiver
    verifies the signed delivery), sees the ping event on the link, and after a kill -9 the
    agent comes back with the same instance id."""
    control_plane = ControlPlane()
    await aiohttp_server(control_plane.app(), port=control_plane.port)
    receiver = Receiver()
    await aiohttp_server(receiver.app(), port=receiver.port)
    live_agent.extra_env.update({
        "DPLOYR_UPSTREAM__URL": control_plane.url,
        "DPLOYR_UPSTREAM__TOKEN": control_plane.token,
        "DPLOYR_UPSTREAM__UPDATE_INTERVAL": "0.5",
        "DPLOYR_UPSTREAM__RECONNECT_MIN_DELAY": "0.05",
        "DPLOYR_UPSTREAM__RECONNECT_MAX_DELAY": "0.5",
        "DPLOYR_WEBHOOKS__ALLOW_PRIVATE_TARGETS": "true",
    })
    await asyncio.to_thread(live_agent.start)
    token = await asyncio.to_thread(live_agent.login)
    hello = (await _until(lambda: control_plane.received("hello"), "hello"))[0]

    await control_plane.task("create-hook", "POST", "/v1/webhooks", token=token,
                             body={"url": receiver.url("/cp"), "events": ["*"]})
    created = (await _until(lambda: control_plane.responses("create-hook"), "the hook"))[0]
    assert created["status"] == 201, created
    receiver.expect("/cp", created["body"]["secret"])
    await control_plane.task("ping", "POST", f"/v1/webhooks/{created['body']['id']}/test",
                             token=token)
    ping = (await _until(lambda: control_plane.responses("ping"), "the ping answer"))[0]
    assert ping["status"] == 202
    event_id = ping["body"]["event_id"]
    await _until(lambda: receiver.verified_ids("/cp") == [event_id], "the verified delivery")
    events = await _until(lambda: [e for e in control_plane.received("event")
                                   if e["event"]["id"] == event_id], "the ping event upstream")
    assert events[0]["event"]["type"] == "webhook.ping"

    await asyncio.to_thread(live_agent.kill)
    await asyncio.to_thread(live_agent.start)
    second = await _until(lambda: [m for m in control_plane.received("hello")
                                   if m["boot_id"] != hello["boot_id"]], "hello after restart")
    assert second[0]["instance_id"] == hello["instance_id"]
