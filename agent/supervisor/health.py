"""Health checks: an HTTP GET on a path, or a TCP connect, against the service's port.

HTTP counts as passing on any 2xx or 3xx status; TCP when the connection is accepted. The
probes use plain asyncio streams (no client session to manage, no proxy settings picked up).

A container's published port is answered by Docker's userland proxy, which accepts every
connection at once and closes it when nothing listens in the container yet. For those, a TCP
probe with ``hold`` also waits that long after connecting: a connection closed meanwhile (an
EOF or a reset) fails; one still open (or that got data) passes.
How results move the state (starting -> running, running -> unhealthy -> running) is the
unit's business; this module only probes and keeps the tally.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any, Literal

from agent.records import record

__all__ = ["CONTAINER_HOLD", "HealthCheck", "HealthState", "ProbeResult", "Verdict", "judge",
           "probe"]

HealthStatus = Literal["none", "unknown", "passing", "failing"]
Verdict = Literal["running", "recovered", "unhealthy", "start_timeout"] | None

#: Seconds a TCP probe of a container's published port holds the connection (see above).
CONTAINER_HOLD = 0.25


@record
class HealthCheck:
    """How to check a service. Defaults are those documented in docs/api.md."""

    type: Literal["http", "tcp"] = "http"
    path: str = "/"
    port: int | None = None        # None: the port the service listens on (PORT)
    interval: float = 10.0         # seconds between checks once running
    timeout: float = 2.0           # seconds a check may take
    threshold: int = 3             # failures in a row that make a running service unhealthy
    start_timeout: float = 60.0    # seconds a start may take to pass its first check
    restart: bool = True           # restart a service that became unhealthy

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> HealthCheck | None:
        return cls(**data) if data else None

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "path": self.path, "port": self.port,
                "interval": self.interval, "timeout": self.timeout,
                "threshold": self.threshold, "start_timeout": self.start_timeout,
                "restart": self.restart}


@record
class ProbeResult:
    ok: bool
    error: str | None = None


@dataclass
class HealthState:
    """The tally of one run's checks (not persisted: a new run or agent starts afresh)."""

    status: HealthStatus = "none"
    failures: int = 0              # consecutive
    last_checked_at: float | None = None
    last_error: str | None = None

    def record(self, result: ProbeResult, now: float, *, starting: bool = False) -> None:
        """Count one result. While a run is starting, failures are expected (the app is
        still coming up): the status stays ``unknown`` until the first pass."""
        self.last_checked_at = now
        if result.ok:
            self.status, self.failures, self.last_error = "passing", 0, None
            return
        self.failures += 1
        self.last_error = result.error
        if not (starting and self.status == "unknown"):
            self.status = "failing"


async def probe(check: HealthCheck, port: int, host: str = "127.0.0.1", *,
                hold: float = 0.0) -> ProbeResult:
    """Run one check against ``host:port``; never raises. ``hold``: see the module docstring."""
    try:
        return await asyncio.wait_for(_probe(check, host, port, hold), check.timeout)
    except TimeoutError:
        return ProbeResult(False, f"timed out after {check.timeout:g}s")
    except OSError as exc:
        return ProbeResult(False, exc.strerror or type(exc).__name__)


async def _probe(check: HealthCheck, host: str, port: int, hold: float) -> ProbeResult:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        if check.type == "tcp":
            if hold > 0:
                try:
                    if await asyncio.wait_for(reader.read(1), hold) == b"":
                        return ProbeResult(False, "connection closed at once (nothing listens "
                                                  "behind the published port yet)")
                except TimeoutError:
                    pass  # still open: something accepted it
            return ProbeResult(True)
        request = (f"GET {check.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                   "User-Agent: dployr-agent-health\r\nConnection: close\r\n\r\n")
        writer.write(request.encode())
        await writer.drain()
        status_line = await reader.readline()
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            return ProbeResult(False, "not an HTTP response")
        status = int(parts[1])
        if 200 <= status < 400:
            return ProbeResult(True)
        return ProbeResult(False, f"HTTP {status}")
    finally:
        writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await writer.wait_closed()


def judge(state: str, health: HealthState, check: HealthCheck, *, elapsed: float) -> Verdict:
    """What the latest result (already recorded in ``health``) means for a service in
    ``state``, ``elapsed`` seconds after its run started. None: nothing changes."""
    passing = health.status == "passing"
    if state == "starting":
        if passing:
            return "running"
        return "start_timeout" if elapsed > check.start_timeout else None
    if state == "running" and health.failures >= check.threshold:
        return "unhealthy"
    if state == "unhealthy" and passing:
        return "recovered"
    return None
