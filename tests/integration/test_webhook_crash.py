"""kill -9 a real agent between a change and its delivery, many times: no event is lost."""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

from tests.support.agent import LiveAgent, wait_until
from tests.support.webhooks import Receiver, Reply, ThreadedServer

KILLS = 50


def test_kill_9_between_change_and_delivery_loses_nothing(live_agent: LiveAgent) -> None:
    """50 times: ping through the API (the event is committed to the outbox), then kill -9 the
    agent at a random moment (before fan-out, before the attempt, mid-attempt or after) and
    start it again. Every event is delivered and verified; duplicates are allowed, and never
    more than the interrupted attempts the agent counted."""
    rng = random.Random(8)
    receiver = Receiver()
    receiver.script("/crash", default=Reply(200, delay=0.02))
    server = ThreadedServer(receiver.app(), receiver.port).start()
    try:
        live_agent.extra_env["DPLOYR_WEBHOOKS__ALLOW_PRIVATE_TARGETS"] = "true"
        live_agent.start()
        token = live_agent.login()
        status, _, hook = live_agent.request("POST", "/v1/webhooks", token=token, body={
            "url": receiver.url("/crash"), "events": ["*"]})
        assert status == 201, hook
        receiver.expect("/crash", hook["secret"])

        sent: list[str] = []
        for _ in range(KILLS):
            status, _, ping = live_agent.request("POST", f"/v1/webhooks/{hook['id']}/test",
                                                 token=token)
            assert status == 202, ping
            sent.append(ping["event_id"])
            time.sleep(rng.choice((0, 0, 0.005, 0.01, 0.02, 0.03)))  # vary where the kill lands
            assert live_agent.kill() == -9
            live_agent.start()

        wait_until(lambda: set(sent) <= set(receiver.verified_ids("/crash")), timeout=60,
                   message="every pinged event to be delivered")

        def settled() -> dict[str, Any] | None:
            status, _, page = live_agent.request(
                "GET", f"/v1/webhooks/{hook['id']}/deliveries?limit=500", token=token)
            assert status == 200
            done = {d["status"] for d in page["data"]} == {"succeeded"}
            return page if done else None

        page = wait_until(settled, timeout=30, message="the delivery log to settle")
    finally:
        server.stop()

    received = receiver.at("/crash")
    assert all(r.verified for r in received), [r.error for r in received if not r.verified]
    counts = Counter(r.msg_id for r in received)
    lost = [event_id for event_id in sent if counts[event_id] == 0]
    duplicates = sum(n - 1 for n in counts.values())
    interrupted = sum(d["interrupted"] for d in page["data"])
    print(f"\nkill -9 x{KILLS}: {len(sent)} events, {len(lost)} lost, {duplicates} duplicates, "
          f"{interrupted} interrupted attempts counted by the agent")
    assert lost == []
    assert len(page["data"]) == KILLS
    assert duplicates <= interrupted
