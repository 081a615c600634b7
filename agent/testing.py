"""Fakes for unit tests of logic, implementing the same Protocols as the real parts.

Integration tests use the real parts; these are for logic that depends on time or on a
runtime and must be tested deterministically.
"""

from __future__ import annotations

import asyncio

from agent.deploy.errors import StartFailed
from agent.deploy.pipeline import StartRequest

__all__ = ["FakeClock", "FakeStarter"]


class FakeClock:
    """A clock that moves only when told to. Implements ``agent.clock.Clock``."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._wall = start
        self._mono = 1000.0

    def time(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        """Move both clocks forward."""
        if seconds < 0:
            raise ValueError("time does not go back")
        self._wall += seconds
        self._mono += seconds


class FakeStarter:
    """A ``ReleaseStarter`` that starts nothing: it records each request, and can be told to
    fail (``fail_with``) or to hold a service in ``starting`` until ``unblock(service)``.

    ``active``/``max_active`` count starts in progress, to check the queue's concurrency.
    """

    def __init__(self) -> None:
        self.requests: list[StartRequest] = []
        self.fail_with: StartFailed | None = None
        self.active = 0
        self.max_active = 0
        self._gates: dict[str, asyncio.Event] = {}

    def block(self, service: str) -> None:
        """Hold the next starts of ``service`` until ``unblock``."""
        self._gates[service] = asyncio.Event()

    def unblock(self, service: str) -> None:
        gate = self._gates.pop(service, None)
        if gate is not None:
            gate.set()

    async def start(self, request: StartRequest) -> None:
        self.requests.append(request)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            gate = self._gates.get(request.service)
            if gate is not None:
                await gate.wait()
            if self.fail_with is not None:
                raise self.fail_with
        finally:
            self.active -= 1
