"""Liveness and the API description: ``GET /v1/health`` and ``GET /v1/openapi.json``."""

from __future__ import annotations

from typing import Literal

from aiohttp import web

from agent import __version__
from agent.api.routing import EndpointTable
from agent.api.schemas import Resource
from agent.keys import CLOCK_KEY, OPENAPI_KEY, STARTED_AT_KEY

__all__ = ["routes"]

routes = EndpointTable("meta")


class Health(Resource):
    status: Literal["ok"]
    version: str
    uptime_seconds: float


@routes.get("/v1/health", summary="Liveness of the agent", access="public", response=Health,
            rate_limited=False,
            description="Not counted against the rate limit, so load balancers may poll it.")
async def get_health(request: web.Request) -> Health:
    uptime = request.app[CLOCK_KEY].monotonic() - request.app[STARTED_AT_KEY]
    return Health(status="ok", version=__version__, uptime_seconds=round(uptime, 3))


@routes.get("/v1/openapi.json", summary="The OpenAPI 3.1 description of this API",
            access="public")
async def get_openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI_KEY](), content_type="application/json")
