"""The recording client of the secrets sweep: every response kept, with the canaries that
response is allowed to show (the user asked for them there)."""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Canaries", "Recorder", "Seen"]


class Canaries:
    """Unique values, one per secret the sweep plants; alphanumeric, so that no encoding
    (JSON, URL, shell quoting) can hide one from a plain substring search."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def make(self, name: str, prefix: str = "") -> str:
        value = f"{prefix}CANARY{name.upper().replace('_', '')}{secrets.token_hex(8)}"
        self.values[name] = value
        return value

    def add(self, name: str, value: str) -> str:
        """Track a secret the agent issued (a token), under ``name``."""
        self.values[name] = value
        return value

    def found_in(self, text: str, *, allowed: frozenset[str] = frozenset()) -> list[str]:
        """The names of the canaries in ``text``, other than ``allowed``."""
        return [name for name, value in self.values.items()
                if name not in allowed and value in text]


@dataclass
class Seen:
    """One response: what was asked, what came back, which canaries it may show."""

    what: str
    status: int
    text: str
    allowed: frozenset[str] = frozenset()


@dataclass
class Recorder:
    """Makes raw HTTP requests to the agent and keeps every response."""

    base: str
    seen: list[Seen] = field(default_factory=list)

    def raw(self, method: str, path: str, *, data: bytes | None = None, token: str | None = None,
            headers: dict[str, str] | None = None, allow: tuple[str, ...] = ()) -> tuple[int, Any]:
        req = urllib.request.Request(f"{self.base}{path}", data=data, method=method)
        for key, value in (headers or {}).items():
            req.add_header(key, value)
        if data is not None and "Content-Type" not in (headers or {}):
            req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, head, raw = resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as err:
            status, head, raw = err.code, err.headers, err.read()
        text = "".join(f"{k}: {v}\n" for k, v in head.items()) + raw.decode(errors="replace")
        self.seen.append(Seen(f"{method} {path}", status, text, frozenset(allow)))
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def call(self, method: str, path: str, body: Any = None, *, token: str | None = None,
             allow: tuple[str, ...] = ()) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        return self.raw(method, path, data=data, token=token, allow=allow)
