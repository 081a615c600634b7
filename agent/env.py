"""Environment variables of services (seed: Environment Variables). Knows nothing of HTTP.

Rules, checked here so that every entry point (the env API, deployment creation) applies them:
keys match ``[A-Za-z_][A-Za-z0-9_]*`` (at most 255 characters), ``PORT`` is reserved (the
agent sets it for every run), values are UTF-8 of at most ``env_value_max_bytes`` bytes with
no NUL, and a service has at most ``env_max_vars`` variables. Values are stored in the
agent's database (0600, in the 0700 state directory); a ``secret`` value is never shown in
listings. No value is ever written to the agent's own log.

Changes apply at the next start of the service.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Mapping

from agent.clock import Clock
from agent.errors import InvalidRequest, NotFound
from agent.records import record
from agent.store import Database, Tx

__all__ = ["MASK", "RESERVED_KEYS", "EnvService", "EnvVar", "validate_env"]

KEY_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_KEY_LENGTH = 255
RESERVED_KEYS = frozenset({"PORT"})
MASK = "********"


@record
class EnvVar:
    key: str
    value: str
    secret: bool
    created_at: float
    updated_at: float

    @property
    def shown_value(self) -> str:
        """The value as listings show it: masked when secret."""
        return MASK if self.secret else self.value


def _check_key(key: str, field: str) -> None:
    if not KEY_PATTERN.match(key) or len(key) > MAX_KEY_LENGTH:
        raise InvalidRequest("Invalid environment variable name", field=field,
                             issue="Must match [A-Za-z_][A-Za-z0-9_]* (at most 255 characters)")
    if key in RESERVED_KEYS:
        raise InvalidRequest(f"{key} is reserved", field=field,
                             issue=f"{key} is set by the agent for every run")


def _check_value(value: str, field: str, max_bytes: int) -> None:
    if "\0" in value:
        raise InvalidRequest("Invalid environment variable value", field=field,
                             issue="Must not contain a NUL character")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidRequest("Invalid environment variable value", field=field,
                             issue="Must be valid UTF-8") from None
    if size > max_bytes:
        raise InvalidRequest("Environment variable value too large", field=field,
                             issue=f"At most {max_bytes} bytes")


def validate_env(env: Mapping[str, str], *, max_bytes: int, max_vars: int,
                 field: str = "env") -> None:
    """Check a whole mapping (e.g. a deployment's ``env``); raises InvalidRequest."""
    if len(env) > max_vars:
        raise InvalidRequest("Too many environment variables", field=field,
                             issue=f"At most {max_vars}")
    for key, value in env.items():
        _check_key(key, f"{field}.{key}" if KEY_PATTERN.match(key) else field)
        _check_value(value, f"{field}.{key}", max_bytes)


class EnvService:
    """Read and change the env vars of services."""

    def __init__(self, db: Database, clock: Clock, *, max_bytes: int, max_vars: int) -> None:
        self._db = db
        self._clock = clock
        self.max_bytes = max_bytes
        self.max_vars = max_vars

    def list(self, service_id: str) -> list[EnvVar]:
        """Every variable of the service, by key."""
        rows = self._db.query("SELECT * FROM service_env WHERE service_id = ? ORDER BY key",
                              (service_id,))
        return [EnvVar(r["key"], r["value"], bool(r["secret"]), r["created_at"], r["updated_at"])
                for r in rows]

    def mapping(self, service_id: str) -> dict[str, str]:
        """The variables as a plain mapping, for a run's environment."""
        rows = self._db.query("SELECT key, value FROM service_env WHERE service_id = ?",
                              (service_id,))
        return {r["key"]: r["value"] for r in rows}

    async def set(self, service_id: str, key: str, value: str, *,
                  secret: bool = False) -> tuple[EnvVar, bool]:
        """Create or replace one variable; returns it and whether it was created."""
        _check_key(key, "key")
        _check_value(value, "value", self.max_bytes)
        now = self._clock.time()

        def upsert(tx: Tx) -> tuple[EnvVar, bool]:
            row = tx.execute("SELECT created_at FROM service_env WHERE service_id = ? AND key = ?",
                             (service_id, key)).fetchone()
            if row is None:
                count = tx.execute("SELECT COUNT(*) FROM service_env WHERE service_id = ?",
                                   (service_id,)).fetchone()[0]
                if count >= self.max_vars:
                    raise InvalidRequest("Too many environment variables", field="key",
                                         issue=f"At most {self.max_vars} per service")
            created = row is None
            created_at = now if created else row[0]
            tx.execute("INSERT INTO service_env (service_id, key, value, secret, created_at,"
                       " updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (service_id, key)"
                       " DO UPDATE SET value = excluded.value, secret = excluded.secret,"
                       " updated_at = excluded.updated_at",
                       (service_id, key, value, int(secret), created_at, now))
            return EnvVar(key, value, secret, created_at, now), created

        try:
            return await self._db.write(upsert)
        except sqlite3.IntegrityError:
            raise NotFound(f"No service with id '{service_id}'") from None

    async def delete(self, service_id: str, key: str) -> None:
        """Remove one variable; NotFound when the service has no such variable."""
        deleted = await self._db.write(lambda tx: tx.execute(
            "DELETE FROM service_env WHERE service_id = ? AND key = ?", (service_id, key)).rowcount)
        if not deleted:
            raise NotFound(f"No environment variable '{key}' on this service")

    @staticmethod
    def insert_all(tx: Tx, service_id: str, env: Mapping[str, str], now: float) -> None:
        """Insert a validated mapping inside a caller's transaction (deployment creation)."""
        tx.conn.executemany(
            "INSERT INTO service_env (service_id, key, value, secret, created_at, updated_at)"
            " VALUES (?, ?, ?, 0, ?, ?)",
            [(service_id, k, v, now, now) for k, v in env.items()])

    @staticmethod
    def upsert_all(tx: Tx, service_id: str, env: Mapping[str, str], now: float) -> None:
        """Create or replace validated variables inside a caller's transaction (a deployment
        update); others are left as they are."""
        tx.conn.executemany(
            "INSERT INTO service_env (service_id, key, value, secret, created_at, updated_at)"
            " VALUES (?, ?, ?, 0, ?, ?) ON CONFLICT (service_id, key)"
            " DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            [(service_id, k, v, now, now) for k, v in env.items()])

    @staticmethod
    def remove_all(tx: Tx, service_id: str, keys: Iterable[str]) -> None:
        """Remove variables inside a caller's transaction; absent keys are ignored."""
        tx.conn.executemany("DELETE FROM service_env WHERE service_id = ? AND key = ?",
                            [(service_id, k) for k in keys])
