"""Tasks from the control plane: API calls run through the agent's own HTTP listener.

A task is replayed as a real HTTP request to the agent's listener on loopback, with the
caller's token as its ``Authorization``: it passes through exactly the middleware a local
call does (authentication, role checks, rate limits, validation) and cannot bypass any of it.
Tokenless tasks are counted against the unauthenticated limit of 127.0.0.1.

Exactly-once running, at-least-once answering:

- the task id is recorded (``upstream_tasks``, state ``running``) before the call, in one
  write with INSERT OR IGNORE, so a repeated id is never run twice, even across restarts;
- the finished ``task_response`` is stored with the row before it is sent, and kept until the
  control plane sends ``task_ack``; unacknowledged responses are sent again on every
  (re)connection; the acknowledged ones are cleared (the ids stay for
  ``task_retention_days`` to recognise duplicates);
- a task that was running when the agent died is answered 503 ``task_interrupted`` at the next
  start: its outcome is unknown, and it is not re-run (the token was never stored).

Tasks run concurrently (at most ``task_concurrency``), so a long one never blocks the link.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import structlog

from agent.clock import Clock
from agent.config import UpstreamConfig, parse_listen
from agent.errors import envelope
from agent.store import Database, Tx
from agent.upstream.protocol import TaskMessage

__all__ = ["TaskRunner", "local_base_url"]

log = structlog.get_logger("agent.upstream")

Send = Callable[[dict[str, Any]], Awaitable[bool]]

_FORWARDED_HEADERS = ("Content-Type", "X-Request-ID", "X-RateLimit-Limit",
                      "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After", "Location",
                      "WWW-Authenticate", "Allow")
_INTERRUPTED = envelope("task_interrupted",
                        "The agent restarted while this task ran; its outcome is unknown")


def local_base_url(listen: str) -> str:
    """The URL of the agent's own listener as reached from the same machine."""
    host, port = parse_listen(listen)
    if host in ("0.0.0.0", ""):  # noqa: S104 - a wildcard listener answers on loopback
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _response(task_id: str, status: int, body: Any, headers: dict[str, str] | None = None,
              **extra: Any) -> dict[str, Any]:
    return {"type": "task_response", "id": task_id, "status": status,
            "headers": headers or {}, "body": body, **extra}


class TaskRunner:
    """Runs tasks and keeps their responses until acknowledged."""

    def __init__(self, db: Database, clock: Clock, config: UpstreamConfig, base_url: str,
                 send: Send) -> None:
        self._db = db
        self._clock = clock
        self._config = config
        self._base_url = base_url
        self._send = send
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(config.task_concurrency)
        self._running: dict[str, asyncio.Task[None]] = {}

    async def start(self) -> None:
        """Open the local HTTP client and answer tasks a crash interrupted."""
        self._session = aiohttp.ClientSession(trust_env=False)
        now = self._clock.time()

        def _interrupt(tx: Tx) -> int:
            rows = tx.execute("SELECT id FROM upstream_tasks WHERE state = 'running'").fetchall()
            for row in rows:
                tx.execute("UPDATE upstream_tasks SET state = 'done', finished_at = ?,"
                           " response = ? WHERE id = ?",
                           (now, json.dumps(_response(row["id"], 503, _INTERRUPTED)), row["id"]))
            cutoff = now - self._config.task_retention_days * 86_400
            tx.execute("DELETE FROM upstream_tasks WHERE received_at < ? AND state = 'done'"
                       " AND acked_at IS NOT NULL", (cutoff,))
            return len(rows)

        interrupted = await self._db.write(_interrupt)
        if interrupted:
            log.warning("upstream_tasks_interrupted", count=interrupted)

    async def stop(self) -> None:
        """Cancel running tasks (answered as interrupted at the next start) and close."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def running(self) -> int:
        return len(self._running)

    def accept(self, task: TaskMessage) -> None:
        """Take a task from the link without waiting for anything."""
        if task.id in self._running:
            log.info("upstream_task_duplicate", task_id=task.id, state="running")
            return
        runner = asyncio.create_task(self._handle(task), name=f"upstream-task-{task.id}")
        self._running[task.id] = runner
        runner.add_done_callback(lambda _t: self._running.pop(task.id, None))

    def unacknowledged(self) -> list[dict[str, Any]]:
        """Every stored response not yet acknowledged, oldest first."""
        rows = self._db.query("SELECT response FROM upstream_tasks WHERE state = 'done'"
                              " AND acked_at IS NULL ORDER BY finished_at, id")
        return [json.loads(r["response"]) for r in rows if r["response"]]

    async def acknowledge(self, ids: list[str]) -> None:
        """Forget the responses of ``ids`` (the ids themselves are kept to spot duplicates)."""
        if not ids:
            return
        now = self._clock.time()
        await self._db.write(lambda tx: tx.conn.executemany(
            "UPDATE upstream_tasks SET acked_at = ?, response = NULL WHERE id = ? AND state = 'done'",
            [(now, task_id) for task_id in ids]))

    async def _handle(self, task: TaskMessage) -> None:
        now = self._clock.time()

        def _claim(tx: Tx) -> str | None:
            inserted = tx.execute(
                "INSERT OR IGNORE INTO upstream_tasks (id, method, path, state, received_at)"
                " VALUES (?, ?, ?, 'running', ?)",
                (task.id, task.method.upper()[:10], task.path[:500], now)).rowcount
            if inserted:
                return None
            row = tx.execute("SELECT state, response FROM upstream_tasks WHERE id = ?",
                             (task.id,)).fetchone()
            return str(row["response"]) if row["response"] else str(row["state"])

        try:
            seen = await self._db.write(_claim)
            if seen is not None:
                await self._duplicate(task.id, seen)
                return
            async with self._slots:
                response = await self._call(task)
            await self._db.write(lambda tx: tx.execute(
                "UPDATE upstream_tasks SET state = 'done', finished_at = ?, response = ?"
                " WHERE id = ?", (self._clock.time(), json.dumps(response), task.id)))
            log.info("upstream_task_done", task_id=task.id, method=task.method.upper(),
                     status=response["status"])
            await self._send(response)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("upstream_task_failed", task_id=task.id, error_type=type(exc).__name__)

    async def _duplicate(self, task_id: str, seen: str) -> None:
        log.info("upstream_task_duplicate", task_id=task_id)
        if seen.startswith("{"):
            await self._send(json.loads(seen))  # not acknowledged yet: answer again
        elif seen == "done":
            await self._send({"type": "error", "code": "duplicate_task", "ref": task_id,
                              "message": "This task id was already run and its response "
                                         "acknowledged; it is not run again"})

    async def _call(self, task: TaskMessage) -> dict[str, Any]:
        problem = task.problem()
        if problem is not None:
            return _response(task.id, 400, envelope("invalid_request", problem,
                                                    {"field": "task", "issue": problem}))
        assert self._session is not None
        headers = {"X-Request-ID": task.id[:64].replace(":", "-")}
        if task.token:
            headers["Authorization"] = f"Bearer {task.token}"
        data = None
        if task.body is not None:
            data = json.dumps(task.body).encode()
            headers["Content-Type"] = "application/json"
        url = self._base_url + task.path
        try:
            async with self._session.request(
                    task.method.upper(), url, data=data, headers=headers, allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=self._config.task_timeout)) as resp:
                return await self._read(task.id, resp)
        except TimeoutError:
            return _response(task.id, 504, envelope(
                "task_timeout", f"The task did not finish within {self._config.task_timeout:g} s"))
        except (aiohttp.ClientError, OSError) as exc:
            return _response(task.id, 502, envelope(
                "agent_unreachable", f"The agent's own API did not answer ({type(exc).__name__})"))

    async def _read(self, task_id: str, resp: aiohttp.ClientResponse) -> dict[str, Any]:
        limit = self._config.max_task_response_bytes
        raw = await resp.content.read(limit + 1)
        while len(raw) <= limit:
            more = await resp.content.read(limit + 1 - len(raw))
            if not more:
                break
            raw += more
        headers = {name: resp.headers[name] for name in _FORWARDED_HEADERS if name in resp.headers}
        if len(raw) > limit:
            return _response(task_id, resp.status, None, headers, body_truncated=True)
        body: Any = None
        if raw:
            if resp.content_type == "application/json":
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode("utf-8", errors="replace")
            else:
                body = raw.decode("utf-8", errors="replace")
        return _response(task_id, resp.status, body, headers)
