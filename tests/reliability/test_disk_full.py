"""Disk full: the agent's state and the apps' logs on a small filesystem that fills up.

Writes get 507 ``insufficient_storage`` (or 503) in the envelope, reads keep working, nothing
crashes (the agent, the app, log capture, the webhook worker, the metrics sampler), and once
space is freed the database passes ``PRAGMA integrity_check`` and the agent works as before.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require
from tests.reliability.smallfs import fill, mountable, small_tmpfs
from tests.support.agent import LiveAgent, wait_until
from tests.support.services import alive, kill_apps, write_app
from tests.support.webhooks import Receiver, ThreadedServer

WRITE_REFUSED = (503, 507)

#: Prints "tick N" every TICK seconds; a write the full disk refuses is skipped, not fatal
#: (this test is about the agent, not about apps that die of ENOSPC).
STUBBORN_TICKER = """
import os, time
n = 0
while True:
    n += 1
    try:
        os.write(1, f"tick {n}\\n".encode())
    except OSError:
        pass
    time.sleep(float(os.environ.get("TICK", "0.05")))
"""


@pytest.fixture
def fs(tmp_path: Path):
    ok, why = mountable()
    require("mount", ok, why)
    with small_tmpfs(tmp_path / "small", 24) as path:
        yield path


def _refused(result: tuple[int, dict[str, str], Any]) -> bool:
    status, headers, body = result
    assert status in WRITE_REFUSED, (status, body)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert body["error"]["code"] in ("insufficient_storage", "unavailable"), body
    assert "X-Request-ID" in headers
    return True


def test_full_disk_refuses_writes_keeps_reads_and_recovers(fs: Path, tmp_path: Path) -> None:
    """With the state filesystem full: writes 507/503, reads 200, no crash; after freeing
    space: integrity_check ok, writes work, logs and webhooks resume."""
    apps = write_app(tmp_path / "srv", "ticker", {"app.py": STUBBORN_TICKER})
    receiver = Receiver()
    server = ThreadedServer(receiver.app(), receiver.port).start()
    agent = LiveAgent(state_dir=fs, extra_env={
        "DPLOYR_SERVICES__ALLOWED_LOCAL_ROOTS": json.dumps([str(apps.parent)]),
        "DPLOYR_SERVICES__STARTUP_SECONDS": "0.2",
        "DPLOYR_WEBHOOKS__ALLOW_PRIVATE_TARGETS": "true",
        "DPLOYR_WEBHOOKS__RETRY_BASE_DELAY": "0.5",
        "DPLOYR_WEBHOOKS__RETRY_MAX_DELAY": "1",
        "DPLOYR_METRICS__INTERVAL": "0.5",
        "DPLOYR_RATELIMIT__AUTHENTICATED_PER_HOUR": "1000000",
        "DPLOYR_METRICS__HISTORY_RESOLUTION": "1m",
    })
    try:
        agent.start()
        token = agent.login()

        def call(method: str, path: str, body: Any = None) -> tuple[int, dict[str, str], Any]:
            return agent.request(method, path, token=token, body=body)

        status, _, hook = call("POST", "/v1/webhooks", {"url": receiver.url(), "events": ["*"],
                                                        "secret": "whsec_" + "QUJD" * 8})
        assert status == 201, hook
        receiver.expect("/hook", hook["secret"])
        status, _, dep = call("POST", "/v1/deployments", {
            "name": "ticker", "source": "local", "path": str(apps),
            "run_cmd": f"exec {sys.executable} app.py", "env": {"TICK": "0.01"}})
        assert status == 201, dep
        service = dep["service_id"]
        running = wait_until(lambda: (lambda s: s["state"] == "running" and s)(
            call("GET", f"/v1/services/{service}")[2]), timeout=30, message="the app to run")
        pid = running["pid"]
        status, _, project = call("POST", "/v1/projects", {"name": "before-full"})
        assert status == 201
        wait_until(lambda: receiver.verified_ids("/hook"), timeout=30, message="a first delivery")

        filler = fill(fs)

        # Writes of every kind are refused in the envelope, never a 500.
        assert _refused(call("POST", "/v1/projects", {"name": "while-full"}))
        assert _refused(call("POST", f"/v1/services/{service}/env",
                             {"key": "WHILE_FULL", "value": "x"}))
        assert _refused(call("PATCH", f"/v1/webhooks/{hook['id']}", {"enabled": True}))
        assert _refused(call("POST", f"/v1/services/{service}/restart"))
        status, _, _ = call("POST", "/v1/auth/login", None)  # no body: a 400, not a crash
        assert status == 400
        # Reads keep working.
        for path in ("/v1/health", "/v1/projects", f"/v1/projects/{project['id']}",
                     "/v1/services", f"/v1/services/{service}/status", "/v1/deployments",
                     f"/v1/services/{service}/logs?tail=5", "/v1/instances/self",
                     "/v1/instances/self/metrics", f"/v1/webhooks/{hook['id']}/deliveries",
                     "/v1/auth/me"):
            status, _, body = call("GET", path)
            assert status == 200, (path, status, body)
        # Time passes with the disk full: the app keeps writing, the sampler samples, the
        # webhook worker has events to deliver; the instance reports the full disk.
        wait_until(lambda: call("GET", "/v1/instances/self")[2]["status"] == "degraded",
                   timeout=30, message="the instance to report the full disk")
        assert agent.healthy() and alive(pid)

        filler.unlink()

        # The store is intact, and writes work again.
        with sqlite3.connect(f"file:{fs / 'agent.db'}?mode=ro", uri=True) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        status, _, after = call("POST", "/v1/projects", {"name": "after-full"})
        assert status == 201, after
        names = {p["name"] for p in call("GET", "/v1/projects")[2]["data"]}
        assert {"before-full", "after-full"} <= names and "while-full" not in names
        status, _, _ = call("POST", f"/v1/services/{service}/env", {"key": "AFTER", "value": "y"})
        assert status == 201
        # The app was never restarted, and its new lines reach the log again.
        state = call("GET", f"/v1/services/{service}")[2]
        assert state["pid"] == pid and state["state"] == "running"
        marker = call("GET", f"/v1/services/{service}/logs?tail=1")[2].strip().split()[-1]

        def newer_lines() -> bool:
            last = call("GET", f"/v1/services/{service}/logs?tail=1")[2].strip().split()[-1]
            return int(last) > int(marker) + 5

        wait_until(newer_lines, timeout=30, message="log capture to resume")
        # Webhooks deliver events made after the disk was freed.
        call("POST", "/v1/projects", {"name": "after-full-2"})
        status, _, _ = call("POST", f"/v1/services/{service}/restart?wait=true")
        assert status == 200

        def restarted_delivered() -> bool:
            return any(r.event_type == "service.started" and r.verified
                       and r.payload and r.payload["data"].get("pid") != pid
                       for r in receiver.at("/hook"))

        wait_until(restarted_delivered, timeout=30, message="a delivery after the disk was freed")
        wait_until(lambda: call("GET", "/v1/instances/self")[2]["status"] == "healthy",
                   timeout=30, message="the instance to recover")
        assert agent.healthy()
        log = agent.log()
        assert "Traceback" not in log
        assert "request_failed" not in log, log
        # A failing log capture is reported once and retried on a backoff, not at every line.
        assert 1 <= log.count('"log_capture_failed"') <= 2, log.count('"log_capture_failed"')
    finally:
        agent.stop()
        kill_apps(fs)
        server.stop()
