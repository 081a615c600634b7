"""The OpenAPI document covers every registered route with its auth, errors and headers."""

from __future__ import annotations

import re
from typing import Any

from agent.api.routing import ENDPOINTS_KEY
from tests.conftest import Client

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}")
_RATE_HEADERS = {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "X-Request-ID"}


def _resolve(spec: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    ref = item.get("$ref")
    if ref is None:
        return item
    node: Any = spec
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return dict(node)


async def test_every_route_is_documented(client: Client) -> None:
    """Each registered endpoint has an operation with its role, security and error responses."""
    resp = await client.get("/v1/openapi.json")
    assert resp.status == 200 and resp.content_type == "application/json"
    spec = await resp.json()
    assert spec["openapi"] == "3.1.0"
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    endpoints = list(client.app[ENDPOINTS_KEY].values())  # type: ignore[index]
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert documented == {(_PARAM.sub(lambda m: "{" + m[1] + "}", ep.path), ep.method.lower())
                          for ep in endpoints}
    for ep in endpoints:
        op = spec["paths"][_PARAM.sub(lambda m: "{" + m[1] + "}", ep.path)][ep.method.lower()]
        where = f"{ep.method} {ep.path}"
        assert op["operationId"] == ep.name, where
        assert f"`{ep.access}`" in op["description"] or ep.access == "public", where
        statuses = {int(s) for s in op["responses"]}
        assert ep.status in statuses and {429, 500} <= statuses, where
        assert set(ep.errors) <= statuses, where
        if ep.access == "public":
            assert op["security"] == [], where
        else:
            assert op["security"] == [{"bearerAuth": []}] and 401 in statuses, where
        if ep.access in ("developer", "admin"):
            assert 403 in statuses, where
        if ep.body is not None:
            assert {400, 413, 415} <= statuses and "requestBody" in op, where
        for status, response in op["responses"].items():
            headers = set(_resolve(spec, response).get("headers", {}))
            assert headers >= _RATE_HEADERS, f"{where} {status}"
        assert "Retry-After" in _resolve(spec, op["responses"]["429"])["headers"], where


async def test_errors_share_the_envelope_schema(client: Client) -> None:
    """Every error response is described by the one envelope schema."""
    spec = await (await client.get("/v1/openapi.json")).json()
    for name, response in spec["components"]["responses"].items():
        schema = response["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorEnvelope"}, name
    envelope = spec["components"]["schemas"]["ErrorEnvelope"]
    assert envelope["required"] == ["error"]


async def test_create_operations_link_to_what_they_created(client: Client) -> None:
    """Each 201 create links to the operations on the new resource, with the id from its body
    (OpenAPI links, followed by clients and by schemathesis' stateful tests)."""
    spec = await (await client.get("/v1/openapi.json")).json()
    operations = {op["operationId"]: (path, method) for path, ops in spec["paths"].items()
                  for method, op in ops.items()}
    project_links = spec["paths"]["/v1/projects"]["post"]["responses"]["201"]["links"]
    assert project_links["get_project"] == {"operationId": "get_project",
                                            "parameters": {"id": "$response.body#/id"}}
    assert "delete_project" in project_links
    env_links = spec["paths"]["/v1/services/{id}/env"]["post"]["responses"]["201"]["links"]
    assert env_links["delete_env"]["parameters"] == {"id": "$request.path.id",
                                                     "key": "$response.body#/key"}
    deployment = spec["paths"]["/v1/deployments"]["post"]["responses"]["201"]["links"]
    assert deployment["get_service_by_service_id"]["parameters"] == {
        "id": "$response.body#/service_id"}
    for path, ops in spec["paths"].items():
        for op in ops.values():
            for link in op["responses"].get("201", {}).get("links", {}).values():
                target_path, _ = operations[link["operationId"]]
                assert set(link["parameters"]) == set(_PARAM.findall(target_path)), (path, link)
    created = [path for path, ops in spec["paths"].items()
               if "201" in ops.get("post", {}).get("responses", {})]
    assert all("links" in spec["paths"][p]["post"]["responses"]["201"] for p in created), created
