"""The agent's long-lived parts as ``cleanup_ctx`` entries: set up in order, torn down in reverse.

``create_app`` appends them in this order: store, first admin, Docker runtime, supervisor
(adopts the running apps), proxy (with the target follower), metrics (its first sample sees the proxy up),
session pruning, webhooks, upstream link. So
at shutdown the link goes first and the store last; the supervisor detaches from the apps and
never stops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import structlog
from aiohttp import web

from agent.adapters import drop_orphan_routes, follow_service_targets
from agent.keys import (
    ACCOUNTS_KEY,
    AGENT_METRICS_KEY,
    AUTH_KEY,
    BUS_KEY,
    CONFIG_KEY,
    DB_KEY,
    DOCKER_KEY,
    INSTANCE_KEY,
    LOCATOR_KEY,
    PROXY_KEY,
    REMOTE_DEPLOYMENTS_KEY,
    ROUTES_KEY,
    SAMPLER_KEY,
    SUPERVISOR_KEY,
    UPSTREAM_KEY,
    WEBHOOK_RUNTIME_KEY,
)
from agent.metrics.looplag import watch_loop_lag
from agent.records import record
from agent.store import StateLock
from agent.timers import sleep_interval

__all__ = [
    "INITIAL_PASSWORD_FILE",
    "AdminSeed",
    "admin_ctx",
    "deploy_ctx",
    "docker_ctx",
    "end_log_followers",
    "loop_lag_ctx",
    "metrics_ctx",
    "proxy_ctx",
    "session_pruning_ctx",
    "stop_upstream",
    "store_ctx",
    "supervisor_ctx",
    "upstream_ctx",
    "webhooks_ctx",
]

log = structlog.get_logger("agent")

CleanupCtx = Callable[[web.Application], AsyncIterator[None]]

INITIAL_PASSWORD_FILE = "initial-admin-password"
SESSION_PRUNE_INTERVAL = 3600.0


@record
class AdminSeed:
    """The first admin to create when there are no users. No password: generate one."""

    email: str = "admin@localhost"
    password: str | None = None


async def store_ctx(app: web.Application) -> AsyncIterator[None]:
    """Lock the state dir (one agent per state dir), open the database, close it last."""
    lock = StateLock(app[CONFIG_KEY].state.dir)
    lock.acquire()
    db = app[DB_KEY]
    try:
        await db.open()
    except BaseException:
        lock.release()
        raise
    log.info("store_opened", path=str(db.path))
    yield
    await db.close()
    lock.release()
    log.info("store_closed")


def admin_ctx(seed: AdminSeed) -> CleanupCtx:
    """Create the first admin when the store has no users."""

    async def bootstrap_admin(app: web.Application) -> AsyncIterator[None]:
        password = seed.password or secrets.token_urlsafe(18)
        created = await app[ACCOUNTS_KEY].ensure_initial_admin(seed.email, password)
        if created and seed.password is None:
            _announce_generated_password(app[CONFIG_KEY].state.dir, seed.email, password)
        elif created:
            log.info("initial_admin_created", email=seed.email)
        yield

    return bootstrap_admin


def _announce_generated_password(state_dir: Path, email: str, password: str) -> None:
    path = state_dir / INITIAL_PASSWORD_FILE
    path.unlink(missing_ok=True)
    # O_EXCL with 0600: the file never exists with looser permissions, even for a moment.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, f"{email}\n{password}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    # Printed once, deliberately not through the logger: it is the one secret a user must see.
    print(f"dployr-agent: created the first admin {email} with password {password}\n"
          f"dployr-agent: (also saved in {path}; delete it after logging in)", file=sys.stderr,
          flush=True)


async def docker_ctx(app: web.Application) -> AsyncIterator[None]:
    """The Docker runtime (engine monitor, stats, log streams): open before the supervisor
    adopts containers, closed after it detached (containers keep running)."""
    runtime = app[DOCKER_KEY]
    await runtime.open()
    yield
    await runtime.close()
    await runtime.engine.close()


async def supervisor_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the log capture and adopt (or restart) every service; detach at the end."""
    supervisor = app[SUPERVISOR_KEY]
    logs = supervisor.logs()
    await logs.open()
    await supervisor.open()
    yield
    await supervisor.close()
    await logs.close()


async def end_log_followers(app: web.Application) -> None:
    """on_shutdown: end open ``follow`` streams so the server need not wait for them."""
    await app[SUPERVISOR_KEY].logs().shutdown_followers()
    app[REMOTE_DEPLOYMENTS_KEY].logs.shutdown()


async def deploy_ctx(app: web.Application) -> AsyncIterator[None]:
    """Settle the deploys an earlier agent left in flight; at the end, stop the deploy queue
    (deploys in flight end failed, their new release stopped, the old one serving)."""
    remote = app[REMOTE_DEPLOYMENTS_KEY]
    await remote.recover()
    yield
    await remote.kit.close()


async def metrics_ctx(app: web.Application) -> AsyncIterator[None]:
    """Prime one sample (the first request finds one), then sample on the timer."""
    sampler, instance = app[SAMPLER_KEY], app[INSTANCE_KEY]
    await instance.start()
    await sampler.tick()
    sampler.start()
    yield
    await sampler.stop()
    await instance.stop()
    await asyncio.to_thread(sampler.close)


async def loop_lag_ctx(app: web.Application) -> AsyncIterator[None]:
    """Measure the event loop's lag into the agent's metrics while the agent runs."""
    task = asyncio.get_running_loop().create_task(watch_loop_lag(app[AGENT_METRICS_KEY].loop_lag))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def session_pruning_ctx(app: web.Application) -> AsyncIterator[None]:
    """Delete expired sessions and refresh tokens at start and then hourly."""

    async def prune_forever() -> None:
        while True:
            try:
                deleted = await app[AUTH_KEY].prune()
                if deleted:
                    log.info("sessions_pruned", count=deleted)
            except Exception as exc:  # keep pruning later; the store reports its own errors
                log.warning("session_prune_failed", error_type=type(exc).__name__)
            await sleep_interval(SESSION_PRUNE_INTERVAL)

    task = asyncio.create_task(prune_forever())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def webhooks_ctx(app: web.Application) -> AsyncIterator[None]:
    """The outbox fan-out and the delivery worker."""
    runtime = app[WEBHOOK_RUNTIME_KEY]
    await runtime.start()
    yield
    await runtime.stop()


async def proxy_ctx(app: web.Application) -> AsyncIterator[None]:
    """Serve the routes; keep the proxy pointed at each service's current run."""
    proxy = app[PROXY_KEY]
    await drop_orphan_routes(app[ROUTES_KEY], app[LOCATOR_KEY])
    await proxy.start()
    async with contextlib.asynccontextmanager(follow_service_targets)(app[BUS_KEY], proxy):
        yield
    await proxy.stop()


async def upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    """The outbound link to the control plane (only when ``[upstream] url`` is set)."""
    link = app[UPSTREAM_KEY]
    await link.start()
    yield
    await link.stop()


async def stop_upstream(app: web.Application) -> None:
    """on_shutdown: stop the link before the server waits for in-flight requests, some of
    which are the link's own tasks."""
    await app[UPSTREAM_KEY].stop()
