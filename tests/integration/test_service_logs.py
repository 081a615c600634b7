"""Logs of real apps through the API: tail, formats, filters, follow across rotations and
restarts, SSE resume, no loss at 10,000 lines/s, tail on a huge file."""

from __future__ import annotations

import asyncio
import json
import os
import re
import textwrap
from typing import Any

import aiohttp
import pytest
from aiohttp import ClientResponse

from tests.support.agent import eventually
from tests.support.services import PYTHON, TICKER_APP, Harness

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"

WRITER_APP = textwrap.dedent('''
    import os, sys, time
    total, rate = int(os.environ["LINES"]), int(os.environ["RATE"])
    start = time.monotonic()
    for i in range(total):
        sys.stdout.write(f"{i}\\n")
        sys.stdout.flush()
        if i % 100 == 99:
            ahead = (i + 1) / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
''')


@pytest.fixture
def services_config(apps_root: Any) -> dict[str, Any]:
    """Tiny log files so that rotations happen within seconds; keep them all."""
    return {"allowed_local_roots": [str(apps_root)], "startup_seconds": 0.2,
            "log_max_bytes": 16384, "log_max_files": 500}


async def _lines_of(resp: ClientResponse, count: int, timeout: float = 30) -> list[bytes]:
    lines = []
    async with asyncio.timeout(timeout):
        while len(lines) < count:
            line = await resp.content.readline()
            assert line, "the stream ended"
            lines.append(line)
    return lines


async def test_tail_in_text_and_ndjson_with_stream_and_since_filters(svc: Harness) -> None:
    """Each line is stamped; tail counts from the end; stream and since filter."""
    cmd = "printf 'out 1\\nout 2\\n'; printf 'err 1\\n' >&2; exec sleep 1000"
    sid = (await svc.deploy("printer", cmd))["service_id"]
    await eventually(lambda: _contains(svc, sid, "err 1"), message="the output")
    text = await svc.logs(sid)
    assert re.search(rf"^{STAMP} stdout out 1$", text, re.M)
    assert re.search(rf"^{STAMP} stderr err 1$", text, re.M)
    assert re.search(rf"^{STAMP} agent started pid \d+ with PORT=\d+$", text, re.M)
    assert (await svc.logs(sid, "?stream=stderr")).endswith(" stderr err 1\n")
    assert len((await svc.logs(sid, "?stream=stdout&tail=1")).splitlines()) == 1

    resp = await svc.client.get(f"/v1/services/{sid}/logs?stream=stdout",
                                headers={**svc.headers, "Accept": "application/x-ndjson"})
    assert resp.headers["Content-Type"].startswith("application/x-ndjson")
    rows = [json.loads(line) for line in (await resp.text()).splitlines()]
    assert [r["line"] for r in rows] == ["out 1", "out 2"]
    assert rows[1]["seq"] > rows[0]["seq"] and rows[0]["stream"] == "stdout"
    assert re.fullmatch(STAMP, rows[0]["timestamp"])

    assert "out 1" in await svc.logs(sid, "?since=1h")
    assert "out 1" in await svc.logs(sid, "?since=99999999999d")
    assert await svc.logs(sid, "?since=2999-01-01T00:00:00Z") == ""
    bad = await svc.request("GET", f"/v1/services/{sid}/logs?since=yesterday", expect=400)
    assert bad["error"]["details"]["field"] == "since"
    await svc.request("GET", "/v1/services/svc_nope/logs", expect=404)


async def _contains(svc: Harness, sid: str, text: str) -> bool:
    return text in await svc.logs(sid)


async def test_follow_goes_on_across_rotations_and_an_app_restart(svc: Harness) -> None:
    """A follower sees every line, in order, while files rotate and the app restarts."""
    sid = (await svc.deploy("ticker", f"exec {PYTHON} app.py", files={"app.py": TICKER_APP},
                            env={"TICK": "0.002"}))["service_id"]
    resp = await svc.client.get(f"/v1/services/{sid}/logs?follow=true&format=ndjson",
                                headers={**svc.headers, "Last-Event-ID": "0"})
    assert resp.status == 200
    first = [json.loads(x) for x in await _lines_of(resp, 600)]
    await svc.action(sid, "restart")
    rows = first + [json.loads(x) for x in await _lines_of(resp, 900)]
    resp.close()
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    ticks = [int(r["line"].split()[1]) for r in rows if r["stream"] == "stdout"]
    restart_at = next(i for i in range(1, len(ticks)) if ticks[i] < ticks[i - 1])
    assert ticks[:restart_at] == list(range(1, restart_at + 1))
    assert ticks[restart_at:] == list(range(1, len(ticks) - restart_at + 1))
    assert len(list((svc.state_dir / "apps/ticker/logs").iterdir())) >= 4


async def test_sse_resumes_after_a_disconnect_with_last_event_id(svc: Harness) -> None:
    """An EventSource that reconnects with Last-Event-ID continues with the next line."""
    sid = (await svc.deploy("sse", f"exec {PYTHON} app.py", files={"app.py": TICKER_APP}))[
        "service_id"]
    headers = {**svc.headers, "Accept": "text/event-stream"}
    resp = await svc.client.get(f"/v1/services/{sid}/logs?follow=true&tail=0", headers=headers)
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    events = await _sse_events(resp, 5)
    resp.close()
    last = events[-1]["id"]
    await asyncio.sleep(0.3)  # lines keep coming while the client is away
    resp = await svc.client.get(f"/v1/services/{sid}/logs?follow=true",
                                headers={**headers, "Last-Event-ID": str(last)})
    more = await _sse_events(resp, 5)
    resp.close()
    assert [e["id"] for e in more] == list(range(last + 1, last + 6))
    assert all(e["event"] == "log" and json.loads(e["data"])["seq"] == e["id"] for e in more)


async def _sse_events(resp: ClientResponse, count: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    async with asyncio.timeout(20):
        while len(events) < count:
            line = (await resp.content.readline()).decode().rstrip("\n")
            if not line:
                if current:
                    events.append(current)
                    current = {}
                continue
            name, _, value = line.partition(": ")
            current[name] = int(value) if name == "id" else value
    return events


async def test_10000_lines_a_second_across_50_rotations_lose_nothing(svc: Harness) -> None:
    """Every numbered line reaches the files and a follower exactly once, in order."""
    total = 25_000
    dep = await svc.deploy("firehose", f"sleep 0.3; exec {PYTHON} writer.py",
                           files={"writer.py": WRITER_APP}, env={"LINES": str(total),
                                                                 "RATE": "10000"},
                           restart={"mode": "never"})
    sid = dep["service_id"]
    resp = await svc.client.get(f"/v1/services/{sid}/logs?follow=true&stream=stdout"
                                "&format=ndjson", headers={**svc.headers, "Last-Event-ID": "0"})
    followed = [int(json.loads(x)["line"]) for x in await _lines_of(resp, total // 2, timeout=60)]
    # Midway, the app's raw output file has grown, but what was consumed takes no disk.
    raw = os.stat(svc.state_dir / "apps/firehose/run/stdout.raw")
    assert raw.st_blocks * 512 <= 16 * 1024 < raw.st_size
    followed += [int(json.loads(x)["line"]) for x in await _lines_of(resp, total - total // 2,
                                                                      timeout=60)]
    resp.close()
    assert followed == list(range(total))
    await svc.wait_state(sid, "stopped")
    logs_dir = svc.state_dir / "apps/firehose/logs"
    files = sorted(logs_dir.iterdir(), key=lambda p: -int(p.suffix[1:]) if p.suffix != ".log"
                   else 0)
    assert len(files) >= 50
    stored = []
    for path in files:
        for raw in path.read_bytes().splitlines():
            _, _, stream, text = raw.split(b" ", 3)
            if stream == b"stdout":
                stored.append(int(text))
    assert stored == list(range(total))


async def test_tail_on_a_huge_file_reads_only_its_end(svc: Harness) -> None:
    """tail seeks from the end: on a 1 GiB log a request reads kilobytes, not the file.

    The file is sparse (its first GiB is a hole) so that the test costs no disk; a reader that
    scanned from the start would read the whole GiB either way.
    """
    sid = (await svc.deploy("big", "exec sleep 1000"))["service_id"]
    await svc.wait_state(sid, "running")
    await svc.action(sid, "stop", wait=True)
    active = svc.state_dir / "apps/big/logs/app.log"
    with active.open("r+b") as f:
        f.truncate(1 << 30)
        f.seek(0, os.SEEK_END)
        for i in range(1000):
            f.write(b"%d 2030-01-01T00:00:00.000000Z stdout line %d\n" % (10**6 + i, i))
    before = _bytes_read()
    text = await svc.logs(sid, "?tail=20")
    read = _bytes_read() - before
    assert text.splitlines()[-1].endswith("stdout line 999")
    assert len(text.splitlines()) == 20
    assert read < 4 << 20, f"read {read} bytes for a tail"


def _bytes_read() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


async def test_followers_end_when_the_agent_stops(svc: Harness) -> None:
    """An open follow stream ends cleanly when the agent shuts down (the app keeps running)."""
    sid = (await svc.deploy("endless", f"exec {PYTHON} app.py", files={"app.py": TICKER_APP},
                            env={"TICK": "1"}))["service_id"]
    pid = (await svc.wait_state(sid, "running"))["pid"]
    url = svc.client.make_url(f"/v1/services/{sid}/logs?follow=true")
    async with aiohttp.ClientSession() as session, session.get(url, headers=svc.headers) as resp:
        assert resp.status == 200
        reader = asyncio.ensure_future(resp.content.read())
        await svc.restart_agent()
        async with asyncio.timeout(5):
            body = await reader
    assert b"agent started pid" in body
    assert (await svc.status(sid))["pid"] == pid
