"""Replacing a service's run with a candidate from another release: the zero-downtime switch.

Package-internal, like ``recovery``: it works on a ``ServiceUnit`` under the unit's lock
through the unit's own steps. The plan comes from ``states.REPLACE_PLANS``:

``beside`` (a run exists)
    1. the candidate is recorded in ``services.pending_run`` (release, port, run name) and only
       then spawned, and its handle recorded too: an agent killed at any point of a switch
       finds every process it started on its next start (and stops the candidate);
    2. it gets a fresh free port as ``PORT`` and must pass the health gate: the deployment's
       ``health_check`` (within its ``start_timeout``), or else a TCP connect to ``PORT``
       (within the caller's ``start_timeout``), while it has not exited;
    3. the switch: one transaction makes it the service's run (handle, listen port, release,
       cwd, command, run env; ``service.started``) and records the old run as *retiring*;
       the unit watches the new run from here on;
    4. ``on_switch`` (the proxy's ``refresh``: once it returns no new request goes to the old
       run), then the old run is stopped gracefully (its stop signal, then ``stop_timeout``)
       and recorded as an exit with reason ``replaced``.

    A candidate that fails the gate (or exits, or cannot be spawned) is stopped, the old run
    never noticed anything, and ``SwitchFailed`` says why.
``fresh`` (no process)
    the same steps without an old run, the service going ``starting -> running``; a failure
    leaves it ``failed`` (exit reason ``gate_failed``).
fixed port (``fixed_port`` with a run)
    two runs cannot listen on one port: the old run is stopped first (``stopping``), then the
    candidate starts as above; when it fails, the old release is started again.

A container (a Docker service) is switched the same way: ``Replacement.image`` names the
image id the candidate runs (the switch records it as the service's image, ``services.
image_id``); its gate probes the published port (holding TCP connections, see
``health.CONTAINER_HOLD``), whatever a health check's ``port`` says.

A stop or delete of the service during the gate ends the candidate (``SwitchFailed``);
cancellation (the deploy was cancelled, the agent stops) before the switch stops the candidate
too and leaves the old run serving; after the switch it is too late to go back: the old run is
stopped and ``replace`` returns normally (the cancellation is absorbed).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import structlog

from agent.env import EnvService
from agent.records import record
from agent.store import Tx
from agent.supervisor.health import CONTAINER_HOLD, HealthCheck, HealthState, probe
from agent.supervisor.runtime import ExitStatus, Handle, RuntimeFailure
from agent.supervisor.states import DesiredState, ReplacePlan, replace_plan
from agent.supervisor.states import ServiceState as S
from agent.supervisor.store import ExitRecord, load_services
from agent.supervisor.unit import ServiceUnit, free_port, run_environment

__all__ = ["Replacement", "SwitchFailed", "SwitchResult", "replace"]

log = structlog.get_logger("agent.supervisor")
T = TypeVar("T")

# Seconds between gate probes: short at first (an app is usually up within a second, and
# every probe interval is added to the deploy), growing 20 % per probe up to _MAX_PAUSE.
_FIRST_PAUSE = 0.01
_MAX_PAUSE = 0.25
_GROWTH = 1.2
_TCP = HealthCheck(type="tcp", timeout=2.0)


@record
class Replacement:
    """What to run instead of the current run.

    ``env`` holds the app's variables (without ``PORT``); ``run_env`` what the release adds
    (``{"path_dirs": [...], "variables": {...}}``). ``restore_env`` makes ``env`` the
    service's env vars in the switch's transaction (a rollback restores a release's
    snapshot). ``on_switch`` runs after the switch and before the old run is stopped.
    ``image`` is the image (id) a container candidate runs; None keeps the service's image
    (process runs have none).
    """

    release_id: str
    cwd: Path
    command: str | None
    env: Mapping[str, str]
    run_env: Mapping[str, Any]
    start_timeout: float
    restore_env: bool = False
    on_switch: Callable[[], Awaitable[None]] | None = None
    image: str | None = None


@record
class SwitchResult:
    """The new run, and the run it replaced (if any)."""

    pid: int | None
    listen_port: int
    replaced_pid: int | None
    previous_release_id: str | None


class SwitchFailed(Exception):
    """The candidate did not start or pass its gate; the message is for users."""

    def __init__(self, reason: str, *, exit_code: int | None = None,
                 output: tuple[str, ...] = ()) -> None:
        self.reason = reason
        self.exit_code = exit_code
        self.output = output  # the last lines of the service's stderr, for the deploy log
        super().__init__(reason)


@record
class _Old:
    handle: Handle
    release_id: str | None
    started_at: float | None


async def replace(unit: ServiceUnit, rep: Replacement) -> SwitchResult:
    """Replace the unit's run with ``rep`` (see the module docstring)."""
    async with unit._lock:
        try:
            return await _replace(unit, rep)
        finally:
            unit._notify()


async def _replace(unit: ServiceUnit, rep: Replacement) -> SwitchResult:
    if unit.removed:
        raise SwitchFailed("The service was deleted during the deploy")
    unit._halt.clear()
    await _reload_settings(unit)
    r = unit.r
    plan = replace_plan(r.state, has_run=r.handle is not None)
    unit._cancel_timer()
    old = _Old(r.handle, r.release_id, r.started_at) if plan is ReplacePlan.BESIDE and r.handle else None
    fixed = bool(r.fixed_port and r.port)
    stopped_old = False
    if old is not None and fixed:
        status = await unit._end_run(None, desired=DesiredState.RUNNING)
        await unit._commit(S.STARTING, exit=_replaced(unit, status, old), handle=None,
                           listen_port=None)
        await unit._note(f"stopped pid {old.handle.pid} first (fixed port {r.port}): "
                         f"{status.describe()}")
        old, stopped_old = None, True
    elif old is None:
        await unit._commit(S.STARTING, handle=None, listen_port=None, next_restart_at=None)
        await unit._ctx.logs.reset_raw(r.id)
    port = r.port if fixed and r.port else free_port()
    run_name = "app-next" if old is not None and _run_name(old.handle) == "app" else "app"
    pending: dict[str, Any] = {"release_id": rep.release_id, "port": port, "run_name": run_name,
                               "handle": None}
    await unit._commit(pending_run=pending)
    unit._ctx.logs.set_live(r.id, True)
    handle: Handle | None = None
    try:
        handle = await _spawn(unit, rep, port, run_name)
        await unit._commit(pending_run={**pending, "handle": handle.to_json()})
        await unit._note(f"release {rep.release_id}: started pid {handle.pid} with PORT={port}; "
                         "waiting for its health check")
        await _gate(unit, handle, port, rep, serving=old is not None)
    except BaseException as exc:
        await _to_the_end(_abandon(unit, handle, old is not None, stopped_old, exc))
        raise
    return await _switch(unit, rep, handle, port, old)


async def _spawn(unit: ServiceUnit, rep: Replacement, port: int, run_name: str) -> Handle:
    """Start the candidate. Not interrupted by cancellation: a spawned process is never lost."""
    env = run_environment(unit._ctx.base_env, rep.env, rep.run_env, port)
    base = unit._spec()
    spec = dataclasses.replace(base, command=rep.command, cwd=rep.cwd, env=env,
                               run_name=run_name, listen_port=port,
                               image=rep.image or base.image)
    task = asyncio.ensure_future(unit._ctx.runtime.start(spec))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await _to_the_end(_stop_when_started(unit, task))
        raise
    except RuntimeFailure as exc:
        raise SwitchFailed(f"The new release could not be started: {exc}") from None


async def _stop_when_started(unit: ServiceUnit, task: asyncio.Future[Handle]) -> None:
    """A spawn still in progress when the deploy was cancelled: stop what it started."""
    with contextlib.suppress(Exception):
        handle = await task
        await unit._ctx.runtime.stop(handle, unit.r.stop_signal, unit.r.stop_timeout)


async def _gate(unit: ServiceUnit, handle: Handle, port: int, rep: Replacement, *,
                serving: bool) -> None:
    """Wait until the candidate passes its check; SwitchFailed when it exits, times out or
    the service is stopped meanwhile."""
    r = unit.r
    if r.runtime == "static":
        unit.health = HealthState(status="none")
        return  # nothing listens; the runtime checked the site's directory
    check = r.health_check or _TCP
    limit = r.health_check.start_timeout if r.health_check else rep.start_timeout
    container = r.runtime == "docker"
    probe_port = check.port if r.fixed_port and check.port and not container else port
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    exited = asyncio.ensure_future(unit._ctx.runtime.wait(handle))
    halted = asyncio.ensure_future(unit._halt.wait())
    keeps = "; the previous release keeps serving" if serving else ""
    pause, last_error = _FIRST_PAUSE, "no check yet"
    try:
        while True:
            if not exited.done() and not halted.done():
                result = await probe(check, probe_port, hold=CONTAINER_HOLD if container else 0.0)
                if result.ok and not exited.done():
                    unit.health = HealthState(status="passing" if r.health_check else "none",
                                              last_checked_at=unit._ctx.clock.time())
                    return
                last_error = result.error or "failed"
            if exited.done():
                status = exited.result()
                raise SwitchFailed(
                    f"The new release exited ({status.describe()}) before it passed its health "
                    f"check{keeps}; its output is in the service's log",
                    exit_code=_code(status), output=await _stderr(unit))
            if halted.done():
                raise SwitchFailed(f"The service was stopped during the deploy{keeps}")
            if loop.time() >= deadline:
                raise SwitchFailed(_timeout_reason(check, r.health_check is None, port, limit,
                                                   last_error) + keeps,
                                   output=await _stderr(unit))
            await asyncio.wait({exited, halted}, timeout=min(pause, deadline - loop.time()),
                               return_when=asyncio.FIRST_COMPLETED)
            pause = min(pause * _GROWTH, _MAX_PAUSE)
    finally:
        exited.cancel()
        halted.cancel()


def _timeout_reason(check: HealthCheck, default: bool, port: int, limit: float,
                    error: str) -> str:
    if default:
        return (f"The new release did not accept connections on PORT={port} within {limit:g}s "
                f"({error}); make the app listen on the port in $PORT, or set fixed_port")
    what = f"GET {check.path}" if check.type == "http" else "TCP connect"
    return (f"The new release did not pass its health check ({what} on port "
            f"{check.port or port}) within {limit:g}s: {error}")


async def _switch(unit: ServiceUnit, rep: Replacement, handle: Handle, port: int,
                  old: _Old | None) -> SwitchResult:
    """The candidate passed: make it the run, move the traffic, stop the old run."""
    r = unit.r
    now = unit._ctx.clock.time()
    unit._gen += 1
    unit._cancel_run_tasks()
    data = {"pid": handle.pid, "listen_port": port, "port": r.port, "restart_count": 0,
            "release_id": rep.release_id,
            "replaced_release_id": old.release_id if old is not None else None}
    also = _switch_writer(r.id, rep, now)
    await unit._commit(S.RUNNING, event="service.started", data=data, also=also,
                       desired=DesiredState.RUNNING, handle=handle, listen_port=port,
                       started_at=now, attempt=0, restart_count=0, next_restart_at=None,
                       cwd=rep.cwd, command=rep.command, release_id=rep.release_id,
                       run_env=dict(rep.run_env), image=rep.image or r.image,
                       pending_run={"retiring": old.handle.to_json()} if old else None)
    unit._watch_run(unit._gen, handle)
    log.info("service_switched", service_id=r.id, release_id=rep.release_id, pid=handle.pid,
             replaced_pid=old.handle.pid if old else None)
    # Past the switch the deploy has happened: a cancellation (the deploy cancelled, the agent
    # stopping) waits for the old run to stop and is then taken back, so that the caller
    # records the switch as done rather than as failed.
    await _to_the_end(_retire(unit, rep, old), swallow=True)
    return SwitchResult(pid=handle.pid, listen_port=port,
                        replaced_pid=old.handle.pid if old else None,
                        previous_release_id=old.release_id if old else None)


async def _to_the_end(coro: Awaitable[T], *, swallow: bool = False) -> T:
    """Await ``coro`` to its end even if the caller is cancelled meanwhile. Then let the
    cancellation through (the result is then lost: use it for steps that finish or clean up
    on their own), or with ``swallow`` take it back: what was cancelled is done anyway."""
    task = asyncio.ensure_future(coro)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    result = task.result()
    if cancelled:
        current = asyncio.current_task()
        if not swallow or current is None:
            raise asyncio.CancelledError
        current.uncancel()
    return result


async def _retire(unit: ServiceUnit, rep: Replacement, old: _Old | None) -> None:
    """After the switch: move the traffic (``on_switch``), then stop the old run."""
    r = unit.r
    if rep.on_switch is not None:
        try:
            await rep.on_switch()
        except Exception as exc:  # the proxy converges on its own poll; go on with the stop
            log.warning("switch_callback_failed", service_id=r.id, error_type=type(exc).__name__)
    if old is not None:
        try:
            status = await unit._ctx.runtime.stop(old.handle, r.stop_signal, r.stop_timeout)
        except RuntimeFailure as exc:
            log.error("service_stop_failed", service_id=r.id, error=str(exc))
            status = ExitStatus()
        await unit._commit(exit=_replaced(unit, status, old), pending_run=None)
        await unit._note(f"release {rep.release_id} took over; pid {old.handle.pid} stopped: "
                         f"{status.describe()}")
    else:
        await unit._note(f"release {rep.release_id} is running")


async def _abandon(unit: ServiceUnit, handle: Handle | None, serving: bool, stopped_old: bool,
                   error: BaseException) -> None:
    """The candidate failed (or the deploy was cancelled): stop it, put things back."""
    r = unit.r
    status = ExitStatus()
    if handle is not None:
        try:
            status = await unit._ctx.runtime.stop(handle, r.stop_signal, r.stop_timeout)
        except RuntimeFailure as exc:
            log.error("service_stop_failed", service_id=r.id, error=str(exc))
    reason = error.reason if isinstance(error, SwitchFailed) else "the deploy was cancelled"
    if serving:
        await unit._commit(pending_run=None)
        await unit._note(f"new release abandoned ({reason}); the current run keeps serving")
        return
    await unit._ctx.logs.drain(r.id, final=True)
    unit._ctx.logs.set_live(r.id, False)
    await unit._ctx.logs.reset_raw(r.id)
    exit = ExitRecord(exited_at=unit._ctx.clock.time(), status=status, reason="gate_failed",
                      started_at=r.started_at,
                      stderr_tail=tuple(unit._ctx.logs.stderr_tail(r.id)))
    await unit._commit(S.FAILED, exit=exit, handle=None, pending_run=None, listen_port=None)
    await unit._note(f"new release abandoned: {reason}")
    if stopped_old and not unit.removed and isinstance(error, SwitchFailed):
        await unit._note("starting the previous release again")
        await unit._launch(None, fresh=True)


def _replaced(unit: ServiceUnit, status: ExitStatus, old: _Old) -> ExitRecord:
    return ExitRecord(exited_at=unit._ctx.clock.time(), status=status, reason="replaced",
                      started_at=old.started_at)


def _switch_writer(service_id: str, rep: Replacement, now: float) -> Callable[[Tx], None] | None:
    """What the switch's transaction writes besides the run: the env snapshot of a rollback,
    the image a container runs."""
    if not rep.restore_env and not rep.image:
        return None

    def write(tx: Tx) -> None:
        if rep.restore_env:
            _env_writer(service_id, rep.env, now)(tx)
        if rep.image:
            tx.execute("UPDATE services SET image_id = ? WHERE id = ?", (rep.image, service_id))

    return write


def _env_writer(service_id: str, env: Mapping[str, str], now: float) -> Callable[[Tx], None]:
    def write(tx: Tx) -> None:
        secret = {row[0] for row in tx.execute(
            "SELECT key FROM service_env WHERE service_id = ? AND secret = 1", (service_id,))}
        tx.execute("DELETE FROM service_env WHERE service_id = ?", (service_id,))
        EnvService.insert_all(tx, service_id, env, now)
        for key in secret & set(env):
            tx.execute("UPDATE service_env SET secret = 1 WHERE service_id = ? AND key = ?",
                       (service_id, key))

    return write


async def _reload_settings(unit: ServiceUnit) -> None:
    """Take the deployment's settings as they are now (a PUT may have changed them)."""
    records = await unit._ctx.db.read_in_thread(lambda conn: load_services(conn, unit.r.id))
    if not records:
        return
    fresh = records[0]
    unit.r = dataclasses.replace(
        unit.r, port=fresh.port, fixed_port=fresh.fixed_port, image=fresh.image,
        build_cmd=fresh.build_cmd, policy=fresh.policy, health_check=fresh.health_check,
        stop_signal=fresh.stop_signal, stop_timeout=fresh.stop_timeout, limits=fresh.limits)


def _run_name(handle: Handle) -> str:
    status_file = str(handle.data.get("status_file", ""))
    return Path(status_file).name.removesuffix(".exit") or "app"


def _code(status: ExitStatus) -> int | None:
    if status.code is not None:
        return status.code
    return 128 + status.signal if status.signal is not None else None


async def _stderr(unit: ServiceUnit) -> tuple[str, ...]:
    with contextlib.suppress(OSError, KeyError):
        await unit._ctx.logs.drain(unit.r.id)
        return tuple(unit._ctx.logs.stderr_tail(unit.r.id)[-5:])
    return ()
