"""``create_app``: the only place where the agent's parts are built and wired together.

Parts are built here and stored under typed keys (``agent.keys``); their lifetimes are the
``cleanup_ctx`` entries of ``agent.lifecycle``; the seams between parts that were built
without knowing each other are bridged in ``agent.adapters``. Nothing here reads the
environment: the CLI passes what it read.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from agent import __version__
from agent import lifecycle as life
from agent.adapters import (
    SupervisorView,
    docker_health,
    proxy_state_source,
    restart_after_resync,
    supervisor_providers,
    uses_docker,
)
from agent.api import accounts as accounts_api
from agent.api import auth as auth_api
from agent.api import deployments as deployments_api
from agent.api import env as env_api
from agent.api import health as health_api
from agent.api import instances as instances_api
from agent.api import logs as logs_api
from agent.api import projects as projects_api
from agent.api import releases as releases_api
from agent.api import routes as routes_api
from agent.api import scrape as scrape_api
from agent.api import service_metrics as service_metrics_api
from agent.api import services as services_api
from agent.api import webhooks as webhooks_api
from agent.api.middleware import make_api_middleware
from agent.api.openapi import build_openapi
from agent.api.routing import Endpoint, EndpointTable, add_endpoints
from agent.auth import AuthService, PasswordHasher
from agent.auth.accounts import AccountService
from agent.auth.tokens import load_or_create_secret
from agent.clock import Clock, SystemClock
from agent.config import AgentConfig, parse_duration
from agent.delivery import DeployLogs, RemoteDeployments, RunRecorder, SupervisorStarter
from agent.deploy.kit import DeployKit
from agent.deployments import DeploymentService
from agent.docker.engine import DockerEngine
from agent.docker.release_images import ReleaseImages
from agent.docker.releases import ImageDeployments
from agent.docker.stats import DockerStats
from agent.env import EnvService
from agent.events import EventBus
from agent.ids import new_id
from agent.instance import InstanceService, RuntimeDetector
from agent.keys import (
    ACCOUNTS_KEY,
    AGENT_METRICS_KEY,
    AUTH_KEY,
    BUS_KEY,
    CLOCK_KEY,
    CONFIG_KEY,
    DB_KEY,
    DEPLOYMENTS_KEY,
    DOCKER_KEY,
    ENV_KEY,
    IMAGES_KEY,
    INSTANCE_KEY,
    LOCATOR_KEY,
    OPENAPI_KEY,
    PROJECTS_KEY,
    PROXY_KEY,
    RATE_LIMITS_KEY,
    REMOTE_DEPLOYMENTS_KEY,
    ROUTES_KEY,
    SAMPLER_KEY,
    STARTED_AT_KEY,
    SUPERVISOR_KEY,
    UPSTREAM_KEY,
    WEBHOOK_RUNTIME_KEY,
    WEBHOOKS_KEY,
)
from agent.lifecycle import AdminSeed
from agent.logs import LogManager
from agent.metrics import (
    AgentMetrics,
    History,
    HostReader,
    PsutilHostReader,
    Sampler,
    ServiceSource,
    SnapshotCollector,
)
from agent.metrics.processes import ProcessTreeSampler
from agent.projects import ProjectService
from agent.proxy import RouteService, ServiceLocator, make_backend
from agent.ratelimit import RateLimits
from agent.store import Database, Tx, ensure_private_dir
from agent.supervisor.docker import DockerRuntime
from agent.supervisor.manager import Supervisor
from agent.supervisor.process import ProcessRuntime
from agent.supervisor.runtime import Runtime
from agent.supervisor.static import StaticRuntime
from agent.webhooks import WebhookRuntime, WebhookService

__all__ = ["ROUTE_TABLES", "AdminSeed", "create_app"]

ROUTE_TABLES: tuple[EndpointTable, ...] = (
    health_api.routes,
    auth_api.routes,
    accounts_api.routes,
    projects_api.routes,
    deployments_api.routes,
    releases_api.routes,
    services_api.routes,
    logs_api.routes,
    env_api.routes,
    instances_api.routes,
    service_metrics_api.routes,
    scrape_api.routes,
    webhooks_api.routes,
    routes_api.routes,
)


def create_app(config: AgentConfig, *, clock: Clock | None = None,
               hasher: PasswordHasher | None = None,
               admin: AdminSeed | None = None,
               runtimes: Mapping[str, Runtime] | None = None,
               service_source: ServiceSource | None = None,
               host_reader: HostReader | None = None,
               runtime_detector: RuntimeDetector | None = None,
               locator: ServiceLocator | None = None) -> web.Application:
    """Build the agent's aiohttp application from its configuration.

    Every keyword replaces one part, for tests: ``clock``, ``hasher`` (password hashing),
    ``runtimes`` (runtime kind -> implementation; default the process and Docker runtimes),
    ``service_source`` (what the metrics sampler measures), ``host_reader`` (psutil host
    reads), ``runtime_detector`` (the runtime version probes), ``locator`` (where the proxy
    sends a service's traffic). By default the supervisor is both the locator and the
    service source. ``admin`` seeds the first user when the store has none (by default
    ``admin@localhost`` with a generated password).
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

    app[CONFIG_KEY] = config
    app[CLOCK_KEY] = clock
    app[BUS_KEY] = bus
    app[DB_KEY] = db
    app[STARTED_AT_KEY] = clock.monotonic()
    app[AUTH_KEY] = AuthService(db, hasher, load_or_create_secret(state_dir / "jwt-secret"),
                                config.auth, clock)
    app[ACCOUNTS_KEY] = AccountService(db, hasher, clock,
                                       password_min_length=config.auth.password_min_length)
    app[PROJECTS_KEY] = ProjectService(db, clock)
    app[RATE_LIMITS_KEY] = RateLimits.per_hour(
        enabled=config.ratelimit.enabled,
        authenticated=config.ratelimit.authenticated_per_hour,
        unauthenticated=config.ratelimit.unauthenticated_per_hour,
        clock=clock, max_keys=config.ratelimit.max_tracked_clients,
        burst=config.ratelimit.burst or None)

    docker = _add_docker(app, config, db, clock)
    supervisor = _add_services(app, config, db, clock,
                               runtimes or {"process": ProcessRuntime(), "docker": docker})
    _add_deploys(app, config, db, clock, supervisor, docker)
    view = SupervisorView(supervisor)
    _add_proxy(app, config, db, clock, locator or view)
    _add_metrics(app, config, clock, db, service_source or view, host_reader, runtime_detector)
    _wire_docker(app, config, db, clock, docker)
    _add_webhooks_and_upstream(app, config, db, bus, clock)

    endpoints = add_endpoints(app, ROUTE_TABLES)

    app[OPENAPI_KEY] = _openapi_once(endpoints)
    app.middlewares.append(make_api_middleware(
        app, auth=app[AUTH_KEY], limits=app[RATE_LIMITS_KEY],
        trusted_proxies=config.server.trusted_proxies, metrics=app[AGENT_METRICS_KEY],
        access_log=config.logging.access_log))

    app.cleanup_ctx.append(life.store_ctx)
    app.cleanup_ctx.append(life.admin_ctx(admin or AdminSeed()))
    app.cleanup_ctx.append(life.docker_ctx)
    app.cleanup_ctx.append(life.supervisor_ctx)
    app.cleanup_ctx.append(life.proxy_ctx)
    app.cleanup_ctx.append(life.deploy_ctx)
    app.cleanup_ctx.append(life.metrics_ctx)
    app.cleanup_ctx.append(life.loop_lag_ctx)
    app.cleanup_ctx.append(life.session_pruning_ctx)
    app.cleanup_ctx.append(life.webhooks_ctx)
    app.on_shutdown.append(life.end_log_followers)
    if config.upstream.enabled:
        app.cleanup_ctx.append(life.upstream_ctx)
        app.on_shutdown.append(life.stop_upstream)
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


def _add_docker(app: web.Application, config: AgentConfig, db: Database,
                clock: Clock) -> DockerRuntime:
    """The Docker runtime (its client is created on first use: no engine is needed here)."""
    engine = DockerEngine(config.docker, clock=clock)
    stats = DockerStats(engine, clock, interval=config.docker.stats_interval)
    runtime = DockerRuntime(engine, config.docker, instance_id=_instance_id_loader(db),
                            stats=stats)
    app[DOCKER_KEY] = runtime
    return runtime


def _instance_id_loader(db: Database) -> Callable[[], Awaitable[str]]:
    """The instance id (labels of containers), as InstanceService keeps it in ``meta``; loaded
    (or created, with the same idempotent statement) on first use."""
    cached: list[str] = []

    def load_or_create(tx: Tx) -> str:
        tx.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('instance_id', ?)",
                   (new_id("ins"),))
        return str(tx.execute("SELECT value FROM meta WHERE key = 'instance_id'").fetchone()[0])

    async def load() -> str:
        if not cached:
            cached.append(await db.write(load_or_create))
        return cached[0]

    return load


def _wire_docker(app: web.Application, config: AgentConfig, db: Database, clock: Clock,
                 docker: DockerRuntime) -> None:
    """Image deployments, and Docker's seams: stats, health, re-sync after an outage."""
    supervisor = app[SUPERVISOR_KEY]
    wanted = uses_docker(supervisor, default_runtime=config.runtime.default)
    docker.engine.set_wanted(wanted)
    docker.add_resync_listener(restart_after_resync(supervisor))
    app[SAMPLER_KEY].set_container_usage(docker.stats_cache)
    app[INSTANCE_KEY].add_health_contributor(docker_health(docker, wanted))
    images = ImageDeployments(db, clock, docker.engine, supervisor=supervisor,
                              env=app[ENV_KEY], deployments=app[DEPLOYMENTS_KEY],
                              services=config.services, docker_config=config.docker,
                              deploy=config.deploy)
    app[IMAGES_KEY] = images
    app[DEPLOYMENTS_KEY].add_removal_hook(images.remove_images)


def _add_services(app: web.Application, config: AgentConfig, db: Database, clock: Clock,
                  runtimes: Mapping[str, Runtime]) -> Supervisor:
    """Supervision, logs, env vars and deployments."""
    services = config.services
    logs = LogManager(max_bytes=services.log_max_bytes, max_files=services.log_max_files,
                      clock=clock)
    env = EnvService(db, clock, max_bytes=services.env_value_max_bytes,
                     max_vars=services.env_max_vars)
    supervisor = Supervisor(db, clock, services, apps_dir=config.state.dir / "apps", logs=logs,
                            env=env, build_timeout=config.deploy.build_timeout,
                            runtimes={"static": StaticRuntime(), **runtimes})
    app[ENV_KEY] = env
    app[SUPERVISOR_KEY] = supervisor
    app[DEPLOYMENTS_KEY] = DeploymentService(db, clock, services, supervisor, env)
    return supervisor


def _add_deploys(app: web.Application, config: AgentConfig, db: Database, clock: Clock,
                 supervisor: Supervisor, docker: DockerRuntime) -> None:
    """Deployments from git: the deploy kit, its starter (the supervisor's switch), its
    observer (the store), its Dockerfile builds, and the remote deployments service."""
    releases = DeployKit.release_store(config, clock)
    logs = DeployLogs(config.state.dir / "apps")

    async def refresh(service_id: str) -> None:
        await app[PROXY_KEY].refresh(service_id)

    starter = SupervisorStarter(supervisor, releases, start_timeout=config.deploy.start_timeout,
                                refresh=refresh)
    recorder = RunRecorder(db, clock, releases)
    images = ReleaseImages(docker.engine, timeout=config.deploy.build_timeout,
                           instance_id=_instance_id_loader(db),
                           service_id=lambda name: _service_id(db, name))
    kit = DeployKit.from_config(config, clock=clock, starter=starter, observer=recorder,
                                log_listener=logs.notify, releases=releases, images=images)
    remote = RemoteDeployments(db, clock, config, supervisor, app[ENV_KEY], kit, logs, recorder)
    app[REMOTE_DEPLOYMENTS_KEY] = remote
    app[DEPLOYMENTS_KEY].add_removal_hook(remote.before_removal, before=True)
    app[DEPLOYMENTS_KEY].add_removal_hook(remote.after_removal)


def _service_id(db: Database, name: str) -> str | None:
    row = db.query_one("SELECT id FROM services WHERE name = ?", (name,))
    return str(row["id"]) if row is not None else None


def _add_proxy(app: web.Application, config: AgentConfig, db: Database, clock: Clock,
               locator: ServiceLocator) -> None:
    """Proxy routes and the backend that serves them."""
    routes = RouteService(db, locator, clock)
    app[LOCATOR_KEY] = locator
    app[ROUTES_KEY] = routes
    app[PROXY_KEY] = make_backend(config.proxy, routes, locator, clock)
    app[DEPLOYMENTS_KEY].add_removal_hook(routes.delete_routes_for_service)


def _add_metrics(app: web.Application, config: AgentConfig, clock: Clock, db: Database,
                 service_source: ServiceSource, host_reader: HostReader | None,
                 runtime_detector: RuntimeDetector | None) -> None:
    """The sampler, its history, the instance, and the Prometheus registry."""
    settings = config.metrics
    history = History(interval=settings.interval, recent=parse_duration(settings.recent),
                      history=parse_duration(settings.history),
                      resolution=parse_duration(settings.history_resolution))
    sampler = Sampler(interval=settings.interval, clock=clock,
                      host_reader=host_reader or PsutilHostReader(),
                      processes=ProcessTreeSampler(), services=service_source, history=history)
    instance = InstanceService(db=db, clock=clock, config=config, sampler=sampler,
                               runtime_detector=runtime_detector)
    instance.set_proxy_state(proxy_state_source(app[PROXY_KEY]))
    sampler.add_listener(instance.on_sample)
    agent_metrics = AgentMetrics()
    agent_metrics.add_collector(SnapshotCollector(sampler, instance.degraded))
    app[SAMPLER_KEY] = sampler
    app[INSTANCE_KEY] = instance
    app[AGENT_METRICS_KEY] = agent_metrics
    instances_api.install(app)


def _add_webhooks_and_upstream(app: web.Application, config: AgentConfig, db: Database,
                               bus: EventBus, clock: Clock) -> None:
    """Webhook delivery from the outbox, and the control-plane link (when configured)."""
    app[WEBHOOKS_KEY] = WebhookService(db, clock, config.webhooks)
    app[WEBHOOK_RUNTIME_KEY] = WebhookRuntime(db, bus, clock, config.webhooks,
                                              user_agent=f"dployr-agent/{__version__}")
    if not config.upstream.enabled:
        return  # the link's code is not even imported: about half a megabyte less at start
    from agent.upstream import UpstreamLink, default_providers, local_base_url

    base = default_providers(clock, app[STARTED_AT_KEY], config.state.dir)
    app[UPSTREAM_KEY] = UpstreamLink(
        db, bus, clock, config.upstream, instance=config.instance,
        base_url=local_base_url(config.server.listen),
        providers=supervisor_providers(base, app[SUPERVISOR_KEY], app[INSTANCE_KEY],
                                       app[SAMPLER_KEY]))
