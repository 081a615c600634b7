"""The fast access line is the line structlog would write: same fields, order and escaping."""

from __future__ import annotations

import io
import json
import random
import re

import pytest
import structlog

from agent.logconfig import (
    AccessLog,
    LineWriter,
    _is_sensitive,
    access_log,
    configure_logging,
    flush_logs,
    reset_logging,
)

_STAMP = re.compile(r'"timestamp":"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{6})?Z)"')
FIELDS = ["method", "route", "path", "status", "duration_ms", "principal", "event", "request_id",
          "level", "timestamp"]


def _both(**fields: object) -> tuple[str, str]:
    """The same access line written by structlog and by the fast path."""
    stream = io.StringIO()
    configure_logging("info", "json", stream, cache_loggers=False)
    try:
        fast = access_log()
        assert fast is not None
        structlog.contextvars.bind_contextvars(request_id=fields["request_id"])
        try:
            structlog.get_logger("agent.api").info(
                "http_request", **{k: v for k, v in fields.items() if k != "request_id"})
        finally:
            structlog.contextvars.clear_contextvars()
        fast.write(method=fields["method"], route=fields["route"], path=fields["path"],  # type: ignore[arg-type]
                   status=fields["status"], seconds=fields["duration_ms"] / 1000,  # type: ignore[operator]
                   principal=fields["principal"], request_id=fields["request_id"])
        flush_logs()
    finally:
        reset_logging()
    slow_line, fast_line = stream.getvalue().rstrip("\n").split("\n")
    return slow_line, fast_line


def _without_stamp(line: str) -> str:
    assert _STAMP.search(line), line
    return _STAMP.sub('"timestamp":"T"', line)


@pytest.mark.parametrize("path", ["/v1/projects", "/v1/projects/prj_1", '/v1/"quoted"\\x',
                                  "/v1/caf\u00e9/\u65e5\U0001f680", "/v1/\x01\x1f\x7f\t",
                                  "/v1/\u2028", "/"])
def test_fast_line_equals_the_structlog_line(path: str) -> None:
    """For odd paths too, the fast line is byte-identical to structlog's (timestamp aside)."""
    slow, fast = _both(method="GET", route="/v1/projects/{id}", path=path, status=200,
                       duration_ms=1.23, principal="usr_01hx", request_id="req_abc")
    assert _without_stamp(fast) == _without_stamp(slow)
    assert list(json.loads(fast)) == FIELDS


def test_nulls_and_numbers_are_written_alike() -> None:
    """No route (404), no principal, and a range of durations and statuses match too."""
    rng = random.Random(7)
    durations = [0.0, 0.01, 0.1, 1.0, 12.34, 999.99, 123456.78, 1e15]
    durations += [round(rng.uniform(0, 5000), 2) for _ in range(200)]
    for duration in durations:
        slow, fast = _both(method="DELETE", route=None, path="/v1/nope",
                           status=rng.choice([200, 204, 404, 429, 499, 500]),
                           duration_ms=duration, principal=None, request_id="trace-1.x_Y")
        assert _without_stamp(fast) == _without_stamp(slow)


def test_timestamp_has_structlogs_format() -> None:
    """The timestamp is ISO 8601 in UTC with a Z, like structlog's TimeStamper."""
    _, fast = _both(method="GET", route=None, path="/", status=200, duration_ms=0.5,
                    principal=None, request_id="r")
    stamp = json.loads(fast)["timestamp"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z", stamp)


def test_no_field_names_a_secret() -> None:
    """The fast path skips redaction only because none of its fields would be redacted."""
    assert not any(_is_sensitive(name) for name in FIELDS)


def test_fast_path_only_for_json_at_info() -> None:
    """Console output or a level above info leaves the access line to structlog."""
    stream = io.StringIO()
    try:
        configure_logging("warning", "json", stream, cache_loggers=False)
        assert access_log() is None
        configure_logging("info", "console", stream, cache_loggers=False)
        assert access_log() is None
        configure_logging("debug", "json", stream, cache_loggers=False)
        assert isinstance(access_log(), AccessLog)
    finally:
        reset_logging()
    assert access_log() is None


async def test_queued_access_lines_keep_their_place_among_other_lines() -> None:
    """An access line queued on the loop is written between the lines logged around it."""
    stream = io.StringIO()
    writer = LineWriter(stream)
    access = AccessLog(writer)
    writer.info("before")
    access.write("GET", "/v1/health", "/v1/health", 200, 0.0015, None, "req_1")
    assert stream.getvalue() == ""  # batched: nothing rendered or written yet
    writer.error("after")
    before, line, after = stream.getvalue().splitlines()
    assert (before, after) == ("before", "after")
    assert json.loads(line)["duration_ms"] == 1.5 and json.loads(line)["path"] == "/v1/health"


def test_access_lines_without_a_loop_are_written_at_once() -> None:
    """Outside an event loop the access line is rendered and written immediately."""
    stream = io.StringIO()
    AccessLog(LineWriter(stream)).write("GET", None, "/", 404, 0.0, None, "req_2")
    assert json.loads(stream.getvalue())["status"] == 404


def test_undecodable_text_is_escaped_not_fatal() -> None:
    """A path holding a lone surrogate (bytes that were not UTF-8) is written escaped, like
    structlog's fallback does, and the batch is still written."""
    stream = io.StringIO()
    AccessLog(LineWriter(stream)).write("GET", None, "/v1/\udc80x", 404, 0.001, None, "req_3")
    record = json.loads(stream.getvalue())
    assert record["path"] == "/v1/\udc80x" and record["status"] == 404
