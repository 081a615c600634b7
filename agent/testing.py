"""Fakes for unit tests of logic, implementing the same Protocols as the real parts.

Integration tests use the real parts; these are for logic that depends on time or on a
runtime and must be tested deterministically.
"""

from __future__ import annotations

__all__ = ["FakeClock"]


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
