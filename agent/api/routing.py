"""The route table: each endpoint declared once, with what it needs and what it returns.

A resource module declares its endpoints on an ``EndpointTable``::

    routes = EndpointTable("projects")

    @routes.post("/v1/projects", summary="Create a project", access="developer",
                 body=ProjectCreate, response=Project, status=201, errors=(409,))
    async def create_project(request: web.Request, body: ProjectCreate) -> Project:
        ...

The same declaration drives three things, so they cannot drift apart: the aiohttp route, the
access check in the middleware, and the OpenAPI document. The wrapper parses the JSON body
and the query string into the declared models (400/413/415 in the envelope on failure) and
renders what the handler returns: a pydantic model as JSON with the declared status, ``None``
as 204, a ``web.StreamResponse`` as it is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import field
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ValidationError

from agent.auth import Principal
from agent.errors import InvalidRequest, UnsupportedMediaType, from_validation_error
from agent.keys import PRINCIPAL_KEY
from agent.records import record

__all__ = [
    "ENDPOINTS_KEY",
    "Access",
    "Endpoint",
    "EndpointTable",
    "add_endpoints",
    "json_body_response",
    "json_response",
    "principal_of",
]

Access = Literal["public", "viewer", "developer", "admin"]
Handler = Callable[..., Awaitable[Any]]
ENDPOINTS_KEY = web.AppKey("endpoints", dict)  # route name -> Endpoint


@record(slots=False)
class Endpoint:
    """One API operation and everything known about it."""

    method: str
    path: str
    handler: Handler
    summary: str
    access: Access
    tag: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    errors: tuple[int, ...] = ()
    content_types: tuple[str, ...] = ("application/json",)
    rate_limited: bool = True
    description: str = ""
    extra_responses: dict[int, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The aiohttp route name (and OpenAPI operationId)."""
        return self.handler.__name__


class EndpointTable:
    """The endpoints of one resource module, like aiohttp's RouteTableDef."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.endpoints: list[Endpoint] = []

    def route(self, method: str, path: str, *, summary: str, access: Access,
              **options: Any) -> Callable[[Handler], Handler]:
        """Declare ``handler`` as the endpoint ``method path``."""

        def register(handler: Handler) -> Handler:
            self.endpoints.append(Endpoint(method=method, path=path, handler=handler,
                                           summary=summary, access=access, tag=self.tag,
                                           **options))
            return handler

        return register

    def get(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("PUT", path, **kw)

    def patch(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, **kw)


def principal_of(request: web.Request) -> Principal:
    """The authenticated caller (the middleware guarantees one on non-public endpoints)."""
    return request[PRINCIPAL_KEY]


def json_response(model: BaseModel, status: int = 200) -> web.Response:
    """A JSON response from a pydantic model, serialized by pydantic's fast encoder."""
    return web.Response(body=model.model_dump_json().encode(), status=status,
                        content_type="application/json")


def json_body_response(body: bytes, status: int = 200) -> web.Response:
    """A JSON response from bytes that are already the serialized response model."""
    return web.Response(body=body, status=status, content_type="application/json")


async def parse_body(request: web.Request, model: type[BaseModel]) -> BaseModel:
    """The request body validated into ``model``.

    An absent body counts as ``{}``. Raises UnsupportedMediaType for a non-JSON content type,
    InvalidRequest for malformed JSON or failed validation, and lets aiohttp's 413 through.
    """
    raw = await request.read()
    if not raw.strip():
        raw = b"{}"
    elif request.content_type != "application/json":
        raise UnsupportedMediaType()
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        if first["type"] in ("json_invalid", "model_type") or not first["loc"]:
            issue = ("Body must be a JSON object" if first["type"] == "model_type"
                     else "Malformed JSON")
            raise InvalidRequest("Request body is not a valid JSON object", field="body",
                                 issue=issue) from None
        raise from_validation_error(exc) from None


def parse_query(request: web.Request, model: type[BaseModel]) -> BaseModel:
    """The query string validated into ``model`` (the first value of each repeated key)."""
    values = {key: request.query.get(key) for key in request.query}
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise from_validation_error(exc) from None


def _render(result: Any, status: int) -> web.StreamResponse:
    if isinstance(result, web.StreamResponse):
        return result
    if result is None:
        return web.Response(status=204)
    if isinstance(result, BaseModel):
        return json_response(result, status)
    raise TypeError(f"handler returned {type(result).__name__}")


_QUERY_CACHE_SIZE = 256


def _wrap(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    # Parsed queries by query string: a query model is frozen and depends on nothing else,
    # and most clients send the same few query strings again and again.
    queries: dict[str, BaseModel] = {}
    query_model, body_model = endpoint.query, endpoint.body
    handler, status = endpoint.handler, endpoint.status

    async def handle(request: web.Request) -> web.StreamResponse:
        kwargs: dict[str, Any] = {}
        if query_model is not None:
            raw = request.query_string
            query = queries.get(raw)
            if query is None:
                query = parse_query(request, query_model)
                if len(queries) >= _QUERY_CACHE_SIZE:
                    queries.clear()
                queries[raw] = query
            kwargs["query"] = query
        if body_model is not None:
            kwargs["body"] = await parse_body(request, body_model)
        result = await handler(request, **kwargs)
        if isinstance(result, web.StreamResponse):
            return result
        return _render(result, status)

    handle.__name__ = endpoint.name
    return handle


def add_endpoints(app: web.Application, tables: Iterable[EndpointTable]) -> list[Endpoint]:
    """Register every endpoint of ``tables`` on ``app``; return them in order."""
    registry: dict[str, Endpoint] = {}
    for table in tables:
        for endpoint in table.endpoints:
            if endpoint.name in registry:
                raise ValueError(f"two endpoints are named {endpoint.name}")
            registry[endpoint.name] = endpoint
            app.router.add_route(endpoint.method, endpoint.path, _wrap(endpoint),
                                 name=endpoint.name)
    app[ENDPOINTS_KEY] = registry
    return list(registry.values())
