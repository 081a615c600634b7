"""The webhook loops stop when cancelled, even when woken in the same instant (on Python 3.11
``asyncio.wait_for`` loses such a cancellation, which hung the agent's shutdown)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.config import WebhooksConfig
from agent.events import EventBus
from agent.store import Database
from agent.testing import FakeClock
from agent.webhooks.dispatcher import Dispatcher
from agent.webhooks.sender import Sender
from agent.webhooks.worker import DeliveryWorker
from tests.support.agent import eventually


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(tmp_path / "agent.db", clock=FakeClock())
    await database.open()
    yield database
    await database.close()


async def _stops_when_cancelled(task: asyncio.Task[None]) -> None:
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(10):  # a hang guard (TimeoutError), not a timing assertion
            await task


async def test_worker_stops_when_kicked_and_cancelled_together(db: Database) -> None:
    """A cancel arriving with a kick ends the worker's loop."""
    clock = FakeClock()
    config = WebhooksConfig()
    worker = DeliveryWorker(db, clock, config, Sender(config, clock, user_agent="t"))
    task = asyncio.create_task(worker.run())

    async def waiting() -> bool:
        return worker.rounds >= 1

    await eventually(waiting, message="the worker to wait")
    worker.kick()
    task.cancel()
    await _stops_when_cancelled(task)


async def test_dispatcher_stops_when_woken_and_cancelled_together(db: Database) -> None:
    """A cancel arriving with a bus wake-up ends the dispatcher's loop."""
    bus = EventBus()
    dispatcher = Dispatcher(db, FakeClock(), on_created=lambda: None)
    task = asyncio.create_task(dispatcher.run(bus))

    async def waiting() -> bool:
        return dispatcher.rounds >= 1

    await eventually(waiting, message="the dispatcher to wait")
    event = await db.write(lambda tx: tx.emit("service.started", {}))
    bus.publish(event)
    task.cancel()
    await _stops_when_cancelled(task)

