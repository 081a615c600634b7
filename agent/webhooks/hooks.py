"""Webhooks as a resource: create, list, change, delete, ping, and read the delivery log.

Knows nothing of HTTP. A hook receives the events emitted after it was created (its
``after_seq`` is the outbox position at creation, read in the same transaction), of the
types it subscribes to (``*`` for all). Disabling a hook, by a user or by a 410 from its
target, cancels its pending deliveries.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
from collections.abc import Sequence
from typing import Final

from agent.clock import Clock
from agent.config import WebhooksConfig
from agent.errors import Conflict, InvalidRequest, NotFound
from agent.events import EVENT_TYPES
from agent.ids import new_id
from agent.records import record
from agent.store import Database, Tx
from agent.webhooks.signing import generate_secret, secret_hint, validate_secret
from agent.webhooks.ssrf import TargetRefused, check_url

__all__ = [
    "ALL_EVENTS",
    "PING_EVENT",
    "Attempt",
    "Delivery",
    "Webhook",
    "WebhookService",
    "cancel_pending",
    "normalize_events",
]

ALL_EVENTS = "*"
PING_EVENT: Final = "webhook.ping"


@record
class Webhook:
    """One registered hook. ``secret`` is kept for signing and shown to users only once."""

    id: str
    url: str
    events: tuple[str, ...]
    secret: str
    enabled: bool
    disabled_reason: str | None
    created_at: float
    updated_at: float

    @property
    def secret_hint(self) -> str:
        return secret_hint(self.secret)

    def subscribes_to(self, event_type: str) -> bool:
        """Whether events of ``event_type`` are delivered to this hook."""
        return ALL_EVENTS in self.events or event_type in self.events

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Webhook:
        return cls(id=row["id"], url=row["url"], events=tuple(json.loads(row["events"])),
                   secret=row["secret"], enabled=bool(row["enabled"]),
                   disabled_reason=row["disabled_reason"], created_at=row["created_at"],
                   updated_at=row["updated_at"])


@record
class Attempt:
    """One try at sending a delivery, as logged."""

    number: int
    started_at: float
    duration_ms: float | None
    outcome: str
    status_code: int | None
    error: str | None
    response_excerpt: str | None
    next_attempt_at: float | None


@record
class Delivery:
    """One event on its way to one hook, with every attempt so far."""

    id: str
    webhook_id: str
    event_id: str
    event_type: str
    status: str
    attempts: int
    interrupted: int
    next_attempt_at: float | None
    last_status_code: int | None
    last_error: str | None
    created_at: float
    updated_at: float
    completed_at: float | None
    attempt_log: tuple[Attempt, ...] = ()


def cancel_pending(tx: Tx, webhook_id: str, now: float, reason: str) -> None:
    """Cancel the deliveries of a hook that are waiting for an attempt (inside a write)."""
    tx.execute("UPDATE webhook_deliveries SET status = 'cancelled', last_error = ?, updated_at = ?,"
               " completed_at = ?, next_attempt_at = NULL"
               " WHERE webhook_id = ? AND status = 'pending'", (reason, now, now, webhook_id))


def normalize_events(events: Sequence[str]) -> tuple[str, ...]:
    """The subscription as stored: unique names in the given order; ``*`` alone if present."""
    unknown = [e for e in events if e != ALL_EVENTS and e not in EVENT_TYPES]
    if unknown:
        raise InvalidRequest(f"Unknown event type '{unknown[0]}'", field="events",
                             issue=f"Unknown event type '{unknown[0]}'")
    if not events:
        raise InvalidRequest("Subscribe to at least one event type", field="events",
                             issue="Must not be empty")
    if ALL_EVENTS in events:
        return (ALL_EVENTS,)
    return tuple(dict.fromkeys(events))


class WebhookService:
    """Everything users do with webhooks."""

    def __init__(self, db: Database, clock: Clock, config: WebhooksConfig) -> None:
        self._db = db
        self._clock = clock
        self._config = config

    def _check_url(self, url: str) -> str:
        try:
            check_url(url, allow_private=self._config.allow_private_targets,
                      require_https=self._config.require_https)
        except TargetRefused as exc:
            raise InvalidRequest(f"The webhook URL is refused: {exc.reason}", field="url",
                                 issue=exc.reason) from None
        return url

    @staticmethod
    def _check_secret(secret: str) -> str:
        issue = validate_secret(secret)
        if issue is not None:
            raise InvalidRequest("The webhook secret is not usable", field="secret", issue=issue)
        return secret

    def list(self, *, limit: int, after: str | None = None) -> tuple[list[Webhook], str | None]:
        """Up to ``limit`` hooks in creation order after the cursor, and the next cursor."""
        rows = self._db.query("SELECT * FROM webhooks WHERE id > ? ORDER BY id LIMIT ?",
                              (after or "", limit + 1))
        hooks = [Webhook.from_row(r) for r in rows[:limit]]
        return hooks, (hooks[-1].id if len(rows) > limit else None)

    def get(self, webhook_id: str) -> Webhook:
        """The hook; NotFound if there is none with that id."""
        row = self._db.query_one("SELECT * FROM webhooks WHERE id = ?", (webhook_id,))
        if row is None:
            raise NotFound(f"No webhook with id '{webhook_id}'")
        return Webhook.from_row(row)

    async def create(self, url: str, events: Sequence[str], secret: str | None) -> Webhook:
        """A new hook; the secret is generated when None. The returned value holds the secret."""
        now = self._clock.time()
        hook = Webhook(id=new_id("whk"), url=self._check_url(url),
                       events=normalize_events(events),
                       secret=self._check_secret(secret) if secret is not None else generate_secret(),
                       enabled=True, disabled_reason=None, created_at=now, updated_at=now)

        def _insert(tx: Tx) -> None:
            after = tx.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
            tx.execute("INSERT INTO webhooks (id, url, events, secret, enabled, after_seq,"
                       " created_at, updated_at) VALUES (?, ?, ?, ?, 1, ?, ?, ?)",
                       (hook.id, hook.url, json.dumps(list(hook.events)), hook.secret, after,
                        now, now))

        await self._db.write(_insert)
        return hook

    async def update(self, webhook_id: str, *, url: str | None = None,
                     events: Sequence[str] | None = None, enabled: bool | None = None,
                     secret: str | None = None) -> Webhook:
        """Change the given fields. Enabling clears the reason it was disabled; disabling
        cancels its pending deliveries."""
        changes: dict[str, object] = {}
        if url is not None:
            changes["url"] = self._check_url(url)
        if events is not None:
            changes["events"] = json.dumps(list(normalize_events(events)))
        if secret is not None:
            changes["secret"] = self._check_secret(secret)
        if enabled is not None:
            changes["enabled"] = int(enabled)
            changes["disabled_reason"] = None if enabled else "disabled by a user"
        now = self._clock.time()
        changes["updated_at"] = now

        def _update(tx: Tx) -> bool:
            row = tx.execute("SELECT enabled FROM webhooks WHERE id = ?", (webhook_id,)).fetchone()
            if row is None:
                return False
            assignments = ", ".join(f"{column} = ?" for column in changes)
            tx.execute(f"UPDATE webhooks SET {assignments} WHERE id = ?",  # noqa: S608 - fixed names
                       (*changes.values(), webhook_id))
            if enabled is False and row["enabled"]:
                cancel_pending(tx, webhook_id, now, "the webhook was disabled")
            return True

        if not await self._db.write(_update):
            raise NotFound(f"No webhook with id '{webhook_id}'")
        return self.get(webhook_id)

    async def delete(self, webhook_id: str) -> None:
        """Delete the hook and its delivery log; NotFound if absent."""
        deleted = await self._db.write(
            lambda tx: tx.execute("DELETE FROM webhooks WHERE id = ?", (webhook_id,)).rowcount)
        if not deleted:
            raise NotFound(f"No webhook with id '{webhook_id}'")

    async def ping(self, webhook_id: str) -> tuple[str, float]:
        """Emit a ``webhook.ping`` event for this hook only (delivered like any other event);
        return its event id and time. Conflict when the hook is disabled."""

        def _emit(tx: Tx) -> tuple[str, float] | str:
            row = tx.execute("SELECT enabled FROM webhooks WHERE id = ?", (webhook_id,)).fetchone()
            if row is None:
                return "missing"
            if not row["enabled"]:
                return "disabled"
            event = tx.emit(PING_EVENT, {"webhook_id": webhook_id,
                                         "message": "Test event from POST /v1/webhooks/{id}/test"})
            return event.id, event.timestamp

        outcome = await self._db.write(_emit)
        if outcome == "missing":
            raise NotFound(f"No webhook with id '{webhook_id}'")
        if outcome == "disabled":
            raise Conflict("The webhook is disabled; enable it before testing it")
        assert isinstance(outcome, tuple)
        return outcome

    def deliveries(self, webhook_id: str, *, limit: int, after: str | None = None,
                   ) -> tuple[builtins.list[Delivery], str | None]:
        """The hook's deliveries, oldest first after the cursor, each with its attempts."""
        self.get(webhook_id)
        rows = self._db.query(
            "SELECT * FROM webhook_deliveries WHERE webhook_id = ? AND id > ? ORDER BY id LIMIT ?",
            (webhook_id, after or "", limit + 1))
        page = rows[:limit]
        attempts: dict[str, list[Attempt]] = {r["id"]: [] for r in page}
        if page:
            marks = ",".join("?" * len(page))
            for a in self._db.query(
                    f"SELECT * FROM webhook_attempts WHERE delivery_id IN ({marks})"  # noqa: S608
                    " ORDER BY delivery_id, number", [r["id"] for r in page]):
                attempts[a["delivery_id"]].append(Attempt(
                    number=a["number"], started_at=a["started_at"], duration_ms=a["duration_ms"],
                    outcome=a["outcome"], status_code=a["status_code"], error=a["error"],
                    response_excerpt=a["response_excerpt"], next_attempt_at=a["next_attempt_at"]))
        deliveries = [Delivery(
            id=r["id"], webhook_id=r["webhook_id"], event_id=r["event_id"],
            event_type=r["event_type"], status=r["status"], attempts=r["attempts"],
            interrupted=r["interrupted"], next_attempt_at=r["next_attempt_at"],
            last_status_code=r["last_status_code"], last_error=r["last_error"],
            created_at=r["created_at"], updated_at=r["updated_at"],
            completed_at=r["completed_at"], attempt_log=tuple(attempts[r["id"]])) for r in page]
        return deliveries, (deliveries[-1].id if len(rows) > limit else None)
