"""``create_app``: the only place where the agent's parts are built and wired together.

Everything long-lived is a ``cleanup_ctx`` entry (set up in order, torn down in reverse).
Nothing here reads the environment: the CLI passes what it read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from aiohttp import web

from agent import __version__
from agent.api import accounts as accounts_api
from agent.api import auth as auth_api
from agent.api import health as health_api
from agent.api import instances as instances_api
from agent.api import projects as projects_api
from agent.api import scrape as scrape_api
from agent.api import service_metrics as service_metrics_api
from agent.api import webhooks as webhooks_api
from agent.api.middleware import add_standard_headers, make_api_middleware
from agent.api.openapi import build_openapi
from agent.api.routing import Endpoint, EndpointTable, add_endpoints
from agent.auth import AuthService, PasswordHasher
from agent.auth.accounts import AccountService
from agent.auth.tokens import load_or_create_secret
from agent.clock import Clock, SystemClock
from agent.config import AgentConfig, parse_duration
from agent.events import EventBus
from agent.instance import InstanceService, RuntimeDetector
from agent.keys import (
    ACCOUNTS_KEY,
    AGENT_METRICS_KEY,
    AUTH_KEY,
    BUS_KEY,
    CLOCK_KEY,
    CONFIG_KEY,
    DB_KEY,
    INSTANCE_KEY,
    OPENAPI_KEY,
    PROJECTS_KEY,
    RATE_LIMITS_KEY,
    SAMPLER_KEY,
    STARTED_AT_KEY,
    UPSTREAM_KEY,
    WEBHOOK_RUNTIME_KEY,
    WEBHOOKS_KEY,
)
from agent.metrics import (
    AgentMetrics,
    History,
    HostReader,
    NoServices,
    PsutilHostReader,
    Sampler,
    ServiceSource,
    SnapshotCollector,
)
from agent.metrics.processes import ProcessTreeSampler
from agent.projects import ProjectService
from agent.ratelimit import RateLimits
from agent.store import Database, StateLock, ensure_private_dir
from agent.webhooks import WebhookRuntime, WebhookService

__all__ = ["AdminSeed", "create_app"]

log = structlog.get_logger("agent")

CleanupCtx = Callable[[web.Application], AsyncIterator[None]]

ROUTE_TABLES: tuple[EndpointTable, ...] = (
    health_api.routes,
    auth_api.routes,
    accounts_api.routes,
    projects_api.routes,
    instances_api.routes,
    service_metrics_api.routes,
    scrape_api.routes,

    webhooks_api.routes,
)

INITIAL_PASSWORD_FILE = "initial-admin-password"


@dataclass(frozen=True, slots=True)
class AdminSeed:
    """The first admin to create when there are no users. No password: generate one."""

    email: str = "admin@localhost"
    password: str | None = None


def create_app(config: AgentConfig, *, clock: Clock | None = None,
               hasher: PasswordHasher | None = None,
               admin: AdminSeed | None = None,
               service_source: ServiceSource | None = None,
               host_reader: HostReader | None = None,
               runtime_detector: RuntimeDetector | None = None) -> web.Application:
    """Build the agent's aiohttp application from its configuration.

    ``clock`` and ``hasher`` may be replaced in tests. ``admin`` seeds the first user when
    the store has none (by default ``admin@localhost`` with a generated password).
    ``service_source`` lists the services the metrics sampler measures (none by default),
    ``host_reader`` replaces the psutil host reads, ``runtime_detector`` the runtime probes.
    """
    clock = clock or SystemClock()
    state_dir = config.state.dir
    ensure_private_dir(state_dir)

    app = web.Application(client_max_size=config.server.max_body_bytes)
    bus = EventBus()
    db = Database(state_dir / "agent.db", bus=bus, clock=clock)
    hasher = hasher or PasswordHasher(
        time_cost=config.auth.hash_time_cost, memory_kib=config.auth.hash_memory_kib,
        parallelism=config.auth.hash_parallelism, concurrency=config.auth.hash_concurrency)
    secret = load_or_create_secret(state_dir / "jwt-secret")

    app[CONFIG_KEY] = config
    app[CLOCK_KEY] = clock
    app[BUS_KEY] = bus
    app[DB_KEY] = db
    app[STARTED_AT_KEY] = clock.monotonic()
    app[AUTH_KEY] = AuthService(db, hasher, secret, config.auth, clock)
    app[ACCOUNTS_KEY] = AccountService(db, hasher, clock,
                                       password_min_length=config.auth.password_min_length)
    app[PROJECTS_KEY] = ProjectService(db, clock)
    app[RATE_LIMITS_KEY] = RateLimits.per_hour(
        enabled=config.ratelimit.enabled,
        authenticated=config.ratelimit.authenticated_per_hour,
        unauthenticated=config.ratelimit.unauthenticated_per_hour,
        clock=clock, max_keys=config.ratelimit.max_tracked_clients)

    _add_metrics(app, config, clock, db, service_source, host_reader, runtime_detector)

    app[WEBHOOKS_KEY] = WebhookService(db, clock, config.webhooks)
    app[WEBHOOK_RUNTIME_KEY] = WebhookRuntime(db, bus, clock, config.webhooks,
                                              user_agent=f"dployr-agent/{__version__}")
    if config.upstream.enabled:
        from agent.upstream import UpstreamLink, default_providers, local_base_url

        app[UPSTREAM_KEY] = UpstreamLink(
            db, bus, clock, config.upstream, instance=config.instance,
            base_url=local_base_url(config.server.listen),
            providers=default_providers(clock, app[STARTED_AT_KEY], state_dir))

    endpoints = add_endpoints(app, ROUTE_TABLES)

    app[OPENAPI_KEY] = _openapi_once(endpoints)
    app.middlewares.append(make_api_middleware(
        app, auth=app[AUTH_KEY], limits=app[RATE_LIMITS_KEY],
        trusted_proxies=config.server.trusted_proxies, metrics=app[AGENT_METRICS_KEY],
        access_log=config.logging.access_log))
    app.on_response_prepare.append(add_standard_headers)

    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_admin_ctx(admin or AdminSeed()))
    app.cleanup_ctx.append(_metrics_ctx)

    app.cleanup_ctx.append(_session_pruning_ctx)

    app.cleanup_ctx.append(_webhooks_ctx)
    if config.upstream.enabled:
        app.cleanup_ctx.append(_upstream_ctx)
        app.on_shutdown.append(_stop_upstream)
    return app


def _openapi_once(endpoints: list[Endpoint]) -> Callable[[], bytes]:
    """The OpenAPI document, generated on its first request rather than at start: generating
    every schema takes ~15 ms and leaves ~0.7 MB of resident memory that an agent whose
    description is never asked for does not need."""
    document: list[bytes] = []

    def openapi() -> bytes:
        if not document:
            document.append(json.dumps(build_openapi(endpoints, version=__version__)).encode())
        return document[0]

    return openapi


def _add_metrics(app: web.Application, config: AgentConfig, clock: Clock, db: Database,
                 service_source: ServiceSource | None, host_reader: HostReader | None,
                 runtime_detector: RuntimeDetector | None) -> None:
    """The sampler, its history, the instance, and the Prometheus registry."""
    settings = config.metrics
    history = History(interval=settings.interval, recent=parse_duration(settings.recent),
                      history=parse_duration(settings.history),
                      resolution=parse_duration(settings.history_resolution))
    sampler = Sampler(interval=settings.interval, clock=clock,
                      host_reader=host_reader or PsutilHostReader(),
                      processes=ProcessTreeSampler(), services=service_source or NoServices(),
                      history=history)
    instance = InstanceService(db=db, clock=clock, config=config, sampler=sampler,
                               runtime_detector=runtime_detector)
    sampler.add_listener(instance.on_sample)
    agent_metrics = AgentMetrics()
    agent_metrics.add_collector(SnapshotCollector(sampler, instance.degraded))
    app[SAMPLER_KEY] = sampler
    app[INSTANCE_KEY] = instance
    app[AGENT_METRICS_KEY] = agent_metrics
    instances_api.install(app)


async def _metrics_ctx(app: web.Application) -> AsyncIterator[None]:
    sampler, instance = app[SAMPLER_KEY], app[INSTANCE_KEY]
    await instance.start()
    await sampler.tick()  # prime the cache: the first request finds a sample
    sampler.start()
    yield
    await sampler.stop()
    await instance.stop()
    await asyncio.to_thread(sampler.close)


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
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


SESSION_PRUNE_INTERVAL = 3600.0


async def _session_pruning_ctx(app: web.Application) -> AsyncIterator[None]:
    """Delete expired sessions and refresh tokens at start and then hourly."""

    async def prune_forever() -> None:
        while True:
            try:
                deleted = await app[AUTH_KEY].prune()
                if deleted:
                    log.info("sessions_pruned", count=deleted)
            except Exception as exc:  # keep pruning later; the store reports its own errors
                log.warning("session_prune_failed", error_type=type(exc).__name__)
            await asyncio.sleep(SESSION_PRUNE_INTERVAL)

    task = asyncio.create_task(prune_forever())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

async def _webhooks_ctx(app: web.Application) -> AsyncIterator[None]:
    runtime = app[WEBHOOK_RUNTIME_KEY]
    await runtime.start()
    yield
    await runtime.stop()


async def _upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    link = app[UPSTREAM_KEY]
    await link.start()
    yield
    await link.stop()


async def _stop_upstream(app: web.Application) -> None:
    # Before the server waits for in-flight requests: some of them are the link's own tasks.
    await app[UPSTREAM_KEY].stop()


def _admin_ctx(seed: AdminSeed) -> CleanupCtx:
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
