"""Fan-out: turn new outbox events into delivery rows, exactly once.

The dispatcher reads the events after its cursor (``consumer_cursors.name = 'webhooks'``)
and, in ONE transaction, inserts a delivery for every enabled hook subscribed to each event
(and created before it) and moves the cursor past them. A crash before the commit leaves
both untouched; after it, both are done: no event is skipped or fanned out twice. The
``UNIQUE (webhook_id, event_id)`` constraint is a second guard.

The in-process bus wakes the dispatcher after every commit with events; it also polls
every 30 s, a safety net for events committed by anything else (its first round at start
takes what a crash left behind). A poll with nothing new costs a ``PRAGMA data_version``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable

import structlog

from agent.clock import Clock
from agent.events import EventBus
from agent.ids import new_id
from agent.store import Database, Tx
from agent.timers import next_multiple
from agent.webhooks.hooks import ALL_EVENTS, PING_EVENT

__all__ = ["CURSOR_NAME", "Dispatcher"]

log = structlog.get_logger("agent.webhooks")

CURSOR_NAME = "webhooks"


class Dispatcher:
    """Reads the outbox and creates deliveries; call ``on_created`` after each batch."""

    def __init__(self, db: Database, clock: Clock, *, on_created: Callable[[], None],
                 batch_size: int = 500, poll_interval: float = 30.0) -> None:
        self._db = db
        self._clock = clock
        self._on_created = on_created
        self._batch = batch_size
        self._poll = poll_interval
        self.rounds = 0  # times it went to wait; lets tests wait for that

    async def run_once(self) -> tuple[int, int]:
        """Fan out one batch; return (events consumed, deliveries created).

        When the outbox has nothing past the cursor (a read on the loop's thread, cached
        until anything commits) no write transaction is started: a poll of a quiet agent
        costs a ``PRAGMA data_version``, not a hand-over to the writer thread."""
        if not self._db.cached(("webhooks.behind",), self._behind):
            return 0, 0
        consumed, created = await self._db.write(self._fan_out)
        if created:
            self._on_created()
        return consumed, created

    def _behind(self) -> bool:
        row = self._db.query_one(
            "SELECT (SELECT COALESCE(MAX(seq), 0) FROM events)"
            " > COALESCE((SELECT last_seq FROM consumer_cursors WHERE name = ?), 0)",
            (CURSOR_NAME,))
        return bool(row is not None and row[0])

    def _fan_out(self, tx: Tx) -> tuple[int, int]:
        row = tx.execute("SELECT last_seq FROM consumer_cursors WHERE name = ?",
                         (CURSOR_NAME,)).fetchone()
        cursor = int(row[0]) if row else 0
        hooks = [(h["id"], h["after_seq"], frozenset(json.loads(h["events"])))
                 for h in tx.execute("SELECT id, after_seq, events FROM webhooks WHERE enabled = 1")]
        if not hooks:
            # Nothing listens: jump to the end. Hooks created later start after this point.
            last = tx.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
            if last > cursor:
                self._save_cursor(tx, last)
            return 0, 0
        events = tx.execute(
            "SELECT seq, id, type, CASE WHEN type = ? THEN json_extract(data, '$.webhook_id')"
            " END AS target FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (PING_EVENT, cursor, self._batch)).fetchall()
        if not events:
            return 0, 0
        now = self._clock.time()
        created = 0
        for event in events:
            for hook_id, after_seq, subscribed in hooks:
                if event["seq"] <= after_seq:
                    continue
                if event["type"] == PING_EVENT:
                    wanted = event["target"] == hook_id
                else:
                    wanted = ALL_EVENTS in subscribed or event["type"] in subscribed
                if not wanted:
                    continue
                created += tx.execute(
                    "INSERT OR IGNORE INTO webhook_deliveries (id, webhook_id, event_id, event_seq,"
                    " event_type, status, next_attempt_at, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
                    (new_id("dlv"), hook_id, event["id"], event["seq"], event["type"], now, now,
                     now)).rowcount
        self._save_cursor(tx, events[-1]["seq"])
        return len(events), created

    @staticmethod
    def _save_cursor(tx: Tx, seq: int) -> None:
        tx.execute("INSERT INTO consumer_cursors (name, last_seq) VALUES (?, ?)"
                   " ON CONFLICT (name) DO UPDATE SET last_seq = excluded.last_seq",
                   (CURSOR_NAME, seq))

    async def run(self, bus: EventBus) -> None:
        """Fan out forever: after every wake-up from the bus, and every ``poll_interval``."""
        subscription = bus.subscribe(maxsize=1)
        try:
            while True:
                try:
                    consumed, created = await self.run_once()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.error("webhook_fanout_failed", error_type=type(exc).__name__)
                    consumed = 0
                if created:
                    log.debug("webhook_deliveries_created", count=created)
                if consumed >= self._batch:
                    continue
                self.rounds += 1
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
                with contextlib.suppress(TimeoutError):
                    loop = asyncio.get_running_loop()
                    async with asyncio.timeout_at(next_multiple(loop.time(), self._poll)):
                        await subscription.get()
        finally:
            subscription.close()
