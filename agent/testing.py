"""Fakes for unit tests of logic, implementing the same Protocols as the real parts.

Integration tests use the real parts; these are for logic that depends on time or on a
runtime and must be tested deterministically.
"""

from __future__ import annotations

from agent.proxy.locator import Target

__all__ = ["FakeClock", "MemoryServiceLocator"]


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


class MemoryServiceLocator:
    """An in-memory ``agent.proxy.ServiceLocator``: services and their targets set by hand.

    Used by the proxy tests and, until the supervisor provides the real locator, by
    ``create_app`` (where it starts empty, so no route can be created yet).
    """

    def __init__(self) -> None:
        self._targets: dict[str, dict[int | None, Target | None]] = {}

    def add(self, service_id: str, target: Target | None = None, *,
            port: int | None = None) -> None:
        """Declare a service, optionally with the target of one of its ports (None = any)."""
        self._targets.setdefault(service_id, {})[port] = target

    def set_target(self, service_id: str, target: Target | None, *,
                   port: int | None = None) -> None:
        """Point the service (or one of its ports) somewhere else: a redeploy, a stop."""
        if service_id not in self._targets:
            raise KeyError(service_id)
        self._targets[service_id][port] = target

    def remove(self, service_id: str) -> None:
        self._targets.pop(service_id, None)

    def exists(self, service_id: str) -> bool:
        return service_id in self._targets

    def target(self, service_id: str, port: int | None) -> Target | None:
        ports = self._targets.get(service_id)
        if ports is None:
            return None
        if port in ports:
            return ports[port]
        return ports.get(None)
