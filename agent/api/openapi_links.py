"""OpenAPI links: how the id a create operation returns feeds the operations on that resource.

Clients and stateful fuzzers (schemathesis) follow them: ``POST /v1/projects`` -> 201 links to
``GET`` and ``DELETE /v1/projects/{id}`` with ``id`` taken from the response body. The links
are derived from the route table, so a new resource gets them without further work:

- a ``POST`` on a collection that answers 201 links to every operation under
  ``<collection>/{param}``: the parameter is the body's ``id`` (or, for resources keyed by
  another field, such as env vars by ``key``, the field named like the parameter), and the
  collection's own path parameters are passed through from the request;
- a response field that names another resource (``service_id``) links to the operations
  under that resource's path too (a deployment creates a service).
"""

from __future__ import annotations

import re
from typing import Any

from agent.api.routing import Endpoint

__all__ = ["links_for"]

_PATH_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}")
# Response fields that hold the id of a resource of another collection.
_REFERENCES = {"service_id": "/v1/services"}


def _plain(path: str) -> str:
    return _PATH_PARAM.sub(lambda m: "{" + m[1] + "}", path)


def _under(collection: str, endpoints: list[Endpoint]) -> list[tuple[Endpoint, str]]:
    """Operations on ``collection/{param}`` or below it, with that parameter's name."""
    pattern = re.compile(re.escape(collection) + r"/\{([A-Za-z_][A-Za-z0-9_]*)\}(?:/.*)?")
    found = []
    for ep in endpoints:
        match = pattern.fullmatch(_plain(ep.path))
        if match is not None:
            found.append((ep, match[1]))
    return found


def links_for(create: Endpoint, endpoints: list[Endpoint]) -> dict[str, Any]:
    """The OpenAPI ``links`` of ``create``'s success response (empty if it creates nothing)."""
    if create.method != "POST" or create.status != 201 or create.response is None:
        return {}
    fields = set(create.response.model_fields)
    passed = {name: f"$request.path.{name}" for name in _PATH_PARAM.findall(create.path)}
    links: dict[str, Any] = {}
    for target, param in _under(_plain(create.path), endpoints):
        source = "id" if "id" in fields else param if param in fields else None
        if source is None or target is create:
            continue
        wanted = set(_PATH_PARAM.findall(target.path))
        params = {k: v for k, v in passed.items() if k in wanted}
        params[param] = f"$response.body#/{source}"
        links[target.name] = {"operationId": target.name, "parameters": params}
    for field, collection in _REFERENCES.items():
        if field not in fields:
            continue
        for target, param in _under(collection, endpoints):
            if set(_PATH_PARAM.findall(target.path)) != {param}:
                continue  # needs more than the referenced id
            links[f"{target.name}_by_{field}"] = {
                "operationId": target.name, "parameters": {param: f"$response.body#/{field}"}}
    return links
