"""The instance: this agent's host as the API shows it, and whether it is healthy.

The id is generated once and kept in the store's ``meta`` table (key ``instance_id``), so
it survives restarts. The status is worked out after every sample from the sample's disks,
the proxy's state and every registered ``HealthContributor``; when it changes between
``healthy`` and ``degraded`` an ``instance.degraded`` or ``instance.recovered`` event is
written with the new state (key ``instance_status``), so a restart does not repeat it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections import Counter
from pathlib import Path
from typing import Literal

import structlog

from agent import __version__
from agent.clock import Clock
from agent.config import AgentConfig
from agent.errors import NotFound
from agent.ids import new_id
from agent.instance.facts import HostFacts, read_facts
from agent.instance.runtimes import RuntimeDetector, RuntimeInfo, detect_runtimes
from agent.metrics.sampler import Sampler
from agent.metrics.snapshot import Snapshot
from agent.metrics.sources import (
    HealthContributor,
    HealthReason,
    ProxyState,
    ProxyStateSource,
    unconfigured_proxy,
)
from agent.records import record
from agent.store import Database, Tx

__all__ = ["SELF", "InstanceReport", "InstanceService", "InstanceStatus"]

log = structlog.get_logger("agent.instance")

SELF = "self"
Status = Literal["healthy", "degraded"]


@record
class InstanceStatus:
    status: Status
    reasons: tuple[HealthReason, ...] = ()


@record
class InstanceReport:
    """Everything ``GET /v1/instances/{id}`` shows, read from caches only."""

    id: str
    name: str
    hostname: str
    facts: HostFacts
    agent_version: str
    agent_uptime_seconds: float
    status: InstanceStatus
    services_by_state: dict[str, int]
    runtimes: tuple[RuntimeInfo, ...]
    runtimes_detected: bool
    proxy: ProxyState
    labels: dict[str, str]
    snapshot: Snapshot | None


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


class InstanceService:
    """This instance. ``start`` after the store is open; ``stop`` at shutdown."""

    def __init__(self, *, db: Database, clock: Clock, config: AgentConfig, sampler: Sampler,
                 runtime_detector: RuntimeDetector | None = None) -> None:
        self._db = db
        self._clock = clock
        self._config = config
        self._sampler = sampler
        self._detector: RuntimeDetector | None = (
            runtime_detector if runtime_detector is not None
            else detect_runtimes if config.metrics.detect_runtimes else None)
        self._contributors: list[HealthContributor] = []
        self._proxy: ProxyStateSource = unconfigured_proxy
        self._id = ""
        self._facts = HostFacts(os="", kernel="", architecture="", cpu_count=1)
        self._status = InstanceStatus("healthy")
        self._recorded: Status = "healthy"  # the status last written with its event
        self._runtimes: tuple[RuntimeInfo, ...] = ()
        self._runtimes_detected = False
        self._detect_task: asyncio.Task[None] | None = None
        self._started_at = clock.monotonic()

    @property
    def id(self) -> str:
        return self._id

    @property
    def status(self) -> InstanceStatus:
        return self._status

    def add_health_contributor(self, contributor: HealthContributor) -> None:
        """Ask ``contributor`` for reasons after every sample."""
        self._contributors.append(contributor)

    def set_proxy_state(self, source: ProxyStateSource) -> None:
        """Where the proxy's state comes from (the proxy wires itself in here)."""
        self._proxy = source

    async def start(self) -> None:
        """Load or create the id, read the host's facts, start detecting runtimes."""
        self._facts = await asyncio.to_thread(read_facts)
        self._id = await self._db.write(self._load_or_create_id)
        row = self._db.query_one("SELECT value FROM meta WHERE key = 'instance_status'")
        if row is not None:
            saved = json.loads(row["value"])
            self._status = InstanceStatus(
                saved.get("status", "healthy"),
                tuple(HealthReason(r["code"], r["message"]) for r in saved.get("reasons", ())))
            self._recorded = self._status.status
        if self._detector is not None:
            self._detect_task = asyncio.create_task(self._detect(self._detector))
        else:
            self._runtimes_detected = True

    async def stop(self) -> None:
        if self._detect_task is not None:
            self._detect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._detect_task

    @staticmethod
    def _load_or_create_id(tx: Tx) -> str:
        tx.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('instance_id', ?)",
                   (new_id("ins"),))
        row = tx.execute("SELECT value FROM meta WHERE key = 'instance_id'").fetchone()
        return str(row["value"])

    async def _detect(self, detector: RuntimeDetector) -> None:
        try:
            self._runtimes = tuple(await detector())
        except Exception as exc:
            log.warning("runtime_detection_failed", error_type=type(exc).__name__)
        self._runtimes_detected = True
        log.info("runtimes_detected", runtimes={r.name: r.version for r in self._runtimes
                                                if r.available})

    def resolve(self, key: str) -> str:
        """The instance id for ``key`` (``self`` or the id); NotFound for any other."""
        if key in (SELF, self._id):
            return self._id
        raise NotFound(f"No instance with id '{key}' on this agent; use '{SELF}' or "
                       f"'{self._id}'")

    def reasons(self, snapshot: Snapshot) -> list[HealthReason]:
        """Why the instance is degraded now (empty when healthy)."""
        limit = self._config.metrics.disk_degraded_percent
        reasons: list[HealthReason] = []
        full: list[str] = []
        for disk in snapshot.host.disks:
            if disk.percent >= limit:
                full.append(disk.mountpoint)
                reasons.append(HealthReason(
                    "disk_almost_full",
                    f"{disk.mountpoint} is {disk.percent:.0f}% full ({_gib(disk.free)} free)"))
            if disk.inodes_total and disk.inodes_percent >= limit:
                reasons.append(HealthReason(
                    "inodes_almost_full",
                    f"{disk.mountpoint} has used {disk.inodes_percent:.0f}% of its inodes"))
        state = _state_disk_reason(self._config.state.dir, limit, full)
        if state is not None:
            reasons.append(state)
        proxy = self._proxy()
        if proxy.state == "down":
            reasons.append(HealthReason(
                "proxy_down", proxy.detail or f"the {proxy.backend} proxy is not running"))
        for contributor in self._contributors:
            try:
                reasons.extend(contributor())
            except Exception as exc:
                log.warning("health_contributor_failed", error_type=type(exc).__name__)
        return reasons

    async def on_sample(self, snapshot: Snapshot) -> None:
        """Work out the status from a new sample; record and announce a change."""
        reasons = tuple(self.reasons(snapshot))
        new = InstanceStatus("degraded" if reasons else "healthy", reasons)
        self._status = new
        if new.status == self._recorded:
            return
        payload = {"status": new.status,
                   "reasons": [{"code": r.code, "message": r.message} for r in reasons]}

        def record(tx: Tx) -> None:
            tx.execute("INSERT INTO meta (key, value) VALUES ('instance_status', ?) "
                       "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                       (json.dumps(payload),))
            if new.status == "degraded":
                tx.emit("instance.degraded", {"instance_id": self._id, **payload})
            else:
                tx.emit("instance.recovered", {"instance_id": self._id, **payload})

        await self._db.write(record)  # if it fails, the next sample tries again
        self._recorded = new.status
        log.info("instance_status_changed", status=new.status,
                 reasons=[r.code for r in reasons])

    def report(self) -> InstanceReport:
        """The instance as it is now, from caches (never samples, never waits)."""
        services = self._sampler.current_services()
        hostname = socket.gethostname()
        return InstanceReport(
            id=self._id,
            name=self._config.instance.name or hostname,
            hostname=hostname,
            facts=self._facts,
            agent_version=__version__,
            agent_uptime_seconds=max(0.0, self._clock.monotonic() - self._started_at),
            status=self._status,
            services_by_state=dict(Counter(s.state for s in services)),
            runtimes=self._runtimes,
            runtimes_detected=self._runtimes_detected,
            proxy=self._proxy(),
            labels=dict(self._config.instance.labels),
            snapshot=self._sampler.latest,
        )

    def degraded(self) -> bool:
        return self._status.status == "degraded"


def _state_disk_reason(state_dir: Path, limit: float, full: list[str]) -> HealthReason | None:
    """A reason when the filesystem of the state dir (the store, the apps' logs) is almost
    full and is not one of the disks already named in ``full`` (the sampler lists real disks
    only, so a state dir on a tmpfs or a bind mount would otherwise go unnoticed)."""
    try:
        st = os.statvfs(state_dir)
        device = state_dir.stat().st_dev
        if any(Path(mount).stat().st_dev == device for mount in full):
            return None
    except OSError:
        return None
    if not st.f_blocks:
        return None
    percent = 100.0 * (st.f_blocks - st.f_bavail) / st.f_blocks
    if percent < limit:
        return None
    return HealthReason("state_disk_almost_full",
                        f"the filesystem of the state directory is {percent:.0f}% full "
                        f"({_gib(st.f_bavail * st.f_frsize)} free)")
