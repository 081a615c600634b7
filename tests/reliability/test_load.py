"""Load: 100 users, each at its rate limit, for 10 minutes of mixed reads and writes against a
real agent over real HTTP.

Passes when the error rate (any answer other than 2xx or 429, and any failed connection) is
under 0.1 %, and the agent's memory and open file descriptors are flat. "Flat", precisely:
the run is cut in ten equal windows (a minute each for the default 10 minutes); the largest
RSS of the last window is at most 10 % above the largest of the second window (the first is
warm-up), and the largest fd count of the last window is at most 10 % or 5 descriptors
(whichever is more) above the second window's. /proc is sampled every ``SAMPLE_SECONDS``.

The fd count leaves out the connections the users' client holds open to the API: how many
there are is the client pool's choice (it keeps as many as were ever in flight at once, so
one slow moment adds some for good), not the agent's. That the agent lets go of them is
checked on its own: once the client closes its pool, no established connection to the API is
left within a few seconds. A connection the client closed and the agent kept (CLOSE_WAIT)
still counts as a descriptor.

``DPLOYR_LOAD_SECONDS`` sets the duration (default 600, what CI runs); the rate limit is
lowered to 3600 per hour with a burst of 2 (``[ratelimit] burst``) so that each user may make
one request a second, and each asks 5 % faster than that: within the first minute every user
is at its limit, and some answers are 429 (which do not count as errors). Without the burst
cap a user would first have the whole hour's allowance to spend, and would not reach its
limit in a run of 10 minutes at this pace.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.reliability.figures import percentile, record
from tests.support.agent import ADMIN_EMAIL, ADMIN_PASSWORD, LiveAgent, wait_until
from tests.support.services import kill_apps

LOAD_SECONDS = float(os.environ.get("DPLOYR_LOAD_SECONDS", "600"))
USERS = 100
PER_HOUR = 3600
BURST = 2
# Users ask a little faster than they may, so that they really are at the limit (some 429s).
OVER_LIMIT = 1.05
SAMPLE_SECONDS = 2.0 if LOAD_SECONDS < 120 else 5.0
RSS_SLACK = 0.10
FD_SLACK = (0.10, 5)


_TCP_ESTABLISHED = "01"


def _client_connections(pid: int, port: int) -> set[str]:
    """Socket inodes of the established TCP connections to ``port`` (the API) in ``pid``'s
    network namespace, from /proc/net/tcp and tcp6."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == _TCP_ESTABLISHED:
                inodes.add(fields[9])
    return inodes


def _own_descriptors(pid: int, port: int) -> tuple[int, int]:
    """(descriptors of ``pid`` other than established API connections, those connections)."""
    clients = _client_connections(pid, port)
    own = held = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:  # closed between the listing and the read
            continue
        if target.startswith("socket:[") and target[8:-1] in clients:
            held += 1
        else:
            own += 1
    return own, held


def _proc_sample(pid: int, port: int) -> tuple[int, int]:
    """(RSS in KiB, descriptors of ``pid`` other than established API connections)."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, _own_descriptors(pid, port)[0]


class User:
    """One user: its token, and a loop of requests at one per ``interval`` seconds."""

    def __init__(self, n: int, token: str, service: str, rng: random.Random) -> None:
        self.n, self.token, self.service, self.rng = n, token, service, rng
        self.statuses: Counter[int] = Counter()
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.made = 0
        self.projects: list[str] = []

    def _next(self) -> tuple[str, str, Any]:
        roll = self.rng.random()
        if roll < 0.10:
            self.made += 1
            return "POST", "/v1/projects", {"name": f"u{self.n}-p{self.made}"}
        if roll < 0.15 and self.projects:
            return "DELETE", f"/v1/projects/{self.projects.pop(0)}", None
        if roll < 0.22:
            return "POST", f"/v1/services/{self.service}/env", {
                "key": f"U{self.n}", "value": str(self.made)}
        return self.rng.choice((
            ("GET", "/v1/projects", None), ("GET", "/v1/services", None),
            ("GET", f"/v1/services/{self.service}/status", None), ("GET", "/v1/auth/me", None),
            ("GET", "/v1/instances/self", None), ("GET", f"/v1/services/{self.service}/env", None),
            ("GET", f"/v1/services/{self.service}/logs?tail=10", None)))

    async def run(self, session: aiohttp.ClientSession, base: str, until: float) -> None:
        interval = 3600 / PER_HOUR / OVER_LIMIT
        await asyncio.sleep(self.rng.uniform(0, interval))  # users do not start in step
        next_at = time.monotonic()
        headers = {"Authorization": f"Bearer {self.token}"}
        while time.monotonic() < until:
            method, path, body = self._next()
            started = time.monotonic()
            try:
                async with session.request(method, base + path, json=body,
                                           headers=headers) as resp:
                    payload = await resp.read()
                    self.statuses[resp.status] += 1
                    if resp.status == 201 and path == "/v1/projects":
                        self.projects.append(json.loads(payload)["id"])
                    elif not (200 <= resp.status < 300 or resp.status == 429):
                        self.failures.append(f"{method} {path}: {resp.status} {payload[:200]!r}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.statuses[0] += 1
                self.failures.append(f"{method} {path}: {type(exc).__name__}")
            self.latencies.append(time.monotonic() - started)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))


def _window_max(samples: list[tuple[float, int, int]], start: float, length: float,
                index: int, which: int) -> int:
    chosen = [s[which] for s in samples if start + index * length <= s[0] < start + (index + 1) * length]
    assert chosen, f"no sample in window {index}"
    return max(chosen)


@pytest.mark.timeout(LOAD_SECONDS + 300)
async def test_100_users_at_their_rate_limit(tmp_path: Path) -> None:
    """100 users at one request a second each: errors (other than 429) under 0.1 %, RSS and
    open descriptors flat from the second window to the last."""
    apps = tmp_path / "srv" / "app"
    apps.mkdir(parents=True)
    agent = LiveAgent(state_dir=tmp_path / "state", extra_env={
        "DPLOYR_RATELIMIT__AUTHENTICATED_PER_HOUR": str(PER_HOUR),
        "DPLOYR_RATELIMIT__UNAUTHENTICATED_PER_HOUR": "100000",
        "DPLOYR_SERVICES__ALLOWED_LOCAL_ROOTS": json.dumps([str(apps.parent)]),
        "DPLOYR_SERVICES__STARTUP_SECONDS": "0.2",
        "DPLOYR_LOGGING__ACCESS_LOG": "false",
    })
    agent.start()
    try:
        admin = agent.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        status, _, dep = agent.request("POST", "/v1/deployments", token=admin, body={
            "name": "app", "source": "local", "path": str(apps), "run_cmd": "exec sleep 100000"})
        assert status == 201, dep
        service = dep["service_id"]
        wait_until(lambda: agent.request("GET", f"/v1/services/{service}",
                                         token=admin)[2]["state"] == "running", timeout=30)
        rng = random.Random(100)
        users = []
        for n in range(USERS):
            email, password = f"user{n}@example.com", f"password-{n}"
            status, _, body = agent.request("POST", "/v1/users", token=admin, body={
                "email": email, "password": password, "role": "developer"})
            assert status == 201, body
            users.append(User(n, agent.login(email, password), service,
                              random.Random(rng.random())))
        # The burst cap from here on (the admin's setup above was faster than a request a
        # second): a restart, which keeps the sessions, the app and its process.
        agent.stop()
        agent.extra_env["DPLOYR_RATELIMIT__BURST"] = str(BURST)
        agent.start()
        assert agent.process is not None
        pid = agent.process.pid
        samples: list[tuple[float, int, int]] = []
        start = time.monotonic()
        until = start + LOAD_SECONDS

        async def sample() -> None:
            while time.monotonic() < until:
                rss, fds = await asyncio.to_thread(_proc_sample, pid, agent.port)
                samples.append((time.monotonic(), rss, fds))
                await asyncio.sleep(SAMPLE_SECONDS)

        connector = aiohttp.TCPConnector(limit=USERS * 2)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.gather(sample(), *(u.run(session, agent.url, until) for u in users))
        # The pool is closed: the agent lets go of every connection it held for the users.
        wait_until(lambda: _own_descriptors(pid, agent.port)[1] == 0, timeout=10,
                   message="the agent to close the connections the client closed")
        assert agent.healthy()
    finally:
        agent.stop()
        kill_apps(agent.state_dir)

    statuses: Counter[int] = sum((u.statuses for u in users), Counter())
    total = sum(statuses.values())
    errors = sum(n for code, n in statuses.items() if not (200 <= code < 300 or code == 429))
    latencies = [lat for u in users for lat in u.latencies]
    window = LOAD_SECONDS / 10
    rss_second, rss_last = (_window_max(samples, start, window, i, 1) for i in (1, 9))
    fd_second, fd_last = (_window_max(samples, start, window, i, 2) for i in (1, 9))
    record("load", seconds=LOAD_SECONDS, users=USERS, requests=total,
           statuses={str(k): v for k, v in sorted(statuses.items())},
           error_rate=errors / max(total, 1), p50_ms=round(percentile(latencies, 0.5) * 1000, 2),
           p99_ms=round(percentile(latencies, 0.99) * 1000, 2),
           rss_kib_second_window=rss_second, rss_kib_last_window=rss_last,
           fds_second_window=fd_second, fds_last_window=fd_last, samples=len(samples))
    failures = [f for u in users for f in u.failures][:20]
    assert total > USERS * LOAD_SECONDS * 0.5, f"only {total} requests were made"
    assert errors / total < 0.001, (errors, total, failures)
    assert statuses[429] > 0, "the users never reached their rate limit"
    assert rss_last <= rss_second * (1 + RSS_SLACK), (rss_second, rss_last)
    assert fd_last <= max(fd_second * (1 + FD_SLACK[0]), fd_second + FD_SLACK[1]), (fd_second, fd_last)
