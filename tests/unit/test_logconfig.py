"""The agent's log: JSON lines, secrets redacted, no tracebacks, batched writes keep order."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading

import structlog

from agent.logconfig import REDACTED, LineWriter
from tests.support.agent import eventually
from tests.support.logs import captured_agent_log


def test_json_lines_with_context_and_redaction() -> None:
    """One JSON line per event with level, timestamp and context; secret-named fields blanked."""
    with captured_agent_log() as log:
        structlog.contextvars.bind_contextvars(request_id="req_1")
        try:
            structlog.get_logger("t").info("user_added", email="a@b.c", password="hunter2",
                                           refresh_token="dplr_x", api_key="k", count=3)
        finally:
            structlog.contextvars.clear_contextvars()
        [record] = log.records()
    assert record["event"] == "user_added" and record["level"] == "info"
    assert record["request_id"] == "req_1" and record["count"] == 3
    assert record["timestamp"].endswith("Z")
    assert record["password"] == record["refresh_token"] == record["api_key"] == REDACTED
    assert "hunter2" not in log.text


def test_exceptions_are_logged_without_traceback_or_message() -> None:
    """An exception logged by us or by a library shows its type and place only."""
    with captured_agent_log() as log:
        try:
            raise ValueError("secret detail sk_live_1")
        except ValueError:
            structlog.get_logger("t").exception("step_failed")
            logging.getLogger("aiohttp.server").exception("Error handling request")
        records = log.records()
    assert "sk_live_1" not in log.text and "Traceback" not in log.text
    assert [r["error_type"] for r in records] == ["ValueError", "ValueError"]
    assert all("test_logconfig.py" in r["where"] for r in records)


async def test_batched_lines_arrive_in_order_and_soon() -> None:
    """Info lines on the loop are written together shortly after; an error flushes them first."""
    stream = io.StringIO()
    writer = LineWriter(stream, delay=0.05)
    writer.info("one")
    writer.info("two")
    assert stream.getvalue() == ""  # batched
    await eventually(lambda: asyncio.sleep(0, stream.getvalue() == "one\ntwo\n"),
                     message="the batch to be written")
    writer.info("three")
    writer.error("four")  # written at once, after what was pending
    assert stream.getvalue() == "one\ntwo\nthree\nfour\n"


def test_lines_from_threads_or_without_a_loop_are_written_at_once() -> None:
    """Outside an event loop (the CLI, worker threads) each line is written immediately."""
    stream = io.StringIO()
    writer = LineWriter(stream)
    writer.info("main")
    thread = threading.Thread(target=writer.info, args=("thread",))
    thread.start()
    thread.join()
    assert stream.getvalue() == "main\nthread\n"


def test_rendered_output_is_valid_json_for_odd_values() -> None:
    """Values JSON cannot hold natively (bytes, sets, objects) are rendered as text."""
    with captured_agent_log() as log:
        structlog.get_logger("t").info("odd", data=b"\xff", items={1}, obj=object())
        [line] = log.text.splitlines()
    assert json.loads(line)["event"] == "odd"
