"""Proxy routes endpoints (seed: Proxy Routes), and the proxy's status."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from aiohttp import web
from pydantic import Field

from agent.api.routing import EndpointTable
from agent.api.schemas import ApiModel, Page, PageQuery, Resource
from agent.keys import PROXY_KEY, ROUTES_KEY
from agent.proxy import ProxyStatus as ProxyStatusRecord
from agent.proxy import Route as RouteRecord
from agent.timefmt import from_epoch

__all__ = ["routes"]

routes = EndpointTable("proxy")


class RouteCreate(ApiModel):
    domain: str = Field(min_length=1, max_length=1024, examples=["example.com"],
                        description="A domain name; unicode is IDNA-encoded; a leading '*.' "
                                    "label matches any one label")
    service_id: str = Field(min_length=1, max_length=128, examples=["service-123"])
    port: int | None = Field(default=None, ge=1, le=65535, examples=[3000],
                             description="Which declared port of the service receives the traffic")
    path_prefix: str = Field(default="/", min_length=1, max_length=1024, examples=["/"],
                             description="Only requests under this path (whole segments) match; "
                                         "the longest prefix wins")


class Route(Resource):
    id: str
    domain: str = Field(description="The canonical (ASCII, lower-case) domain")
    path_prefix: str
    service_id: str
    port: int | None
    created_at: datetime

    @classmethod
    def of(cls, record: RouteRecord) -> Route:
        return cls(id=record.id, domain=record.domain, path_prefix=record.path_prefix,
                   service_id=record.service_id, port=record.port,
                   created_at=from_epoch(record.created_at))


class RoutePage(Page[Route]):
    pass


class RouteQuery(PageQuery):
    service_id: str | None = Field(default=None, max_length=128,
                                   description="Only the routes of this service")


class ProxyStatus(Resource):
    backend: Literal["builtin", "caddy"]
    reachable: bool = Field(description="The listener is up, or Caddy's admin API answers")
    in_sync: bool = Field(description="The proxy serves exactly the stored routes")
    listen: list[str]
    routes: int
    last_sync: datetime | None
    error: str | None
    details: dict[str, str]

    @classmethod
    def of(cls, status: ProxyStatusRecord) -> ProxyStatus:
        return cls(backend=status.backend, reachable=status.reachable, in_sync=status.in_sync,
                   listen=list(status.listen), routes=status.routes,
                   last_sync=from_epoch(status.last_sync) if status.last_sync else None,
                   error=status.error, details=dict(status.details))


@routes.get("/v1/proxy/routes", summary="List proxy routes", access="viewer", query=RouteQuery,
            response=RoutePage)
async def list_routes(request: web.Request, query: RouteQuery) -> RoutePage:
    records, cursor = request.app[ROUTES_KEY].list(limit=query.limit, after=query.cursor,
                                                   service_id=query.service_id)
    return RoutePage(data=[Route.of(r) for r in records], next_cursor=cursor)


@routes.post("/v1/proxy/routes", summary="Route a domain to a service", access="admin",
             body=RouteCreate, response=Route, status=201, errors=(409,),
             description="The proxy serves the route when this returns.")
async def create_route(request: web.Request, body: RouteCreate) -> Route:
    return Route.of(await request.app[ROUTES_KEY].create(
        domain=body.domain, service_id=body.service_id, port=body.port,
        path_prefix=body.path_prefix))


@routes.get("/v1/proxy/routes/{id}", summary="Get a proxy route", access="viewer", response=Route)
async def get_route(request: web.Request) -> Route:
    return Route.of(request.app[ROUTES_KEY].get(request.match_info["id"]))


@routes.delete("/v1/proxy/routes/{id}", summary="Delete a proxy route", access="admin",
               status=204, description="The proxy stops serving the route when this returns.")
async def delete_route(request: web.Request) -> None:
    await request.app[ROUTES_KEY].delete(request.match_info["id"])


@routes.get("/v1/proxy/status", summary="State of the reverse proxy", access="viewer",
            response=ProxyStatus)
async def get_proxy_status(request: web.Request) -> ProxyStatus:
    return ProxyStatus.of(request.app[PROXY_KEY].status())
