"""ServiceUnit: drives one service through its states (see ``states.py`` for the table).

Every command (start, stop, restart, remove) and every reaction (a run ended, a backoff timer
fired, a health check result) runs under the unit's lock, so they never interleave. Each
state change is one SQLite transaction that also writes the event (``_commit``). A run has a
generation number; a watcher or timer that wakes for an older generation does nothing.

Commands return as soon as they have *begun* (the run was launched, or the stop signal
sent); the rest goes on in a task, and ``wait_settled`` lets a caller wait for the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import socket
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

import structlog

from agent.clock import Clock
from agent.config import ServicesConfig
from agent.env import EnvService
from agent.logs.manager import LogManager
from agent.records import record
from agent.store import Database, Tx
from agent.supervisor import procfs
from agent.supervisor.build import build_local
from agent.supervisor.health import CONTAINER_HOLD, HealthState, judge, probe
from agent.supervisor.runtime import (
    ExitStatus,
    Handle,
    LogPaths,
    RunSpec,
    Runtime,
    RuntimeFailure,
)
from agent.supervisor.states import (
    ACTIVE_STATES,
    RUNNING_STATES,
    SETTLED_STATES,
    DesiredState,
    ServiceState,
    check_transition,
)
from agent.supervisor.store import (
    ExitRecord,
    ServiceRecord,
    insert_exit,
    update_deployment_status,
    update_service,
)
from agent.supervisor.views import ServiceInfo

__all__ = ["ServiceUnit", "UnitContext", "free_port", "run_environment"]

log = structlog.get_logger("agent.supervisor")

S = ServiceState
_FIRST_PROBE = 0.05     # seconds; probes during a start back off from here to 1 s
Begun = asyncio.Future[None]


class Revision:
    """A number that grows whenever a service's record changes or a service comes or goes:
    what is derived from every service (the sampler's list, the runtimes in use) is reused
    while it stays the same, without touching each unit (on a small virtual machine, reading
    the memory of 200 units after a few idle seconds costs over a millisecond)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def bump(self) -> None:
        self.value += 1


@record(slots=False)
class UnitContext:
    """What every unit shares."""

    db: Database
    clock: Clock
    runtime: Runtime
    logs: LogManager
    env: EnvService
    config: ServicesConfig
    base_env: Mapping[str, str]
    rng: random.Random
    build_timeout: float = 1800.0   # [deploy] build_timeout: local builds obey it too
    revision: Revision = dataclasses.field(default_factory=Revision)  # one for all of a supervisor's units


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (a run's ``PORT``)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_environment(base: Mapping[str, str], variables: Mapping[str, str],
                    run_env: Mapping[str, Any] | None, port: int) -> dict[str, str]:
    """A run's environment: ``base``, the service's ``variables``, what its release adds
    (``run_env``: ``path_dirs`` put first on ``PATH``, ``variables``), then ``PORT``."""
    env = {**base, **variables}
    if run_env:
        env.update(run_env.get("variables") or {})
        dirs = [str(d) for d in run_env.get("path_dirs") or ()]
        if dirs:
            env["PATH"] = os.pathsep.join([*dirs, env.get("PATH", "")]).rstrip(os.pathsep)
    env["PORT"] = str(port)
    return env


class ServiceUnit:
    """One supervised service."""

    def __init__(self, record: ServiceRecord, ctx: UnitContext, *, app_dir: Path,
                 raw_logs: LogPaths) -> None:
        self._ctx = ctx
        self.r = record
        self._app_dir = app_dir
        self._raw_logs = raw_logs
        self._lock = asyncio.Lock()
        self._gen = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._run_tasks: list[asyncio.Task[Any]] = []
        self._timer: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._halt = asyncio.Event()  # a stop or delete is waiting: cut a build short
        self.health = HealthState(status="unknown" if record.health_check else "none")
        self.removed = False
        # info() of the last (record, health status): rebuilt only when either changed,
        # so listing many idle services (the sampler, GET /v1/services) builds nothing.
        self._info: tuple[ServiceRecord, str, ServiceInfo] | None = None

    # -- queries -----------------------------------------------------------------------------

    @property
    def r(self) -> ServiceRecord:
        """The service's record: replaced (never changed) on every change, which bumps the
        shared ``Revision``."""
        return self._r

    @r.setter
    def r(self, record: ServiceRecord) -> None:
        self._r = record
        self._ctx.revision.bump()

    @property
    def runtime(self) -> Runtime:
        return self._ctx.runtime

    def info(self) -> ServiceInfo:
        """The service as it is now (the same object while nothing about it changed)."""
        r, health = self.r, self.health.status
        cached = self._info
        if cached is not None and cached[0] is r and cached[1] == health:
            return cached[2]
        info = self._build_info(r, health)
        self._info = (r, health, info)
        return info

    def _build_info(self, r: ServiceRecord, health: str) -> ServiceInfo:
        return ServiceInfo(
            id=r.id, name=r.name, deployment_id=r.deployment_id, runtime=r.runtime,
            state=r.state, desired_state=r.desired, pid=r.pid,
            listen_port=r.listen_port if r.state in ACTIVE_STATES else None, port=r.port,
            started_at=r.started_at if r.state in ACTIVE_STATES else None,
            restart_count=r.restart_count,
            health=health if r.state in ACTIVE_STATES or health == "none" else "unknown",
            next_restart_at=r.next_restart_at if r.state is S.BACKOFF else None,
            created_at=r.created_at, updated_at=r.updated_at, release_id=r.release_id,
            cwd=r.cwd,
            container_id=_container_id(r.handle) if r.state in ACTIVE_STATES else None)

    async def wait_settled(self, limit: float) -> None:
        """Wait (at most ``limit`` seconds) until the service is in a settled state and no command
        is in progress."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while not (self.r.state in SETTLED_STATES and not self._lock.locked()):
            event = self._changed
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)

    def _notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    # -- commands ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Run the service (idempotent: a running service is left alone)."""
        await self._command(self._start)

    async def stop(self) -> None:
        """Stop the service and keep it stopped (idempotent). A build in progress is cut
        short rather than waited for."""
        self._halt.set()
        await self._command(self._stop)

    async def restart(self) -> None:
        """Stop the current run (if any) and start a new one."""
        await self._command(self._restart)

    async def _command(self, fn: Callable[[Begun], Awaitable[None]]) -> None:
        begun: Begun = asyncio.get_running_loop().create_future()

        async def run() -> None:
            try:
                async with self._lock:
                    if self.removed:
                        return
                    if fn != self._stop:
                        self._halt.clear()
                    await fn(begun)
            finally:
                if not begun.done():
                    begun.set_result(None)
                self._notify()

        task = self._spawn(run())
        await asyncio.wait({begun, task}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)
        return task

    async def _start(self, begun: Begun) -> None:
        r = self.r
        if r.state in ACTIVE_STATES:
            if r.desired is not DesiredState.RUNNING:
                await self._commit(desired=DesiredState.RUNNING)
            return
        self._cancel_timer()
        await self._launch(begun, fresh=True)

    async def _stop(self, begun: Begun) -> None:
        r = self.r
        self._cancel_timer()
        if r.state in ACTIVE_STATES:
            status = await self._end_run(begun, desired=DesiredState.STOPPED)
            exit = await self._exit_record(status, "stopped")
            await self._commit(S.STOPPED, event="service.stopped", data=exit.event_data(),
                               exit=exit, handle=None, next_restart_at=None)
            await self._note(f"stopped ({status.describe()})")
        elif r.state is S.STOPPED:
            if r.desired is not DesiredState.STOPPED:
                await self._commit(desired=DesiredState.STOPPED)
        else:  # backoff, crashed, failed: no process; just settle as stopped
            event = "service.stopped" if r.state is S.BACKOFF else None
            await self._commit(S.STOPPED, event=event, desired=DesiredState.STOPPED,
                               next_restart_at=None)

    async def _restart(self, begun: Begun) -> None:
        self._cancel_timer()
        if self.r.state in ACTIVE_STATES:
            status = await self._end_run(None, desired=DesiredState.RUNNING)
            exit = await self._exit_record(status, "restarted")
            await self._commit(exit=exit, handle=None)
        await self._launch(begun, fresh=True)

    async def refresh(self, fresh: ServiceRecord) -> None:
        """Take the deployment's settings from ``fresh`` (a new release, new limits); the
        run in progress keeps what it started with."""
        async with self._lock:
            self.r = dataclasses.replace(
                self.r, command=fresh.command, cwd=fresh.cwd, image=fresh.image,
                port=fresh.port, fixed_port=fresh.fixed_port, build_cmd=fresh.build_cmd,
                policy=fresh.policy, health_check=fresh.health_check,
                stop_signal=fresh.stop_signal, stop_timeout=fresh.stop_timeout,
                limits=fresh.limits, deployment_status=fresh.deployment_status)
        self._notify()

    async def remove(self) -> None:
        """Stop any run for good and forget the unit (the service is being deleted)."""
        self._halt.set()
        async with self._lock:
            self._cancel_timer()
            if self.r.state in ACTIVE_STATES and self.r.handle is not None:
                self._gen += 1
                self._cancel_run_tasks()
                with contextlib.suppress(RuntimeFailure):
                    await self._ctx.runtime.stop(self.r.handle, self.r.stop_signal,
                                                 self.r.stop_timeout)
                self._ctx.logs.set_live(self.r.id, False)
            self.removed = True
        self._notify()

    def detach(self) -> None:
        """The agent is stopping: stop watching, leave every process running."""
        self._cancel_timer()
        self._cancel_run_tasks()
        for task in list(self._tasks):
            task.cancel()
        if self.r.handle is not None and self.r.state in ACTIVE_STATES:
            self._ctx.runtime.release(self.r.handle)

    # -- runs --------------------------------------------------------------------------------

    def _spec(self, *, kind: str = "app", command: str | None = None) -> RunSpec:
        r = self.r
        return RunSpec(service_id=r.id, name=r.name, command=command or r.command, cwd=r.cwd,
                       env={}, logs=self._raw_logs, run_dir=self._app_dir / "run",
                       stop_signal=r.stop_signal, image=r.image, kind=kind, limits=r.limits,
                       port=r.port, deployment_id=r.deployment_id)

    def _env(self, port: int) -> dict[str, str]:
        return run_environment(self._ctx.base_env, self._ctx.env.mapping(self.r.id),
                               self.r.run_env, port)

    async def _launch(self, begun: Begun | None, *, fresh: bool) -> None:
        """Build if needed, then spawn a run and move to ``starting``."""
        r = self.r
        attempt = 0 if fresh else r.attempt
        restart_count = 0 if fresh else r.restart_count
        if r.needs_build and r.build_cmd and not await self._build(begun):
            return
        port = r.port if r.fixed_port and r.port else free_port()
        spec = dataclasses.replace(self._spec(), env=self._env(port), listen_port=port)
        await self._ctx.logs.reset_raw(r.id)
        try:
            if r.cwd is None and r.image is None:
                raise RuntimeFailure("no release of this service has been deployed yet")
            handle = await self._ctx.runtime.start(spec)
        except RuntimeFailure as exc:
            exit = ExitRecord(exited_at=self._ctx.clock.time(), status=ExitStatus(),
                              reason="spawn_failed", stderr_tail=(str(exc),))
            await self._commit(S.FAILED, event="service.crashed", desired=DesiredState.RUNNING,
                               data={**exit.event_data(), "restarting": False}, exit=exit,
                               handle=None, deployment=self._deployment_failed(str(exc)))
            await self._note(f"could not start: {exc}")
            return
        self._gen += 1
        self._ctx.logs.set_live(r.id, True)
        self.health = HealthState(status="unknown" if r.health_check else "none")
        await self._commit(S.STARTING, desired=DesiredState.RUNNING, handle=handle,
                           listen_port=port, started_at=self._ctx.clock.time(), attempt=attempt,
                           restart_count=restart_count, next_restart_at=None,
                           deployment=self._deployment_succeeded())
        if begun is not None and not begun.done():
            begun.set_result(None)
        self._watch_run(self._gen, handle)
        container = _container_id(handle)
        await self._note(f"started container {container[:12]} on 127.0.0.1:{port}" if container
                         else f"started pid {handle.pid} with PORT={port}")

    async def _build(self, begun: Begun | None) -> bool:
        """Run the deployment's build_cmd once; True when it succeeded."""
        return await build_local(self, begun)

    def _deployment_succeeded(self) -> tuple[str, dict[str, Any] | None, str | None] | None:
        if self.r.deployment_status in ("pending", "building"):
            return ("succeeded", None, "deployment.succeeded")
        return None

    def _deployment_failed(self, why: str) -> tuple[str, dict[str, Any] | None, str | None] | None:
        if self.r.deployment_status in ("pending", "building"):
            return ("failed", {"reason": why}, "deployment.failed")
        return None

    def _watch_run(self, gen: int, handle: Handle) -> None:
        self._cancel_run_tasks()
        self._run_tasks = [self._spawn(self._await_exit(gen, handle)),
                           self._spawn(self._monitor(gen))]

    def _cancel_run_tasks(self) -> None:
        current = asyncio.current_task()
        for task in self._run_tasks:
            if task is not current:
                task.cancel()
        self._run_tasks = []

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer is not asyncio.current_task():
            self._timer.cancel()
        self._timer = None

    async def _await_exit(self, gen: int, handle: Handle) -> None:
        status = await self._ctx.runtime.wait(handle)
        async with self._lock:
            if gen != self._gen or self.r.state not in (S.STARTING, S.RUNNING, S.UNHEALTHY):
                return
            await self._after_run(status, "exited")

    async def _end_run(self, begun: Begun | None, *, desired: DesiredState) -> ExitStatus:
        """stopping: signal, grace, kill. Returns how the run ended. Lock held."""
        r = self.r
        # Persist first: if the store refuses (a full disk), the run is left as it was, still
        # watched. The lock is held, so the run's tasks cannot act in between.
        await self._commit(S.STOPPING, desired=desired)
        self._gen += 1
        self._cancel_run_tasks()
        if begun is not None and not begun.done():
            begun.set_result(None)
        assert r.handle is not None
        try:
            status = await self._ctx.runtime.stop(r.handle, r.stop_signal, r.stop_timeout)
        except RuntimeFailure as exc:
            log.error("service_stop_failed", service_id=r.id, error=str(exc))
            status = ExitStatus()
        self._ctx.logs.set_live(r.id, False)
        await self._ctx.logs.reset_raw(r.id)
        return status

    async def _exit_record(self, status: ExitStatus, reason: str) -> ExitRecord:
        return ExitRecord(exited_at=self._ctx.clock.time(), status=status, reason=reason,
                          started_at=self.r.started_at,
                          stderr_tail=tuple(self._ctx.logs.stderr_tail(self.r.id)))

    async def _after_run(self, status: ExitStatus, reason: str) -> None:
        """A run ended by itself (or was killed for its health): apply the restart policy."""
        r = self.r
        self._cancel_run_tasks()
        if reason == "exited":
            self._ctx.logs.set_live(r.id, False)
            await self._ctx.logs.reset_raw(r.id)
        exit = await self._exit_record(status, reason)
        uptime = exit.exited_at - (r.started_at or exit.exited_at)
        decision = r.policy.decide(status, attempt=r.attempt, uptime=uptime, rng=self._ctx.rng)
        data = exit.event_data()
        if decision.restart:
            await self._commit(S.BACKOFF, event="service.crashed",
                               data={**data, "restarting": True, "restart_in": decision.delay,
                                     "restart_count": r.restart_count + 1},
                               exit=exit, handle=None, attempt=decision.attempt,
                               restart_count=r.restart_count + 1,
                               next_restart_at=exit.exited_at + decision.delay)
            await self._note(f"{reason}: {status.describe()}; restarting in "
                             f"{decision.delay:.2f}s")
            self._timer = self._spawn(self._backoff(self._gen, decision.delay))
        elif status.success and reason == "exited" and not decision.gave_up:
            await self._commit(S.STOPPED, event="service.stopped", data=data, exit=exit,
                               handle=None, desired=DesiredState.STOPPED)
            await self._note(f"exited: {status.describe()}")
        else:
            await self._commit(S.CRASHED, event="service.crashed",
                               data={**data, "restarting": False,
                                     "restart_count": r.restart_count},
                               exit=exit, handle=None, attempt=decision.attempt)
            await self._note(f"{reason}: {status.describe()}; not restarting")

    async def _backoff(self, gen: int, delay: float) -> None:
        await asyncio.sleep(delay)
        async with self._lock:
            if gen != self._gen or self.r.state is not S.BACKOFF or self.removed:
                return
            self._timer = None
            await self._launch(None, fresh=False)

    async def _kill_run(self, reason: str) -> None:
        """Stop the run because of its health, then apply the restart policy. Lock held."""
        status = await self._end_run(None, desired=DesiredState.RUNNING)
        await self._after_run(status, reason)

    # -- readiness and health ----------------------------------------------------------------

    async def _monitor(self, gen: int) -> None:
        check = self.r.health_check
        if check is None:
            await asyncio.sleep(self._ctx.config.startup_seconds)
            async with self._lock:
                if gen == self._gen and self.r.state is S.STARTING:
                    await self._commit(S.RUNNING, event="service.started", data=self._run_data())
            return
        started = self._ctx.clock.monotonic()
        pause = _FIRST_PROBE
        while True:
            # A container is reached only at its published port, whatever check.port says.
            own = check.port if self.r.runtime != "docker" else None
            port = own or self.r.listen_port or 0
            result = await probe(check, port,
                                 hold=CONTAINER_HOLD if self.r.runtime == "docker" else 0.0)
            async with self._lock:
                if gen != self._gen:
                    return
                self.health.record(result, self._ctx.clock.time(),
                                   starting=self.r.state is S.STARTING)
                verdict = judge(self.r.state, self.health, check,
                                elapsed=self._ctx.clock.monotonic() - started)
                if verdict in ("running", "recovered"):
                    await self._commit(S.RUNNING, data=self._run_data(),
                                       event="service.started" if verdict == "running"
                                       else "service.recovered")
                elif verdict == "start_timeout":
                    await self._note(f"no passing health check in {check.start_timeout:g}s")
                    await self._kill_run("start_timeout")
                    return
                elif verdict == "unhealthy":
                    await self._commit(S.UNHEALTHY, event="service.unhealthy",
                                       data={**self._run_data(), "failures": self.health.failures,
                                             "error": self.health.last_error})
                    if check.restart:
                        await self._note(f"unhealthy ({self.health.last_error}); restarting")
                        await self._kill_run("unhealthy")
                        return
            running = self.r.state in RUNNING_STATES
            pause = check.interval if running else min(pause * 2, 1.0, check.interval)
            await asyncio.sleep(pause)

    def _run_data(self) -> dict[str, Any]:
        return {"pid": self.r.pid, "listen_port": self.r.listen_port, "port": self.r.port,
                "restart_count": self.r.restart_count}

    # -- persistence ---------------------------------------------------------------------------

    async def _commit(self, state: ServiceState | None = None, *, event: str | None = None,
                      data: dict[str, Any] | None = None, exit: ExitRecord | None = None,
                      deployment: tuple[str, dict[str, Any] | None, str | None] | None = None,
                      also: Callable[[Tx], None] | None = None, **changes: Any) -> None:
        """Change state and fields in one transaction with the event; then in memory.
        ``also`` writes more in the same transaction."""
        r = self.r
        new_state = state or r.state
        if new_state is not r.state:
            check_transition(r.state, new_state)
        now = self._ctx.clock.time()
        if exit is not None:
            changes["last_exit"] = exit
        if deployment is not None:
            changes["deployment_status"] = deployment[0]
        new = dataclasses.replace(r, state=new_state, boot_id=procfs.boot_id(), updated_at=now,
                                  **changes)
        base = {"service_id": r.id, "deployment_id": r.deployment_id, "name": r.name}

        def write(tx: Tx) -> None:
            update_service(tx, new, now)
            if exit is not None:
                insert_exit(tx, r.id, exit)
            if deployment is not None:
                status, detail, dep_event = deployment
                update_deployment_status(tx, r.deployment_id, status, detail, now)
                if dep_event:
                    tx.emit(dep_event, {"deployment_id": r.deployment_id, "name": r.name,
                                        "service_id": r.id, **(detail or {})})
            if event is not None:
                tx.emit(event, {**base, **(data or {})})
            if also is not None:
                also(tx)

        await self._ctx.db.write(write)
        self.r = new
        if new_state is not r.state:
            log.info("service_state_changed", service_id=r.id, name=r.name,
                     old=r.state.value, new=new_state.value)
        self._notify()

    async def _note(self, text: str) -> None:
        await self._ctx.logs.note(self.r.id, text)

def _container_id(handle: Handle | None) -> str | None:
    value = handle.data.get("container_id") if handle is not None else None
    return str(value) if value else None


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        log.error("service_task_failed", error_type=type(exc).__name__)
