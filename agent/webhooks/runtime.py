"""The running webhook machinery: the fan-out dispatcher, the delivery worker and its sender.

``start`` opens the HTTP session, recovers attempts a crash interrupted, and starts the two
loops; ``stop`` cancels them (running attempts are recovered at the next start).
"""

from __future__ import annotations

import asyncio
import contextlib
import random

from agent.clock import Clock
from agent.config import WebhooksConfig
from agent.events import EventBus
from agent.store import Database
from agent.webhooks.dispatcher import Dispatcher
from agent.webhooks.sender import Sender
from agent.webhooks.worker import DeliveryWorker

__all__ = ["WebhookRuntime"]


class WebhookRuntime:
    """Owns the dispatcher and worker tasks of one agent."""

    def __init__(self, db: Database, bus: EventBus, clock: Clock, config: WebhooksConfig, *,
                 user_agent: str, rng: random.Random | None = None) -> None:
        self._bus = bus
        self.sender = Sender(config, clock, user_agent=user_agent)
        self.worker = DeliveryWorker(db, clock, config, self.sender, rng=rng)
        self.dispatcher = Dispatcher(db, clock, on_created=self.worker.kick)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Recover interrupted attempts and start fanning out and delivering."""
        await self.sender.start()
        await self.worker.recover()
        self._tasks = [asyncio.create_task(self.dispatcher.run(self._bus), name="webhook-fanout"),
                       asyncio.create_task(self.worker.run(), name="webhook-worker")]

    async def stop(self) -> None:
        """Stop both loops and close the HTTP session."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.sender.close()
