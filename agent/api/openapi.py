"""The OpenAPI 3.1 document, generated from the route table and the pydantic models.

Every operation lists its auth, its request body and query, its success response, every
error it can answer (all in the envelope) and the headers every response carries. Create
operations link to the operations on what they created (``agent.api.openapi_links``).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from agent.api.openapi_links import links_for
from agent.api.routing import Endpoint
from agent.api.schemas import ErrorEnvelope

__all__ = ["build_openapi"]

_REF = "#/components/schemas/{model}"
_PATH_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}")

_ERROR_TEXT = {
    400: "Invalid request: malformed JSON or a field failed validation",
    401: "Missing, malformed, expired or revoked bearer token",
    403: "The caller's role does not allow this",
    404: "No such resource",
    409: "Conflicts with the current state (for example a name already taken)",
    413: "Request body over the size limit",
    415: "Request body is not application/json",
    429: "Rate limit exceeded; see Retry-After",
    500: "Unexpected error; details.request_id identifies it in the agent's log",
    502: "The upstream service did not answer",
    503: "A runtime or dependency is unavailable",
    507: "The instance is out of disk space",
}

_HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {"description": "Identifies the request in the agent's log",
                     "schema": {"type": "string"}},
    "X-RateLimit-Limit": {"description": "Requests allowed per hour",
                          "schema": {"type": "integer"}},
    "X-RateLimit-Remaining": {"description": "Requests left in the current allowance",
                              "schema": {"type": "integer"}},
    "X-RateLimit-Reset": {"description": "Epoch seconds when the full allowance is back",
                          "schema": {"type": "integer"}},
}


def _header_refs(extra: tuple[str, ...] = ()) -> dict[str, Any]:
    return {name: {"$ref": f"#/components/headers/{name}"} for name in (*_HEADERS, *extra)}


def _error_statuses(ep: Endpoint) -> list[int]:
    statuses = set(ep.errors) | {429, 500}
    if ep.body is not None or ep.query is not None or _PATH_PARAM.search(ep.path):
        statuses.add(400)
    if ep.access != "public":
        statuses.add(401)
    if ep.access in ("developer", "admin"):
        statuses.add(403)
    if _PATH_PARAM.search(ep.path):
        statuses.add(404)
    if ep.body is not None:
        statuses |= {413, 415}
    return sorted(statuses)


def _schemas(endpoints: list[Endpoint]) -> tuple[dict[tuple[type[BaseModel], str], Any], dict[str, Any]]:
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorEnvelope, "serialization")]
    for ep in endpoints:
        if ep.body is not None:
            wanted.append((ep.body, "validation"))
        if ep.query is not None:
            wanted.append((ep.query, "validation"))
        if ep.response is not None:
            wanted.append((ep.response, "serialization"))
    unique = list(dict.fromkeys(wanted))
    mapping, top = models_json_schema(unique, ref_template=_REF)
    schemas: dict[tuple[type[BaseModel], str], Any] = {}
    for (model, mode), schema in mapping.items():
        schemas[(model, mode)] = schema  # type: ignore[index]
    return schemas, top.get("$defs", {})


def _query_parameters(model: type[BaseModel], defs: dict[str, Any]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=_REF, mode="validation")
    required = set(schema.get("required", ()))
    return [{"name": name, "in": "query", "required": name in required, "schema": prop}
            for name, prop in schema.get("properties", {}).items()]


def _operation(ep: Endpoint, schemas: dict[tuple[type[BaseModel], str], Any],
               defs: dict[str, Any], endpoints: list[Endpoint]) -> dict[str, Any]:
    role = "none (public)" if ep.access == "public" else f"`{ep.access}` or above"
    op: dict[str, Any] = {
        "operationId": ep.name,
        "summary": ep.summary,
        "description": (ep.description + "\n\n" if ep.description else "") + f"Role: {role}.",
        "tags": [ep.tag],
        "security": [] if ep.access == "public" else [{"bearerAuth": []}],
    }
    params = [{"name": name, "in": "path", "required": True,
               "schema": {"type": "string", "minLength": 1, "maxLength": 128}}
              for name in _PATH_PARAM.findall(ep.path)]
    if ep.query is not None:
        params += _query_parameters(ep.query, defs)
    if params:
        op["parameters"] = params
    if ep.body is not None:
        body_schema = schemas[(ep.body, "validation")]
        op["requestBody"] = {
            "required": bool(ep.body.model_json_schema().get("required")),
            "content": {"application/json": {"schema": body_schema}},
        }
    success: dict[str, Any] = {"description": ep.summary, "headers": _header_refs()}
    if ep.status != 204:
        # Without a response model a JSON body is still an object (the OpenAPI document).
        schema = (schemas[(ep.response, "serialization")] if ep.response is not None
                  else {"type": "object"})
        success["content"] = {ct: {"schema": schema if ct == "application/json"
                                   else {"type": "string"}} for ct in ep.content_types}
    links = links_for(ep, endpoints)
    if links:
        success["links"] = links
    responses: dict[str, Any] = {str(ep.status): success}
    for status, text in ep.extra_responses.items():  # other successes, with the same body
        responses[str(status)] = {**{k: v for k, v in success.items() if k != "links"},
                                  "description": text}
    for status in _error_statuses(ep):
        responses[str(status)] = {"$ref": f"#/components/responses/Error{status}"}
    op["responses"] = responses
    return op


def build_openapi(endpoints: list[Endpoint], *, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``endpoints``."""
    schemas, defs = _schemas(endpoints)
    paths: dict[str, dict[str, Any]] = {}
    for ep in endpoints:
        path = _PATH_PARAM.sub(lambda m: "{" + m[1] + "}", ep.path)
        paths.setdefault(path, {})[ep.method.lower()] = _operation(ep, schemas, defs, endpoints)
    error_ref = schemas[(ErrorEnvelope, "serialization")]
    statuses = sorted({s for ep in endpoints for s in _error_statuses(ep)})
    responses = {
        f"Error{status}": {
            "description": _ERROR_TEXT.get(status, "Error"),
            "headers": _header_refs(("Retry-After",) if status == 429 else ()),
            "content": {"application/json": {"schema": error_ref}},
        }
        for status in statuses
    }
    headers = dict(_HEADERS)
    headers["Retry-After"] = {"description": "Seconds to wait before retrying",
                              "schema": {"type": "integer"}}
    if 401 in statuses:
        responses["Error401"]["headers"] = _header_refs(("WWW-Authenticate",))
        headers["WWW-Authenticate"] = {"description": "Always `Bearer`",
                                       "schema": {"type": "string"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "dployr agent API", "version": version,
                 "description": "The dployr v1 API, served by the agent on one instance."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": defs,
            "responses": responses,
            "headers": headers,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "bearerFormat": "JWT or dpl_ machine token"}},
        },
    }
