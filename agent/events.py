"""Events: what happened, as persisted in the outbox and fanned out in-process.

An event is written to the ``events`` table in the same SQLite transaction as the change that
caused it (``Tx.emit``), so no event is ever lost or invented. After the commit the store
publishes it on the ``EventBus``; consumers that must not miss any (webhooks, the upstream
link) also read the table from their own persisted cursor, so the bus is only a wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import field
from typing import Any

from agent.records import record

__all__ = ["EVENT_TYPES", "Event", "EventBus", "Subscription"]

EVENT_TYPES: frozenset[str] = frozenset({
    "deployment.created",
    "deployment.succeeded",
    "deployment.failed",
    "deployment.deleted",
    "deployment.rolled_back",
    "service.started",
    "service.stopped",
    "service.crashed",
    "service.unhealthy",
    "service.recovered",
    "route.created",
    "route.deleted",
    "instance.degraded",
    "instance.recovered",
})


@record
class Event:
    """One thing that happened. ``seq`` orders events; ``id`` is stable for consumers."""

    seq: int
    id: str
    type: str
    timestamp: float
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape consumers see: ``{id, type, timestamp, data}``."""
        return {"id": self.id, "type": self.type, "timestamp": self.timestamp,
                "data": dict(self.data)}


class Subscription:
    """A bounded queue of events for one consumer. When full, the oldest events are dropped
    and ``dropped`` counts them: a slow consumer never slows the publisher."""

    def __init__(self, bus: EventBus, maxsize: int) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self.dropped = 0

    def _offer(self, event: Event) -> None:
        if self._queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(event)

    async def get(self) -> Event:
        """The next event, waiting for one."""
        return await self._queue.get()

    def close(self) -> None:
        """Stop receiving events."""
        self._bus._subscribers.discard(self)

    async def __aiter__(self) -> AsyncIterator[Event]:
        try:
            while True:
                yield await self._queue.get()
        finally:
            self.close()


class EventBus:
    """In-process fan-out of committed events. Must be used from the event loop's thread."""

    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()

    def subscribe(self, maxsize: int = 1000) -> Subscription:
        """A new subscription that receives every event published from now on."""
        sub = Subscription(self, maxsize)
        self._subscribers.add(sub)
        return sub

    def publish(self, event: Event) -> None:
        """Hand the event to every subscriber; never blocks."""
        for sub in tuple(self._subscribers):
            sub._offer(event)
