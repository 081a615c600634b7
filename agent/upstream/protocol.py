"""The control-plane protocol, version 1: the JSON messages on the link (docs/upstream.md).

Every WebSocket text frame is one JSON object with a ``type``. The agent sends ``hello``,
``update``, ``event``, ``task_response`` and ``error``; the control plane sends ``task``,
``task_ack`` and ``event_ack``. Unknown types are ignored by both sides (forward
compatibility); a malformed message gets an ``error`` back and is otherwise ignored.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from agent.events import Event
from agent.timefmt import from_epoch

__all__ = [
    "PROTOCOL_VERSION",
    "EventAck",
    "Incoming",
    "ProtocolError",
    "TaskAck",
    "TaskMessage",
    "error_message",
    "event_message",
    "iso",
    "parse_incoming",
]

PROTOCOL_VERSION = 1
TASK_ID = r"^[A-Za-z0-9._:-]{1,128}$"
TASK_PATH = re.compile(r"^/v1/[A-Za-z0-9\-._~!$&'()*+,;=:@%/?]*$")


class ProtocolError(Exception):
    """A message from the control plane could not be understood."""

    def __init__(self, message: str, ref: str | None = None) -> None:
        super().__init__(message)
        self.ref = ref


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class TaskMessage(_In):
    """An API call to run as if made locally, with the caller's own token."""

    type: Literal["task"]
    id: str = Field(pattern=TASK_ID)
    method: str = Field(max_length=10)
    path: str = Field(max_length=4096)
    body: JsonValue = None
    token: str | None = Field(default=None, max_length=4096, repr=False)

    def problem(self) -> str | None:
        """Why this task cannot be run (answered with a 400), or None."""
        if self.method.upper() not in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            return "method must be GET, POST, PUT, PATCH or DELETE"
        if not TASK_PATH.match(self.path):
            return "path must be an API path starting with /v1/"
        return None


class TaskAck(_In):
    """The control plane has stored these task responses: they need not be sent again."""

    type: Literal["task_ack"]
    ids: list[str] = Field(max_length=10_000)


class EventAck(_In):
    """The control plane has stored every event up to ``seq`` (cumulative)."""

    type: Literal["event_ack"]
    seq: int = Field(ge=0)


Incoming = TaskMessage | TaskAck | EventAck
_KINDS: dict[str, type[_In]] = {"task": TaskMessage, "task_ack": TaskAck, "event_ack": EventAck}


def parse_incoming(raw: Any) -> Incoming | None:
    """The message as a model; None for an unknown type. Raises ProtocolError when malformed."""
    if not isinstance(raw, dict):
        raise ProtocolError("a message must be a JSON object")
    kind = raw.get("type")
    model = _KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        if isinstance(kind, str):
            return None
        raise ProtocolError("a message needs a string 'type'")
    try:
        parsed: Incoming = model.model_validate(raw)  # type: ignore[assignment]
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        field = ".".join(str(p) for p in first["loc"]) or "message"
        ref = raw.get("id") if isinstance(raw.get("id"), str) else None
        raise ProtocolError(f"invalid '{kind}' message: {field}: {first['msg']}", ref) from None
    return parsed


def iso(ts: float) -> str:
    """An epoch timestamp as ISO 8601 UTC with a Z."""
    return from_epoch(ts).isoformat().replace("+00:00", "Z")


def event_message(event: Event) -> dict[str, Any]:
    """One outbox event as sent upstream; ``seq`` is what ``event_ack`` acknowledges."""
    return {"type": "event", "seq": event.seq,
            "event": {"id": event.id, "type": event.type, "timestamp": iso(event.timestamp),
                      "data": dict(event.data)}}


def error_message(code: str, message: str, ref: str | None = None) -> dict[str, Any]:
    """Tells the control plane that one of its messages was refused."""
    out: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if ref is not None:
        out["ref"] = ref
    return out
