"""Shapes shared by every resource: base models, the error envelope, pages of results."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ApiModel", "ErrorBody", "ErrorEnvelope", "Page", "PageQuery", "QueryModel", "Resource",
           "page_json"]

T = TypeVar("T")

DNS_LABEL = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
RESOURCE_ID = r"^[a-z]{2,4}_[0-9a-z]{1,40}$"


# Every API model defers building its validator and serializer to its first use
# (``defer_build``): an agent holds only those of the endpoints that were called, about a
# megabyte less at start; the first request of an endpoint pays a millisecond or so.


class ApiModel(BaseModel):
    """A request body: unknown fields and loose types are refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, defer_build=True)


class QueryModel(BaseModel):
    """Query parameters: strings coerced to the declared types, unknown ones ignored.

    A parsed query is reused for later requests with the same query string, so validation
    must depend on the query string alone (no clock, no state).
    """

    model_config = ConfigDict(extra="ignore", frozen=True, defer_build=True)


class Resource(BaseModel):
    """A response body."""

    model_config = ConfigDict(frozen=True, defer_build=True)


class ErrorBody(Resource):
    code: str = Field(examples=["invalid_request"])
    message: str = Field(examples=["Invalid deployment configuration"])
    details: dict[str, Any] = Field(default_factory=dict,
                                    examples=[{"field": "runtime",
                                               "issue": "Unsupported runtime version"}])


class ErrorEnvelope(Resource):
    """Every error response."""

    error: ErrorBody


class Page(Resource, Generic[T]):
    """One page of a list. Pass ``next_cursor`` back as ``cursor`` for the next page."""

    data: list[T]
    next_cursor: str | None = None


class PageQuery(QueryModel):
    limit: int = Field(default=50, ge=1, le=500)
    cursor: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9_]+$")


def page_json(items: list[dict[str, Any]], next_cursor: str | None) -> bytes:
    """The JSON of a ``Page`` whose items are already in their JSON form (see
    ``agent.api.projects``): the same bytes as ``Page(...).model_dump_json()``."""
    return pydantic_core.to_json({"data": items, "next_cursor": next_cursor})
