"""The agent's one exception tree, and the envelope every error is rendered in.

::

    AgentError                      500 internal_error
    +-- InvalidRequest              400 invalid_request
    +-- Unauthorized                401 unauthorized
    +-- Forbidden                   403 forbidden
    +-- NotFound                    404 not_found
    +-- MethodNotAllowed            405 method_not_allowed
    +-- Conflict                    409 conflict
    +-- PayloadTooLarge             413 payload_too_large
    +-- UnsupportedMediaType        415 unsupported_media_type
    +-- RateLimited                 429 rate_limited
    +-- BadGateway                  502 bad_gateway
    +-- ServiceUnavailable          503 unavailable
    |   +-- RuntimeUnavailable      503 runtime_unavailable
    +-- GatewayTimeout              504 gateway_timeout
    +-- InsufficientStorage         507 insufficient_storage

Each class carries its ``code`` and HTTP ``status``. Domain code raises these and nothing
else reaches a client: foreign errors (pydantic, sqlite, OSError, aiohttp's HTTP exceptions)
are translated once, in ``from_exception``. The envelope is the seed's:
``{"error": {"code", "message", "details"}}``.
"""

from __future__ import annotations

import errno
import json
import sqlite3
import traceback
from typing import Any, ClassVar

from pydantic import ValidationError

__all__ = [
    "AgentError",
    "BadGateway",
    "Conflict",
    "Forbidden",
    "GatewayTimeout",
    "InsufficientStorage",
    "InvalidRequest",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "RuntimeUnavailable",
    "ServiceUnavailable",
    "Unauthorized",
    "UnsupportedMediaType",
    "envelope",
    "from_exception",
    "from_validation_error",
    "where",
]


class AgentError(Exception):
    """Base of every error the agent reports; by itself an unexpected 500."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    default_message: ClassVar[str] = "Internal server error"

    def __init__(
        self,
        message: str | None = None,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.details: dict[str, Any] = details or {}
        self.headers: dict[str, str] = headers or {}
        super().__init__(self.message)

    def to_dict(self) -> dict[str, Any]:
        """The seed's error envelope for this error."""
        return envelope(self.code, self.message, self.details)


class InvalidRequest(AgentError):
    status = 400
    code = "invalid_request"
    default_message = "Invalid request"

    def __init__(self, message: str | None = None, *, field: str | None = None,
                 issue: str | None = None, details: dict[str, Any] | None = None) -> None:
        merged = dict(details or {})
        if field is not None:
            merged["field"] = field
        if issue is not None:
            merged["issue"] = issue
        super().__init__(message, details=merged)


class Unauthorized(AgentError):
    status = 401
    code = "unauthorized"
    default_message = "Authentication required"

    def __init__(self, message: str | None = None, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, details=details, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(AgentError):
    status = 403
    code = "forbidden"
    default_message = "Your role does not allow this action"


class NotFound(AgentError):
    status = 404
    code = "not_found"
    default_message = "Resource not found"


class MethodNotAllowed(AgentError):
    status = 405
    code = "method_not_allowed"
    default_message = "Method not allowed"


class Conflict(AgentError):
    status = 409
    code = "conflict"
    default_message = "Conflict with the current state"


class PayloadTooLarge(AgentError):
    status = 413
    code = "payload_too_large"
    default_message = "Request body too large"


class UnsupportedMediaType(AgentError):
    status = 415
    code = "unsupported_media_type"
    default_message = "Request body must be application/json"


class RateLimited(AgentError):
    status = 429
    code = "rate_limited"
    default_message = "Too many requests"


class BadGateway(AgentError):
    status = 502
    code = "bad_gateway"
    default_message = "The upstream service did not answer"


class GatewayTimeout(AgentError):
    status = 504
    code = "gateway_timeout"
    default_message = "The upstream service did not answer in time"


class ServiceUnavailable(AgentError):
    status = 503
    code = "unavailable"
    default_message = "Temporarily unavailable"


class RuntimeUnavailable(ServiceUnavailable):
    code = "runtime_unavailable"
    default_message = "The runtime is not available on this instance"


class InsufficientStorage(AgentError):
    status = 507
    code = "insufficient_storage"
    default_message = "The instance is out of disk space; reads still work"


def envelope(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The seed's error envelope."""
    return {"error": {"code": code, "message": message, "details": details or {}}}


def _loc_to_field(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            parts.append(("." if parts else "") + part)
    return "".join(parts) or "body"


def from_validation_error(exc: ValidationError, *, prefix: str = "") -> InvalidRequest:
    """A pydantic ValidationError as a 400 naming the first bad field.

    The input value is never echoed back: it may be a secret.
    """
    first = exc.errors(include_url=False, include_input=False)[0]
    field = _loc_to_field(tuple(first["loc"]))
    if prefix:
        field = f"{prefix}.{field}" if field != "body" else prefix
    issue = "Unknown field" if first["type"] == "extra_forbidden" else str(first["msg"])
    # pydantic prefixes messages of ValueErrors raised in validators; users need not see it.
    issue = issue.removeprefix("Value error, ")
    return InvalidRequest(f"Invalid value for '{field}'", field=field, issue=issue)


_STATUS_CLASSES: dict[int, type[AgentError]] = {
    cls.status: cls
    for cls in (InvalidRequest, Unauthorized, Forbidden, NotFound, MethodNotAllowed, Conflict,
                PayloadTooLarge, UnsupportedMediaType, RateLimited, BadGateway,
                GatewayTimeout, ServiceUnavailable, InsufficientStorage)
}


def error_for_status(status: int, message: str | None = None) -> AgentError:
    """The AgentError class for an HTTP status (500 for anything unknown)."""
    cls = _STATUS_CLASSES.get(status, AgentError)
    if cls is InvalidRequest:
        return InvalidRequest(message)
    return cls(message)


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        return "database or disk is full" in str(exc)
    return isinstance(exc, sqlite3.DatabaseError) and "disk is full" in str(exc)


def from_exception(exc: BaseException) -> AgentError:
    """Translate any exception into the AgentError a client should see.

    The one place foreign errors are mapped. Messages of unexpected errors are never passed
    through: they may carry paths, SQL or secrets.
    """
    if isinstance(exc, AgentError):
        return exc
    if isinstance(exc, ValidationError):
        return from_validation_error(exc)
    if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError | RecursionError):
        return InvalidRequest("Request body is not valid JSON", field="body",
                              issue="Malformed JSON")
    if _is_disk_full(exc):
        return InsufficientStorage()
    return AgentError()


def where(exc: BaseException) -> str:
    """Where ``exc`` was raised, as ``file.py:line:function``: what a log line may say of an
    unexpected exception (its text may carry secrets or request data, so never that)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "unknown"
    last = frames[-1]
    return f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno}:{last.name}"
