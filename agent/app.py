"""``create_app``: the only place where the agent's parts are built and wired together.

Everything long-lived is a ``cleanup_ctx`` entry (set up in order, torn down in reverse).
Nothing here reads the environment: the CLI passes what it read.
"""

from __future__ import annotations

import json
import secrets
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog
from aiohttp import web

from agent import __version__
from agent.api import accounts as accounts_api
from agent.api import auth as auth_api
from agent.api import deployments as deployments_api
from agent.api import env as env_api
from agent.api import health as health_api
from agent.api import logs as logs_api
from agent.api import projects as projects_api
from agent.api import services as services_api
from agent.api.middleware import add_standard_headers, error_middleware, make_auth_middleware
from agent.api.openapi import build_openapi
from agent.api.routing import EndpointTable, add_endpoints
from agent.auth import AuthService, PasswordHasher
from agent.auth.accounts import AccountService
from agent.auth.tokens import load_or_create_secret
from agent.clock import Clock, SystemClock
from agent.config import AgentConfig
from agent.deployments import DeploymentService
from agent.env import EnvService
from agent.events import EventBus
from agent.keys import (
    ACCOUNTS_KEY,
    AUTH_KEY,
    BUS_KEY,
    CLOCK_KEY,
    CONFIG_KEY,
    DB_KEY,
    DEPLOYMENTS_KEY,
    ENV_KEY,
    OPENAPI_KEY,
    PROJECTS_KEY,
    RATE_LIMITS_KEY,
    STARTED_AT_KEY,
    SUPERVISOR_KEY,
)
from agent.logs import LogManager
from agent.projects import ProjectService
from agent.ratelimit import RateLimits
from agent.store import Database, ensure_private_dir
from agent.supervisor.manager import Supervisor
from agent.supervisor.process import ProcessRuntime
from agent.supervisor.runtime import Runtime

__all__ = ["AdminSeed", "create_app"]

log = structlog.get_logger("agent")

CleanupCtx = Callable[[web.Application], AsyncIterator[None]]

ROUTE_TABLES: tuple[EndpointTable, ...] = (
    health_api.routes,
    auth_api.routes,
    accounts_api.routes,
    projects_api.routes,
    deployments_api.routes,
    services_api.routes,
    logs_api.routes,
    env_api.routes,
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
               runtimes: Mapping[str, Runtime] | None = None) -> web.Application:
    """Build the agent's aiohttp application from its configuration.

    ``clock`` and ``hasher`` may be replaced in tests. ``admin`` seeds the first user when
    the store has none (by default ``admin@localhost`` with a generated password).
    ``runtimes`` maps a runtime kind to its implementation (default: the process runtime).
    """
    clock = clock or SystemClock()
    state_dir = config.state.dir
    ensure_private_dir(state_dir)

    app = web.Application(
        middlewares=[error_middleware, make_auth_middleware(config.server.trusted_proxies)],
        client_max_size=config.server.max_body_bytes,
    )
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
    _wire_services(app, config, db, clock, runtimes)
    app[RATE_LIMITS_KEY] = RateLimits.per_hour(
        enabled=config.ratelimit.enabled,
        authenticated=config.ratelimit.authenticated_per_hour,
        unauthenticated=config.ratelimit.unauthenticated_per_hour,
        clock=clock, max_keys=config.ratelimit.max_tracked_clients)

    endpoints = add_endpoints(app, ROUTE_TABLES)
    app[OPENAPI_KEY] = json.dumps(build_openapi(endpoints, version=__version__)).encode()
    app.on_response_prepare.append(add_standard_headers)

    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_admin_ctx(admin or AdminSeed()))
    app.cleanup_ctx.append(_supervisor_ctx)
    app.on_shutdown.append(_end_log_followers)
    return app


def _wire_services(app: web.Application, config: AgentConfig, db: Database, clock: Clock,
                   runtimes: Mapping[str, Runtime] | None) -> None:
    """Supervision, logs, env vars and deployments."""
    services = config.services
    logs = LogManager(max_bytes=services.log_max_bytes, max_files=services.log_max_files,
                      clock=clock)
    env = EnvService(db, clock, max_bytes=services.env_value_max_bytes,
                     max_vars=services.env_max_vars)
    supervisor = Supervisor(db, clock, services, apps_dir=config.state.dir / "apps", logs=logs,
                            env=env, runtimes=runtimes or {"process": ProcessRuntime()})
    app[ENV_KEY] = env
    app[SUPERVISOR_KEY] = supervisor
    app[DEPLOYMENTS_KEY] = DeploymentService(db, clock, services, supervisor, env)


async def _supervisor_ctx(app: web.Application) -> AsyncIterator[None]:
    supervisor = app[SUPERVISOR_KEY]
    logs = supervisor.logs()
    await logs.open()
    await supervisor.open()
    yield
    await supervisor.close()
    await logs.close()


async def _end_log_followers(app: web.Application) -> None:
    await app[SUPERVISOR_KEY].logs().shutdown_followers()


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    db = app[DB_KEY]
    await db.open()
    log.info("store_opened", path=str(db.path))
    yield
    await db.close()
    log.info("store_closed")


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
    path.touch(mode=0o600)
    path.write_text(f"{email}\n{password}\n", encoding="utf-8")
    # Printed once, deliberately not through the logger: it is the one secret a user must see.
    print(f"dployr-agent: created the first admin {email} with password {password}\n"
          f"dployr-agent: (also saved in {path}; delete it after logging in)", file=sys.stderr)
