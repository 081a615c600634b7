"""Instances endpoints (seed: Instances). The agent is the one instance it lists.

Every answer comes from caches (the sampler's latest snapshot, facts read at start):
a request never samples the host and never waits.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from aiohttp import web
from pydantic import Field

from agent.api.metrics_schemas import (
    HistoryQuery,
    HostMetrics,
    MetricsHistory,
    host_metrics,
    service_metrics,
)
from agent.api.routing import EndpointTable
from agent.api.schemas import Page, PageQuery, Resource
from agent.errors import ServiceUnavailable
from agent.instance import InstanceReport
from agent.keys import CLOCK_KEY, INSTANCE_KEY, SAMPLER_KEY
from agent.metrics.sampler import Sampler
from agent.metrics.series import host_series
from agent.metrics.snapshot import Snapshot
from agent.timefmt import from_epoch

__all__ = ["routes"]

routes = EndpointTable("instances")

_CACHE_KEY = web.AppKey("instance_metrics_cache", dict)  # snapshot seq -> rendered JSON


class Address(Resource):
    interface: str
    address: str
    family: Literal["ipv4", "ipv6"]


class Reason(Resource):
    code: str = Field(examples=["disk_almost_full"],
                      description="disk_almost_full, inodes_almost_full, state_disk_almost_full, proxy_down, "
                                  "runtime_unavailable, or another part's code")
    message: str = Field(examples=["/ is 93% full (1.2 GiB free)"])


class ServiceCounts(Resource):
    total: int
    by_state: dict[str, int] = Field(examples=[{"running": 3, "stopped": 1}])


class Runtime(Resource):
    name: str = Field(examples=["node"])
    available: bool
    version: str | None = Field(examples=["20.11.1"])
    detail: str | None = Field(description="Why it is unavailable")


class Proxy(Resource):
    backend: str = Field(examples=["caddy"], description="builtin, caddy, or none")
    state: Literal["running", "down", "disabled", "unknown"]
    detail: str | None


class Instance(Resource):
    id: str = Field(examples=["ins_01hx3v9k2m7q8r4t5w6y"],
                    description="Generated once and kept across restarts")
    name: str = Field(description="From [instance] name; the hostname by default")
    hostname: str
    addresses: list[Address] = Field(description="Non-loopback, non-link-local addresses")
    os: str = Field(examples=["Debian GNU/Linux 12 (bookworm)"])
    kernel: str = Field(examples=["6.1.0-18-amd64"])
    architecture: str = Field(examples=["x86_64"])
    cpu_count: int
    memory_total_bytes: int = Field(description="RAM, or the cgroup's limit in a container")
    agent_version: str
    uptime_seconds: float = Field(description="Seconds since the host booted")
    agent_uptime_seconds: float
    status: Literal["healthy", "degraded"]
    reasons: list[Reason] = Field(description="Why the instance is degraded; empty if healthy")
    services: ServiceCounts
    runtimes: list[Runtime]
    runtimes_detected: bool = Field(description="False while detection (at start) runs")
    proxy: Proxy
    labels: dict[str, str]
    sampled_at: datetime | None = Field(description="The sample the figures come from")

    @classmethod
    def of(cls, r: InstanceReport) -> Instance:
        host = r.snapshot.host if r.snapshot is not None else None
        return cls(
            id=r.id, name=r.name, hostname=r.hostname,
            addresses=[Address(interface=a.interface, address=a.address,
                               family="ipv6" if a.family == "ipv6" else "ipv4")
                       for a in (host.addresses if host else ())],
            os=r.facts.os, kernel=r.facts.kernel, architecture=r.facts.architecture,
            cpu_count=r.facts.cpu_count,
            memory_total_bytes=host.memory.total if host else 0,
            agent_version=r.agent_version,
            uptime_seconds=round(host.uptime_seconds, 3) if host else 0.0,
            agent_uptime_seconds=round(r.agent_uptime_seconds, 3),
            status=r.status.status,
            reasons=[Reason(code=x.code, message=x.message) for x in r.status.reasons],
            services=ServiceCounts(total=sum(r.services_by_state.values()),
                                   by_state=r.services_by_state),
            runtimes=[Runtime(name=x.name, available=x.available, version=x.version,
                              detail=x.detail) for x in r.runtimes],
            runtimes_detected=r.runtimes_detected,
            proxy=Proxy(backend=r.proxy.backend, state=r.proxy.state, detail=r.proxy.detail),
            labels=r.labels,
            sampled_at=from_epoch(host.timestamp) if host else None,
        )


class InstancePage(Page[Instance]):
    pass


@routes.get("/v1/instances", summary="List instances (this agent's own)", access="viewer",
            query=PageQuery, response=InstancePage)
async def list_instances(request: web.Request, query: PageQuery) -> InstancePage:
    instance = request.app[INSTANCE_KEY]
    if query.cursor is not None and query.cursor >= instance.id:
        return InstancePage(data=[])
    return InstancePage(data=[Instance.of(instance.report())])


@routes.get("/v1/instances/{id}", summary="Get an instance ('self' is this agent)",
            access="viewer", response=Instance)
async def get_instance(request: web.Request) -> Instance:
    instance = request.app[INSTANCE_KEY]
    instance.resolve(request.match_info["id"])
    return Instance.of(instance.report())


def _latest(sampler: Sampler) -> Snapshot:
    if sampler.latest is None:
        raise ServiceUnavailable("No metrics sample yet; try again in a few seconds",
                                 headers={"Retry-After": str(max(1, round(sampler.interval)))})
    return sampler.latest


def _metrics(request: web.Request, snapshot: Snapshot, history: MetricsHistory | None
             ) -> HostMetrics:
    sampler = request.app[SAMPLER_KEY]
    services = [service_metrics(s.service, s, snapshot.host.timestamp)
                for s in snapshot.services]
    return host_metrics(request.app[INSTANCE_KEY].id, sampler.interval, snapshot.host,
                        services, history)


@routes.get("/v1/instances/{id}/metrics", summary="Host and per-service metrics",
            access="viewer", query=HistoryQuery, response=HostMetrics, errors=(503,),
            description="The latest sample; with `window` (and `step`), history of the host "
                        "series averaged per step.")
async def get_instance_metrics(request: web.Request, query: HistoryQuery) -> web.StreamResponse | HostMetrics:
    request.app[INSTANCE_KEY].resolve(request.match_info["id"])
    sampler = request.app[SAMPLER_KEY]
    plan = sampler.history.plan(query.window_seconds, query.step_seconds)
    snapshot = _latest(sampler)
    if plan is None:
        # The same sample serves every request until the next one: render it once.
        cache = request.app[_CACHE_KEY]
        body = cache.get(snapshot.seq)
        if body is None:
            body = _metrics(request, snapshot, None).model_dump_json().encode()
            cache.clear()
            cache[snapshot.seq] = body
        return web.Response(body=body, content_type="application/json")
    series = sampler.history.query(plan, list(host_series(snapshot.host)),
                                   now=request.app[CLOCK_KEY].time())
    return _metrics(request, snapshot, MetricsHistory.of(series))


def install(app: web.Application) -> None:
    """Set up this module's per-app state (the rendered-sample cache)."""
    app[_CACHE_KEY] = {}
