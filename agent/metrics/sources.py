"""The seams between the metrics sampler and the parts it observes.

The supervisor (built elsewhere) tells the sampler which services exist through a
``ServiceSource``; other parts (runtimes, the proxy) tell the instance why it is unhealthy
through ``HealthContributor``s; a Docker-stats reader may later fill container figures
through a ``ContainerUsageSource``. Each has a trivial default here and a fake in
``agent.testing``. Nothing here imports aiohttp.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

from agent.records import record

__all__ = [
    "ContainerUsageSource",
    "HealthContributor",
    "HealthReason",
    "NoServices",
    "ProxyState",
    "ProxyStateSource",
    "ServiceProcess",
    "ServiceRuntime",
    "ServiceSource",
    "ServiceUsage",
    "unconfigured_proxy",
]

ServiceRuntime = Literal["process", "docker"]


@record
class ServiceProcess:
    """What the sampler needs to know about one service, as the supervisor sees it now.

    ``pid`` is the root of the service's process tree (its children are found by the
    sampler), or None when nothing runs. ``container_id`` is set for Docker services.
    """

    service_id: str
    name: str
    runtime: ServiceRuntime
    state: str
    pid: int | None = None
    container_id: str | None = None


class ServiceSource(Protocol):
    """Every service this agent manages. Called on the event loop: must be quick, no I/O."""

    def services(self) -> Sequence[ServiceProcess]:
        ...


class NoServices:
    """The default ``ServiceSource`` until the supervisor is wired in: no services."""

    def services(self) -> Sequence[ServiceProcess]:
        return ()


@record
class ServiceUsage:
    """Resource use of one service, summed over its whole process tree (or container).

    ``cpu_percent`` is in percent of one core (200 means two cores busy); ``open_files``
    counts open file descriptors (files, sockets, pipes).
    """

    cpu_percent: float
    rss_bytes: int
    threads: int
    open_files: int
    processes: int


class ContainerUsageSource(Protocol):
    """Container figures from the Docker engine (its stats API), when a reader is wired in.

    Called from the sampler's thread, once per Docker service per sample: it must answer
    from its own cache and never wait on the engine. None means "not known": the sampler
    then falls back to the container's cgroup and process tree.
    """

    def container_usage(self, container_id: str) -> ServiceUsage | None:
        ...


@record
class HealthReason:
    """Why the instance is degraded: a stable ``code`` and a sentence for people."""

    code: str
    message: str


class HealthContributor(Protocol):
    """A part of the agent that can make the instance degraded (a runtime, the proxy...).

    Called on the event loop after every sample: must be quick and never block. Returns
    the reasons that hold now (empty when all is well).
    """

    def __call__(self) -> Sequence[HealthReason]:
        ...


ProxyStatus = Literal["running", "down", "disabled", "unknown"]


@record
class ProxyState:
    """The reverse proxy's backend (``builtin``, ``caddy``, or ``none``) and whether it runs."""

    backend: str
    state: ProxyStatus
    detail: str | None = None


class ProxyStateSource(Protocol):
    """Reports the proxy's state; called on the event loop, must be quick."""

    def __call__(self) -> ProxyState:
        ...


def unconfigured_proxy() -> ProxyState:
    """The default ``ProxyStateSource`` until the proxy is wired in."""
    return ProxyState(backend="none", state="unknown", detail="no proxy backend is wired in")
