"""The deploy queue: bounded concurrency, one deploy per service at a time, newest wins.

* At most ``max_concurrent`` runs execute at once, across all services.
* A service has at most one running and one waiting run. Submitting while one waits
  supersedes the waiting one (it ends ``superseded``, pointing at its successor) and the new
  run takes its place in line; the running one is never interrupted.
* Services are served first come, first served.
* ``close()`` (agent shutdown) fails the waiting runs and cancels the running ones, which end
  ``failed`` with a reason saying the agent stopped.

Finished runs stay readable through ``get`` (the newest ``history`` of them); the durable
record is the observer's job.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import OrderedDict, deque

import structlog

from agent.deploy.pipeline import DeployRun, DeploySpec, Pipeline
from agent.deploy.stages import Stage
from agent.errors import ServiceUnavailable

__all__ = ["DeployQueue"]

log = structlog.get_logger("agent.deploy.queue")


class DeployQueue:
    """Schedules ``Pipeline`` runs. Create it on the event loop; ``close()`` at shutdown."""

    def __init__(self, pipeline: Pipeline, *, max_concurrent: int, history: int = 1000) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self._pipeline = pipeline
        self._max = max_concurrent
        self._history = history
        self._pending: dict[str, DeployRun] = {}
        self._order: deque[str] = deque()
        self._running: dict[str, tuple[DeployRun, asyncio.Task[DeployRun]]] = {}
        self._runs: OrderedDict[str, DeployRun] = OrderedDict()
        self._closed = False

    @property
    def running(self) -> list[DeployRun]:
        return [run for run, _task in self._running.values()]

    @property
    def waiting(self) -> list[DeployRun]:
        return [self._pending[s] for s in self._order]

    def get(self, run_id: str) -> DeployRun | None:
        """A run submitted to this queue (waiting, running or among the recent finished)."""
        return self._runs.get(run_id)

    async def submit(self, spec: DeploySpec) -> DeployRun:
        """Queue a deploy of ``spec``; returns its run (``queued``) without waiting for it."""
        if self._closed:
            raise ServiceUnavailable("The agent is shutting down; deploy again after it restarts")
        run = self._pipeline.new_run(spec)
        self._remember(run)
        # The observer records "queued" before the run can be picked up and move on.
        await self._pipeline.announce(run)
        if self._closed:
            await self._pipeline.fail(run, "The agent stopped before the deploy started; deploy again",
                                      code="interrupted")
            raise ServiceUnavailable("The agent is shutting down; deploy again after it restarts")
        previous = self._pending.get(spec.service)
        self._pending[spec.service] = run
        if previous is None:
            self._order.append(spec.service)
        log.info("deploy_queued", run_id=run.id, service=spec.service,
                 supersedes=previous.id if previous else None)
        if previous is not None:
            previous.superseded_by = run.id
            await self._pipeline.transition(previous, Stage.SUPERSEDED)
        self._pump()
        return run

    async def cancel(self, service: str, reason: str) -> None:
        """End every run of ``service``: a waiting one fails at once, a running one is
        cancelled (it fails with ``reason``, code ``cancelled``) and waited for."""
        pending = self._pending.pop(service, None)
        if pending is not None:
            self._order.remove(service)
            await self._pipeline.fail(pending, reason, code="cancelled")
        running = self._running.get(service)
        if running is not None:
            run, task = running
            run.cancel_reason = reason
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if not run.finished:  # cancelled before its first step
                await self._pipeline.fail(run, reason, code="cancelled")

    async def wait(self, run: DeployRun) -> DeployRun:
        """Wait until ``run`` is finished (succeeded, failed or superseded)."""
        await run.done.wait()
        return run

    async def close(self) -> None:
        """Fail waiting runs, cancel running ones and wait for them to record it."""
        self._closed = True
        waiting = [self._pending.pop(s) for s in list(self._order)]
        self._order.clear()
        for run in waiting:
            await self._pipeline.fail(run, "The agent stopped before the deploy started; deploy again",
                                      code="interrupted")
        running = list(self._running.values())
        for _run, task in running:
            task.cancel()
        if running:
            await asyncio.gather(*(task for _run, task in running), return_exceptions=True)
        for run, _task in running:
            if not run.finished:  # cancelled before its first step: it never left the queue
                await self._pipeline.fail(run, "The agent stopped before the deploy started; "
                                          "deploy again", code="interrupted")

    def _remember(self, run: DeployRun) -> None:
        self._runs[run.id] = run
        while len(self._runs) > self._history:
            oldest_id, oldest = next(iter(self._runs.items()))
            if not oldest.finished:
                break
            del self._runs[oldest_id]

    def _pump(self) -> None:
        """Start waiting runs while there are free slots and their service is not busy."""
        if self._closed:
            return
        for service in list(self._order):
            if len(self._running) >= self._max:
                return
            if service in self._running:
                continue
            self._order.remove(service)
            run = self._pending.pop(service)
            # A fresh context: the run must not log the request id of whoever queued it.
            task = asyncio.create_task(self._pipeline.execute(run), name=f"deploy-{run.id}",
                                       context=contextvars.Context())
            self._running[service] = (run, task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[DeployRun]) -> None:
        for service, (_run, running) in list(self._running.items()):
            if running is task:
                del self._running[service]
        self._pump()
