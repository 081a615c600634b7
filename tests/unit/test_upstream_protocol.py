"""Control-plane protocol parsing, the reconnect backoff and the local listener address."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from agent.config import UpstreamConfig
from agent.testing import FakeClock
from agent.upstream import UpstreamLink, default_providers, local_base_url
from agent.upstream.protocol import EventAck, ProtocolError, TaskAck, TaskMessage, parse_incoming


def test_parse_task_and_acks() -> None:
    """task, task_ack and event_ack parse into their models; unknown types are ignored."""
    task = parse_incoming({"type": "task", "id": "t-1", "method": "post", "path": "/v1/projects",
                           "body": {"name": "x"}, "token": "secret-token", "extra": 1})
    assert isinstance(task, TaskMessage) and task.body == {"name": "x"} and task.problem() is None
    assert "secret-token" not in repr(task)
    assert isinstance(parse_incoming({"type": "task_ack", "ids": ["a", "b"]}), TaskAck)
    assert isinstance(parse_incoming({"type": "event_ack", "seq": 7}), EventAck)
    assert parse_incoming({"type": "welcome", "anything": True}) is None


@pytest.mark.parametrize("raw", [
    [], "task", {"no": "type"}, {"type": 5},
    {"type": "task", "id": "has space", "method": "GET", "path": "/v1/x"},
    {"type": "task", "method": "GET", "path": "/v1/x"},
    {"type": "event_ack", "seq": -1},
])
def test_malformed_messages_raise(raw: object) -> None:
    """Non-objects, missing or bad fields raise ProtocolError (answered with an error message)."""
    with pytest.raises(ProtocolError):
        parse_incoming(raw)


@pytest.mark.parametrize(("method", "path"), [
    ("TRACE", "/v1/x"), ("GET", "/etc/passwd"), ("GET", "http://evil/v1/x"),
    ("GET", "//evil/v1/"), ("GET", "/v1/x y"), ("GET", "/v1/x\r\nHost: evil"),
])
def test_tasks_that_cannot_run(method: str, path: str) -> None:
    """Only GET/POST/PUT/PATCH/DELETE on /v1/ paths of this agent can run."""
    task = TaskMessage(type="task", id="t", method=method, path=path)
    assert task.problem() is not None


def test_local_base_url() -> None:
    """Wildcard listeners are reached on loopback; IPv6 hosts are bracketed."""
    assert local_base_url("127.0.0.1:7879") == "http://127.0.0.1:7879"
    assert local_base_url("0.0.0.0:80") == "http://127.0.0.1:80"
    assert local_base_url(":8080") == "http://127.0.0.1:8080"
    assert local_base_url("[::]:7879") == "http://[::1]:7879"
    assert local_base_url("[::1]:7879") == "http://[::1]:7879"


def test_backoff_grows_with_jitter_up_to_the_cap(tmp_path: Path) -> None:
    """Each wait is drawn between half and all of min_delay * 2**failures, capped at max_delay."""
    config = UpstreamConfig(url="ws://127.0.0.1:1/", reconnect_min_delay=1.0,
                            reconnect_max_delay=60.0)
    clock = FakeClock()
    link = UpstreamLink(None, None, clock, config, instance=None,  # type: ignore[arg-type]
                        base_url="http://127.0.0.1:1",
                        providers=default_providers(clock, 0.0, tmp_path),
                        rng=random.Random(3))
    for failures in range(12):
        ceiling = min(60.0, 2.0 ** failures)
        waits = [link._backoff(failures) for _ in range(20)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits)
        assert len(set(waits)) > 1
