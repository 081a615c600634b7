"""The Supervisor: every service of this agent, their commands, and the query surface.

Other parts of the agent use only these methods:

- ``list()`` / ``get(id_or_name)``: ``ServiceInfo`` snapshots (cheap, no I/O);
- ``status(id_or_name)``: ``ServiceStatus`` with CPU and memory of the process tree (sampled
  in a thread, cached for ``stats_max_age`` seconds);
- ``sample()``: resource use of every running service in one pass (for metrics);
- ``start`` / ``stop`` / ``restart`` (optionally waiting, bounded, for a settled state);
- ``add`` / ``remove`` when a deployment is created or deleted;
- ``replace`` when a deploy or a rollback switches a service to another release.

On ``open`` it loads every service, re-adopts every live run (same pid, no restart), kills
strays, and resumes what the agent was doing. On ``close`` it stops watching and leaves every
app running.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from agent.clock import Clock
from agent.config import ServicesConfig
from agent.env import EnvService
from agent.errors import NotFound
from agent.logs.manager import LogManager
from agent.store import Database
from agent.supervisor.recovery import recover
from agent.supervisor.runtime import Handle, LogPaths, RunSpec, Runtime, TreeStats
from agent.supervisor.states import ACTIVE_STATES
from agent.supervisor.store import ServiceRecord, load_services
from agent.supervisor.switch import Replacement, SwitchResult, replace
from agent.supervisor.unit import Revision, ServiceUnit, UnitContext
from agent.supervisor.views import ServiceInfo, ServiceStatus

__all__ = ["INHERITED_ENV", "Supervisor"]

log = structlog.get_logger("agent.supervisor")

#: Variables of the agent's own environment that apps inherit (nothing else: the agent's
#: environment may hold its own secrets).
INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "USER", "LOGNAME", "TMPDIR")
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class _Sample:
    key: str            # the handle sampled (a new run starts a new series)
    at: float
    stats: TreeStats
    cpu_percent: float | None


class Supervisor:
    """Owns a ServiceUnit per service. ``open`` after the store, ``close`` before it."""

    def __init__(self, db: Database, clock: Clock, config: ServicesConfig, *, apps_dir: Path,
                 logs: LogManager, env: EnvService, runtimes: Mapping[str, Runtime],
                 base_env: Mapping[str, str] | None = None,
                 rng: random.Random | None = None, build_timeout: float = 1800.0) -> None:
        self._db = db
        self._clock = clock
        self._config = config
        self._apps_dir = apps_dir
        self._logs = logs
        self._env = env
        self._runtimes = dict(runtimes)
        self._base_env = base_env
        self._rng = rng or random.Random()
        self._build_timeout = build_timeout
        self._units: dict[str, ServiceUnit] = {}
        self._revision = Revision()  # bumped by every unit's record change, and here
        self._in_use: tuple[int, frozenset[str]] = (-1, frozenset())
        self._names: dict[str, str] = {}
        self._samples: dict[str, _Sample] = {}
        self._ctx: dict[str, UnitContext] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    def _context(self, runtime_kind: str) -> UnitContext:
        ctx = self._ctx.get(runtime_kind)
        if ctx is None:
            runtime = self._runtimes.get(runtime_kind)
            if runtime is None:
                raise KeyError(runtime_kind)
            base_env = self._base_env
            if not getattr(runtime, "host_env", True):
                base_env = {}  # a container gets the service's env only, never the agent's
            elif base_env is None:
                base_env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
                base_env.setdefault("PATH", _DEFAULT_PATH)
            ctx = UnitContext(db=self._db, clock=self._clock, runtime=runtime, logs=self._logs,
                              env=self._env, config=self._config, base_env=base_env,
                              rng=self._rng, build_timeout=self._build_timeout,
                              revision=self._revision)
            self._ctx[runtime_kind] = ctx
        return ctx

    @property
    def wait_timeout(self) -> float:
        """The upper bound for waiting on a command's outcome."""
        return self._config.wait_timeout

    def app_dir(self, name: str) -> Path:
        """Where a service's files live: ``<state dir>/apps/<name>``."""
        return self._apps_dir / name

    async def open(self) -> None:
        """Load every service, adopt live runs, kill strays, resume."""
        self._apps_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        records = await self._db.read_in_thread(load_services)
        strays = await self._discover(records)
        for record in records:
            try:
                unit = await self._make_unit(record)
                if unit is not None:
                    await recover(unit, strays.get(record.id, []))
            except OSError as exc:
                # One service's files being unusable must not keep the agent from starting.
                log.error("service_recovery_failed", service_id=record.id,
                          error=exc.strerror or type(exc).__name__)
        log.info("supervisor_opened", services=len(self._units),
                 running=sum(1 for u in self._units.values() if u.r.handle is not None))

    async def _discover(self, records: list[ServiceRecord]) -> dict[str, list[Handle]]:
        """Live runs of each service found on the host, for runtimes that can search."""
        found: dict[str, list[Handle]] = {}
        for kind, runtime in self._runtimes.items():
            discover = getattr(runtime, "discover", None)
            if discover is None:
                continue
            specs = []
            for record in records:
                if record.runtime == kind:
                    unit_dir = self.app_dir(record.name)
                    specs.append(RunSpec(
                        service_id=record.id, name=record.name, command=record.command,
                        cwd=record.cwd, env={}, run_dir=unit_dir / "run",
                        logs=LogPaths(unit_dir / "run/stdout.raw", unit_dir / "run/stderr.raw")))
            if specs:
                found.update(await discover(specs))
        return found

    async def _make_unit(self, record: ServiceRecord) -> ServiceUnit | None:
        try:
            ctx = self._context(record.runtime)
        except KeyError:
            log.error("service_runtime_unavailable", service_id=record.id, runtime=record.runtime)
            return None
        app_dir = self.app_dir(record.name)
        raw = await self._logs.attach(record.id, app_dir)
        unit = ServiceUnit(record, ctx, app_dir=app_dir, raw_logs=raw)
        self._units[record.id] = unit
        self._names[record.name] = record.id
        self._revision.bump()
        return unit

    async def close(self) -> None:
        """Stop watching every service; every app keeps running."""
        for unit in self._units.values():
            unit.detach()
        self._units.clear()
        self._names.clear()
        self._revision.bump()

    # -- membership --------------------------------------------------------------------------

    async def add(self, service_id: str) -> ServiceInfo:
        """Take a service just inserted in the store under supervision (not started)."""
        records = await self._db.read_in_thread(lambda conn: load_services(conn, service_id))
        if not records:
            raise NotFound(f"No service with id '{service_id}'")
        unit = await self._make_unit(records[0])
        if unit is None:
            raise NotFound(f"No runtime '{records[0].runtime}' for service '{service_id}'")
        return unit.info()

    async def remove(self, key: str) -> None:
        """Stop the service for good and delete its files (logs included). The caller deletes
        its rows."""
        unit = self._unit(key)
        await self._ready(unit)
        await unit.remove()
        self._units.pop(unit.r.id, None)
        self._names.pop(unit.r.name, None)
        self._revision.bump()
        self._samples.pop(unit.r.id, None)
        await self._logs.detach(unit.r.id, remove=True)

    # -- queries -----------------------------------------------------------------------------

    def _unit(self, key: str) -> ServiceUnit:
        unit = self._units.get(key) or self._units.get(self._names.get(key, ""))
        if unit is None:
            raise NotFound(f"No service '{key}'")
        return unit

    def list(self) -> list[ServiceInfo]:
        """Every service, by id (creation order)."""
        return [self._units[key].info() for key in sorted(self._units)]

    @property
    def revision(self) -> int:
        """Grows whenever a service's record changes or a service comes or goes: what is
        derived from ``list()`` (bar health) can be reused while it is the same."""
        return self._revision.value

    def has_runtime(self, runtime: str) -> bool:
        """Whether any service uses ``runtime`` ("process", "docker", "static")."""
        revision, runtimes = self._in_use
        if revision != self._revision.value:
            runtimes = frozenset(unit.r.runtime for unit in self._units.values())
            self._in_use = (self._revision.value, runtimes)
        return runtime in runtimes

    def get(self, key: str) -> ServiceInfo:
        """One service by id or name; NotFound otherwise."""
        return self._unit(key).info()

    async def status(self, key: str, *, sample: bool = True) -> ServiceStatus:
        """The service with uptime, CPU and memory of its tree, health and last exit.

        ``sample=False`` uses only an existing, current sample (no /proc pass): for answers
        to commands, which should not take CPU from an app that is starting.
        """
        unit = self._unit(key)
        info = unit.info()
        found = await self._sample_one(unit, refresh=sample)
        uptime = (self._clock.time() - info.started_at) if info.started_at is not None else None
        return ServiceStatus(
            info=info, uptime=uptime,
            cpu_percent=found.cpu_percent if found else None,
            cpu_seconds=found.stats.cpu_seconds if found else None,
            memory_bytes=found.stats.memory_bytes if found else None,
            processes=found.stats.processes if found else None,
            health=unit.health, last_exit=unit.r.last_exit)

    async def _sample_one(self, unit: ServiceUnit, *, refresh: bool = True) -> _Sample | None:
        """The unit's sample, taken anew when older than stats_max_age (``refresh``)."""
        handle = unit.r.handle
        if handle is None or unit.r.state not in ACTIVE_STATES:
            return None
        key = handle.to_json()
        sample = self._samples.get(unit.r.id)
        now = self._clock.monotonic()
        stale = sample is None or sample.key != key or now - sample.at >= self._config.stats_max_age
        if stale and refresh:
            stats = (await unit.runtime.stats([handle])).get(key)
            if stats is not None:
                self._record_sample(unit, key, stats, now)
            sample = self._samples.get(unit.r.id)
        return sample if sample is not None and sample.key == key else None

    def _record_sample(self, unit: ServiceUnit, key: str, stats: TreeStats, now: float) -> None:
        previous = self._samples.get(unit.r.id)
        if stats.sampled_at is not None:
            # A runtime answering from a cache: the reading's own time, and a reading seen
            # before is no new information (it would read as 0% CPU).
            if previous is not None and previous.key == key \
                    and previous.stats.sampled_at == stats.sampled_at:
                return
            now = stats.sampled_at
        percent: float | None = None
        if previous is not None and previous.key == key and now - previous.at >= 0.1 \
                and stats.cpu_seconds >= previous.stats.cpu_seconds:
            percent = (stats.cpu_seconds - previous.stats.cpu_seconds) / (now - previous.at) * 100
        elif unit.r.started_at is not None:
            lifetime = self._clock.time() - unit.r.started_at
            percent = stats.cpu_seconds / lifetime * 100 if lifetime > 0 else None
        self._samples[unit.r.id] = _Sample(key, now, stats,
                                           round(percent, 2) if percent is not None else None)

    async def sample(self) -> dict[str, TreeStats]:
        """Resource use of every service with a run, in one pass per runtime (for metrics)."""
        result: dict[str, TreeStats] = {}
        now = self._clock.monotonic()
        for kind, runtime in self._runtimes.items():
            handles = {u.r.id: u.r.handle for u in self._units.values()
                       if u.r.runtime == kind and u.r.handle is not None}
            if not handles:
                continue
            stats = await runtime.stats(list(handles.values()))
            for service_id, handle in handles.items():
                unit = self._units.get(service_id)
                found = stats.get(handle.to_json())
                if unit is not None and found is not None:
                    result[service_id] = found
                    self._record_sample(unit, handle.to_json(), found, now)
        return result

    # -- commands ----------------------------------------------------------------------------

    async def _ready(self, unit: ServiceUnit) -> None:
        """Raise RuntimeUnavailable (503) when the unit's runtime cannot act now (the Docker
        engine does not answer): the command then changes nothing."""
        check = getattr(unit.runtime, "ensure_available", None)
        if check is not None:
            await check()

    async def refresh(self, key: str) -> ServiceInfo:
        """Reload the service's deployment settings (image, limits, port, policy...) from the
        store; they apply from its next run."""
        unit = self._unit(key)
        service_id = unit.r.id
        records = await self._db.read_in_thread(lambda conn: load_services(conn, service_id))
        if not records:
            raise NotFound(f"No service '{key}'")
        await unit.refresh(records[0])
        return unit.info()

    async def start(self, key: str, *, wait: float | None = None) -> ServiceInfo:
        """Start (idempotent); with ``wait`` seconds, wait for running or a failure state."""
        unit = self._unit(key)
        await self._ready(unit)
        await unit.start()
        return await self._settle(unit, wait)

    async def stop(self, key: str, *, wait: float | None = None) -> ServiceInfo:
        """Stop and keep stopped (idempotent); with ``wait``, wait until stopped."""
        unit = self._unit(key)
        await self._ready(unit)
        await unit.stop()
        return await self._settle(unit, wait)

    async def restart(self, key: str, *, wait: float | None = None) -> ServiceInfo:
        """Restart (start when not running); with ``wait``, wait for the new run to settle."""
        unit = self._unit(key)
        await self._ready(unit)
        await unit.restart()
        return await self._settle(unit, wait)

    async def replace(self, key: str, replacement: Replacement) -> SwitchResult:
        """Replace the service's run with one from another release (a deploy or a rollback):
        zero downtime unless it has a fixed port; see ``agent.supervisor.switch``. Raises
        ``SwitchFailed`` with a reason for users; the current run then keeps serving."""
        return await replace(self._unit(key), replacement)

    async def _settle(self, unit: ServiceUnit, wait: float | None) -> ServiceInfo:
        if wait:
            await unit.wait_settled(min(wait, self._config.wait_timeout))
        return unit.info()

    def logs(self) -> LogManager:
        """The log manager (readers use it to tail and follow)."""
        return self._logs
