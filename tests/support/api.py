"""Assertions and helpers for API tests: the error envelope, made-up paths for any route."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import ClientResponse

from agent.api.routing import Endpoint

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}")


async def assert_error(resp: ClientResponse, status: int, code: str) -> dict[str, Any]:
    """The response is ``status`` with the seed's envelope carrying ``code``; return the body."""
    text = await resp.text()
    assert resp.status == status, f"expected {status}, got {resp.status}: {text}"
    assert resp.content_type == "application/json", resp.content_type
    body: dict[str, Any] = await resp.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert error["code"] == code, body
    assert isinstance(error["message"], str) and error["message"], body
    assert isinstance(error["details"], dict), body
    assert "X-Request-ID" in resp.headers
    return error


def made_up_path(endpoint: Endpoint) -> str:
    """The endpoint's path with a made-up value for every path parameter."""
    return _PARAM.sub(lambda m: f"{m[1][:3]}_doesnotexist0", endpoint.path)
