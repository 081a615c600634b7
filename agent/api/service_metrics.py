"""``GET /v1/services/{id}/metrics``: one service's resource use, with history.

Services come from the ``ServiceSource`` (the supervisor); the figures from the sampler's
latest snapshot. A service added since that sample is shown with ``usage: null``.
"""

from __future__ import annotations

from aiohttp import web

from agent.api.metrics_schemas import HistoryQuery, MetricsHistory, ServiceMetrics, service_metrics
from agent.api.routing import EndpointTable
from agent.errors import NotFound
from agent.keys import CLOCK_KEY, SAMPLER_KEY
from agent.metrics.series import SERVICE_SERIES, service_key

__all__ = ["routes"]

routes = EndpointTable("services")


@routes.get("/v1/services/{id}/metrics", summary="Metrics of one service",
            access="viewer", query=HistoryQuery, response=ServiceMetrics,
            description="CPU, memory, threads and open files of the service's whole process "
                        "tree (or container). `{id}` is the service's id or name. With "
                        "`window` (and `step`), history averaged per step.")
async def get_service_metrics(request: web.Request, query: HistoryQuery) -> ServiceMetrics:
    key = request.match_info["id"]
    sampler = request.app[SAMPLER_KEY]
    plan = sampler.history.plan(query.window_seconds, query.step_seconds)
    current = {s.service_id: s for s in sampler.current_services()}
    service = current.get(key) or next((s for s in current.values() if s.name == key), None)
    if service is None:
        raise NotFound(f"No service with id or name '{key}'")
    snapshot = sampler.latest
    sample = snapshot.service(service.service_id) if snapshot is not None else None
    history = None
    if plan is not None:
        names = [service_key(service.service_id, n) for n in SERVICE_SERIES]
        series = sampler.history.query(plan, names, now=request.app[CLOCK_KEY].time())
        history = MetricsHistory.of(series, dict(zip(names, SERVICE_SERIES, strict=True)))
    return service_metrics(service, sample, snapshot.host.timestamp if snapshot else None,
                           history)
