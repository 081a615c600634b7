"""Adapters between the supervisor and the seams other parts defined for it.

The proxy asks a ``ServiceLocator`` where a service listens, the metrics sampler asks a
``ServiceSource`` which process trees to measure, the instance asks for the proxy's state and
the upstream link for what to report. Each of those parts was built without importing the
supervisor; this module is the one place that knows both sides.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import structlog

from agent.errors import AgentError, NotFound
from agent.events import EventBus
from agent.instance import InstanceService
from agent.metrics import ServiceSource
from agent.metrics.sampler import Sampler
from agent.metrics.sources import HealthContributor, HealthReason, ProxyState, ServiceProcess
from agent.proxy import ServiceLocator
from agent.proxy.backend import ProxyBackend
from agent.proxy.locator import StaticSite, Target, Upstream
from agent.proxy.routes import RouteService
from agent.supervisor.docker import DockerRuntime
from agent.supervisor.manager import Supervisor
from agent.supervisor.states import DesiredState, ServiceState
from agent.supervisor.views import ServiceInfo

if TYPE_CHECKING:  # the upstream package is imported only when the link is enabled
    from agent.upstream.providers import UpstreamProviders

__all__ = [
    "SupervisorView",
    "docker_health",
    "drop_orphan_routes",
    "follow_service_targets",
    "proxy_state_source",
    "restart_after_resync",
    "supervisor_providers",
    "uses_docker",
]

log = structlog.get_logger("agent.adapters")

#: States in which a service's current run takes traffic.
SERVING_STATES = frozenset({ServiceState.RUNNING, ServiceState.UNHEALTHY})

#: Events after which a service may listen somewhere else (or nowhere).
TARGET_EVENTS = frozenset({"service.started", "service.stopped", "service.crashed",
                           "service.recovered", "deployment.succeeded",
                           "deployment.rolled_back"})


class SupervisorView(ServiceLocator, ServiceSource):
    """The supervisor seen as the proxy's locator and the sampler's service source."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor
        self._processes: list[ServiceProcess] = []
        self._revision = -1

    def _info(self, service_id: str) -> ServiceInfo | None:
        try:
            return self._supervisor.get(service_id)
        except NotFound:
            return None

    def exists(self, service_id: str) -> bool:
        info = self._info(service_id)
        return info is not None and info.id == service_id

    def target(self, service_id: str, port: int | None) -> Target | None:
        """The current run's port, or for a static site (``runtime: "static"``) the directory
        of its current release; None while nothing serves."""
        info = self._info(service_id)
        if info is None or info.state not in SERVING_STATES:
            return None
        if info.runtime == "static":
            return StaticSite(info.cwd) if info.cwd is not None else None
        if info.listen_port is None:
            return None
        return Upstream("127.0.0.1", info.listen_port)

    def services(self) -> list[ServiceProcess]:
        """Every service as the sampler sees it: rebuilt only when the supervisor's revision
        moved (a quiet agent's sample touches no unit)."""
        revision = self._supervisor.revision
        if revision != self._revision:
            self._processes = [
                ServiceProcess(service_id=info.id, name=info.name,
                               runtime="docker" if info.runtime == "docker" else "process",
                               state=info.state.value, pid=info.pid,
                               container_id=info.container_id)
                for info in self._supervisor.list()]
            self._revision = revision
        return list(self._processes)


def proxy_state_source(proxy: ProxyBackend) -> Callable[[], ProxyState]:
    """The instance's view of the proxy backend."""

    def state() -> ProxyState:
        status = proxy.status()
        return ProxyState(backend=status.backend,
                          state="running" if status.reachable else "down",
                          detail=status.error)

    return state


def supervisor_providers(base: UpstreamProviders, supervisor: Supervisor,
                         instance: InstanceService, sampler: Sampler) -> UpstreamProviders:
    """What the upstream link reports: the instance's status, every service, and the host
    metrics summary of ``base`` with the sampler's CPU figure (a rate, which a one-off read
    cannot give)."""

    async def status() -> dict[str, Any]:
        current = instance.status
        return {**(await base.status()), "instance_id": instance.id, "health": current.status,
                "reasons": [{"code": r.code, "message": r.message} for r in current.reasons]}

    async def services() -> list[dict[str, Any]]:
        return [{"id": s.id, "name": s.name, "deployment_id": s.deployment_id,
                 "runtime": s.runtime, "state": s.state.value,
                 "desired_state": s.desired_state.value, "pid": s.pid, "port": s.port,
                 "listen_port": s.listen_port, "restart_count": s.restart_count,
                 "health": s.health, "started_at": s.started_at,
                 "container_id": s.container_id}
                for s in supervisor.list()]

    async def metrics() -> dict[str, Any]:
        summary = await base.metrics()
        snapshot = sampler.latest
        if snapshot is not None:
            summary["cpu_percent"] = snapshot.host.cpu.percent
        return summary

    from agent.upstream.providers import UpstreamProviders

    return UpstreamProviders(status=status, services=services, metrics=metrics)


async def follow_service_targets(bus: EventBus, proxy: ProxyBackend) -> AsyncIterator[None]:
    """While the block runs, re-point the proxy whenever a service may have moved.

    The built-in proxy asks the locator on every request and needs nothing; Caddy holds the
    upstream address in its config, so it is told through ``refresh``.
    """
    subscription = bus.subscribe()

    async def follow() -> None:
        async for event in subscription:
            service_id = event.data.get("service_id")
            if event.type in TARGET_EVENTS and isinstance(service_id, str):
                try:
                    await proxy.refresh(service_id)
                except Exception as exc:  # the proxy's own poll converges later
                    log.warning("proxy_refresh_failed", service_id=service_id,
                                error_type=type(exc).__name__)

    task = asyncio.create_task(follow())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        subscription.close()


async def drop_orphan_routes(routes: RouteService, locator: ServiceLocator) -> int:
    """Delete routes whose service no longer exists (e.g. a crash between the two deletes)."""
    dropped = 0
    for route in routes.all():
        if not locator.exists(route.service_id):
            await routes.delete(route.id)
            dropped += 1
    if dropped:
        log.info("orphan_routes_deleted", count=dropped)
    return dropped


def uses_docker(supervisor: Supervisor, *, default_runtime: str) -> Callable[[], bool]:
    """Whether Docker matters on this instance now: a Docker service exists, or plain
    deployments run in Docker by default."""

    def wanted() -> bool:
        return default_runtime == "docker" or supervisor.has_runtime("docker")

    return wanted


def docker_health(runtime: DockerRuntime, wanted: Callable[[], bool]) -> HealthContributor:
    """The instance is degraded (``runtime_unavailable``) while the engine does not answer
    and Docker matters here."""

    def reasons() -> tuple[HealthReason, ...]:
        if runtime.engine.available is False and wanted():
            return (HealthReason("runtime_unavailable", runtime.engine.message),)
        return ()

    return reasons


_RETRY_STATES = frozenset({ServiceState.FAILED, ServiceState.BACKOFF, ServiceState.STOPPED})


def restart_after_resync(supervisor: Supervisor) -> Callable[[set[str]], None]:
    """After the Docker engine came back: start again the services whose start failed while
    it was away (those still meant to run)."""
    tasks: set[asyncio.Task[None]] = set()

    async def start(service_id: str) -> None:
        try:
            info = supervisor.get(service_id)
            if info.desired_state is DesiredState.RUNNING and info.state in _RETRY_STATES:
                log.info("service_restarted_after_resync", service_id=service_id)
                await supervisor.start(service_id)
        except AgentError as exc:
            log.warning("service_resync_start_failed", service_id=service_id, code=exc.code)

    def restart(service_ids: set[str]) -> None:
        for service_id in sorted(service_ids):
            task = asyncio.get_running_loop().create_task(start(service_id))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    return restart
