"""The delivery worker: sends due deliveries, bounded per hook and overall, and logs each try.

Each attempt is persisted twice: before it starts (delivery ``delivering``, attempt
``in_progress``; attempts launched together share one transaction) and when it ends (its
outcome, status code, duration, error and the time of the next attempt; outcomes arriving
together share one transaction). A kill -9 in between leaves the first record; ``recover`` at the next start
marks such attempts ``interrupted``, counts them on the delivery (the receiver may have got a
duplicate) and retries at once. So a delivery is never lost, and duplicates are counted.

Concurrency: at most ``per_hook_concurrency`` attempts per hook and ``concurrency`` overall,
so one slow or dead target only ever holds its own slots. Hooks are visited in turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections import Counter

import structlog

from agent.clock import Clock
from agent.config import WebhooksConfig
from agent.records import record
from agent.store import Database, Tx
from agent.timers import next_multiple
from agent.webhooks.hooks import cancel_pending
from agent.webhooks.schedule import RetrySchedule
from agent.webhooks.sender import AttemptResult, Message, Sender, build_body
from agent.webhooks.signing import secret_key

__all__ = ["DeliveryWorker"]

log = structlog.get_logger("agent.webhooks")

_PRUNE_EVERY = 3600.0
_INTERRUPTED = "the agent stopped during this attempt; the target may have received it"


@record
class _Job:
    delivery_id: str
    webhook_id: str
    number: int
    url: str
    secret: str
    message: Message


class DeliveryWorker:
    """Runs attempts; ``kick`` it when deliveries were created or may have become due."""

    def __init__(self, db: Database, clock: Clock, config: WebhooksConfig, sender: Sender, *,
                 rng: random.Random | None = None, max_wait: float = 30.0) -> None:
        self._db = db
        self._clock = clock
        self._config = config
        self._sender = sender
        self._rng = rng or random.Random()
        self._max_wait = max_wait
        self.schedule = RetrySchedule(max_attempts=config.max_attempts,
                                      base_delay=config.retry_base_delay,
                                      max_delay=config.retry_max_delay)
        self._wake = asyncio.Event()
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._per_hook: Counter[str] = Counter()
        self._outcomes: list[tuple[_Job, AttemptResult, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._turn = 0
        self.rounds = 0  # scheduling rounds completed; lets tests wait for one
        self._last_prune = -_PRUNE_EVERY

    def kick(self) -> None:
        """Look for due deliveries now."""
        self._wake.set()

    @property
    def in_flight(self) -> int:
        """Attempts running now."""
        return len(self._inflight)

    async def recover(self) -> int:
        """After a crash: attempts left in progress become ``interrupted`` and their deliveries
        are retried now. Returns how many there were."""
        now = self._clock.time()

        def _recover(tx: Tx) -> int:
            tx.execute("UPDATE webhook_attempts SET outcome = 'interrupted', error = ?,"
                       " next_attempt_at = ? WHERE outcome = 'in_progress'", (_INTERRUPTED, now))
            return tx.execute(
                "UPDATE webhook_deliveries SET status = 'pending', interrupted = interrupted + 1,"
                " next_attempt_at = ?, last_error = ?, updated_at = ? WHERE status = 'delivering'",
                (now, _INTERRUPTED, now)).rowcount

        count = await self._db.write(_recover)
        if count:
            log.warning("webhook_attempts_interrupted", count=count)
        return count

    async def run(self) -> None:
        """Launch due attempts forever; between rounds wait for a kick or the next due time."""
        try:
            while True:
                self._wake.clear()
                try:
                    wait = await self._launch_due()
                    await self._maybe_prune()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.error("webhook_worker_failed", error_type=type(exc).__name__)
                    wait = self._max_wait
                self.rounds += 1
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
                # Nothing due sooner: poll on the shared grid of agent.timers (a quiet agent
                # then wakes once for this and its other periodic work).
                loop = asyncio.get_running_loop()
                until = (next_multiple(loop.time(), self._max_wait) if wait >= self._max_wait
                         else loop.time() + max(0.0, wait))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(until):
                        await self._wake.wait()
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Cancel running attempts; they are recovered as interrupted at the next start."""
        tasks = list(self._inflight.values())
        if self._flusher is not None:
            tasks.append(self._flusher)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _launch_due(self) -> float:
        """Start what is due within the limits; return seconds until the next check."""
        now = self._clock.time()
        hooks = [r["id"] for r in self._db.query("SELECT id FROM webhooks WHERE enabled = 1"
                                                 " ORDER BY id")]
        if not hooks:
            return self._max_wait
        start = self._turn % len(hooks)
        self._turn += 1
        chosen: list[str] = []
        next_due: float | None = None
        for hook_id in hooks[start:] + hooks[:start]:
            free = min(self._config.per_hook_concurrency - self._per_hook[hook_id],
                       self._config.concurrency - len(self._inflight) - len(chosen))
            if free <= 0:
                continue
            rows = self._db.query(
                "SELECT id, next_attempt_at FROM webhook_deliveries WHERE webhook_id = ?"
                " AND status = 'pending' ORDER BY next_attempt_at LIMIT ?", (hook_id, free))
            for row in rows:  # ordered by due time: the first one not due ends the hook's turn
                if row["next_attempt_at"] <= now:
                    chosen.append(row["id"])
                    continue
                if next_due is None or row["next_attempt_at"] < next_due:
                    next_due = row["next_attempt_at"]
                break
        if chosen:
            for job in await self._db.write(lambda tx: self._begin(tx, chosen, now)):
                self._spawn(job)
        if next_due is None:
            return self._max_wait
        return min(self._max_wait, next_due - now)

    def _begin(self, tx: Tx, ids: list[str], now: float) -> list[_Job]:
        """Mark the deliveries ``delivering`` and open their attempt records (one write)."""
        jobs: list[_Job] = []
        for delivery_id in ids:
            row = tx.execute(
                "SELECT d.webhook_id, d.attempts, d.event_id, d.event_type, e.created_at, e.data,"
                " w.url, w.secret FROM webhook_deliveries d"
                " JOIN webhooks w ON w.id = d.webhook_id"
                " LEFT JOIN events e ON e.seq = d.event_seq"
                " WHERE d.id = ? AND d.status = 'pending'", (delivery_id,)).fetchone()
            if row is None:
                continue
            if row["data"] is None:
                tx.execute("UPDATE webhook_deliveries SET status = 'cancelled', last_error = ?,"
                           " completed_at = ?, updated_at = ? WHERE id = ?",
                           ("the event no longer exists", now, now, delivery_id))
                continue
            number = row["attempts"] + 1
            tx.execute("UPDATE webhook_deliveries SET status = 'delivering', attempts = ?,"
                       " updated_at = ? WHERE id = ?", (number, now, delivery_id))
            tx.execute("INSERT OR REPLACE INTO webhook_attempts (delivery_id, number, started_at,"
                       " outcome) VALUES (?, ?, ?, 'in_progress')", (delivery_id, number, now))
            body = build_body(row["event_type"], row["created_at"], row["data"])
            jobs.append(_Job(delivery_id=delivery_id, webhook_id=row["webhook_id"], number=number,
                             url=row["url"], secret=row["secret"],
                             message=Message(msg_id=row["event_id"], event_type=row["event_type"],
                                             body=body, delivery_id=delivery_id, attempt=number)))
        return jobs

    def _spawn(self, job: _Job) -> None:
        self._per_hook[job.webhook_id] += 1
        task = asyncio.create_task(self._attempt(job), name=f"webhook-{job.delivery_id}")
        self._inflight[job.delivery_id] = task

    async def _attempt(self, job: _Job) -> None:
        try:
            try:
                result = await self._sender.send(job.url, secret_key(job.secret), job.message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("webhook_attempt_crashed", error_type=type(exc).__name__)
                result = AttemptResult("failed", 0.0, error="internal error in the agent")
            await self._record(job, result)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("webhook_attempt_not_recorded", error_type=type(exc).__name__,
                      delivery_id=job.delivery_id)
        finally:
            self._inflight.pop(job.delivery_id, None)
            self._per_hook[job.webhook_id] -= 1
            if self._per_hook[job.webhook_id] <= 0:
                del self._per_hook[job.webhook_id]
            self.kick()

    async def _record(self, job: _Job, result: AttemptResult) -> None:
        """Persist an outcome. Outcomes finishing together share one transaction (group
        commit), so a burst costs a few fsyncs rather than one per attempt."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outcomes.append((job, result, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="webhook-outcomes")
        await done

    async def _flush(self) -> None:
        while self._outcomes:
            batch, self._outcomes = self._outcomes, []
            try:
                await self._db.write(functools.partial(self._finish_all, batch=batch))
            except Exception as exc:
                for _, _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for _, _, done in batch:
                    if not done.done():
                        done.set_result(None)

    def _finish_all(self, tx: Tx,
                    batch: list[tuple[_Job, AttemptResult, asyncio.Future[None]]]) -> None:
        for job, result, _ in batch:
            self._finish(tx, job, result)

    def _finish(self, tx: Tx, job: _Job, result: AttemptResult) -> None:
        """Record the attempt's outcome and decide what happens next (one write)."""
        now = self._clock.time()
        hook = tx.execute("SELECT enabled FROM webhooks WHERE id = ?", (job.webhook_id,)).fetchone()
        if hook is None:
            return  # deleted meanwhile, with its log
        next_at: float | None = None
        if result.outcome == "succeeded":
            status = "succeeded"
        elif result.gone:
            status = "failed"
            tx.execute("UPDATE webhooks SET enabled = 0, disabled_reason = ?, updated_at = ?"
                       " WHERE id = ?", ("the target answered 410 Gone", now, job.webhook_id))
            cancel_pending(tx, job.webhook_id, now, "the webhook was disabled (410 Gone)")
            log.warning("webhook_disabled", webhook_id=job.webhook_id, reason="gone")
        elif not hook["enabled"]:
            status = "cancelled"
        else:
            delay = self.schedule.next_delay(job.number, retry_after=result.retry_after,
                                             rng=self._rng)
            status = "failed" if delay is None else "pending"
            next_at = None if delay is None else now + delay
        tx.execute("UPDATE webhook_attempts SET duration_ms = ?, outcome = ?, status_code = ?,"
                   " error = ?, response_excerpt = ?, next_attempt_at = ?"
                   " WHERE delivery_id = ? AND number = ?",
                   (result.duration_ms, result.outcome, result.status_code, result.error,
                    result.response_excerpt, next_at, job.delivery_id, job.number))
        tx.execute("UPDATE webhook_deliveries SET status = ?, next_attempt_at = ?,"
                   " last_status_code = ?, last_error = ?, updated_at = ?, completed_at = ?"
                   " WHERE id = ?",
                   (status, next_at, result.status_code, result.error, now,
                    None if status == "pending" else now, job.delivery_id))
        if status != "succeeded":
            log.info("webhook_delivery_failed", webhook_id=job.webhook_id,
                     delivery_id=job.delivery_id, attempt=job.number, status=result.status_code,
                     error=result.error, next_attempt_in=None if next_at is None
                     else round(next_at - now, 1))

    async def _maybe_prune(self) -> None:
        if time.monotonic() - self._last_prune < _PRUNE_EVERY:
            return
        self._last_prune = time.monotonic()
        cutoff = self._clock.time() - self._config.retention_days * 86_400
        removed = await self._db.write(lambda tx: tx.execute(
            "DELETE FROM webhook_deliveries WHERE completed_at < ?"
            " AND status IN ('succeeded', 'failed', 'cancelled')", (cutoff,)).rowcount)
        if removed:
            log.info("webhook_deliveries_pruned", count=removed)
