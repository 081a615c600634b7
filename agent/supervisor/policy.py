"""The restart policy: whether to restart a process that ended, and after what delay.

Pure logic with an injectable random source, so it is unit-tested without processes or time.

Delays grow exponentially with the number of consecutive failed runs (``attempt``)::

    delay(attempt) = min(max_delay, initial_delay * multiplier ** attempt) * (1 +- jitter)

and are capped at ``max_delay`` after jitter too. A run that stayed up for ``reset_after``
seconds counts as stable: the attempt counter starts again from zero. After ``max_restarts``
consecutive failed runs (0 = unlimited) the policy gives up and the service is ``crashed``.
"""

from __future__ import annotations

import random
from typing import Any, Literal

from agent.records import record
from agent.supervisor.runtime import ExitStatus

__all__ = ["Decision", "RestartMode", "RestartPolicy"]

RestartMode = Literal["always", "on-failure", "never"]


@record
class Decision:
    """What to do after a run ended."""

    restart: bool
    delay: float = 0.0
    attempt: int = 0          # the consecutive-failure counter after this decision
    gave_up: bool = False     # True when a restart was wanted but max_restarts was reached


@record
class RestartPolicy:
    """When and how fast to restart. Defaults are those documented in docs/api.md."""

    mode: RestartMode = "always"
    max_restarts: int = 10
    initial_delay: float = 1.0
    max_delay: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.1
    reset_after: float = 60.0

    def __post_init__(self) -> None:
        if self.max_restarts < 0:
            raise ValueError("max_restarts must be >= 0")
        if self.initial_delay < 0 or self.max_delay < self.initial_delay:
            raise ValueError("need 0 <= initial_delay <= max_delay")
        if self.multiplier < 1:
            raise ValueError("multiplier must be >= 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        if self.reset_after < 0:
            raise ValueError("reset_after must be >= 0")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> RestartPolicy:
        """A policy from its JSON form; missing keys take the defaults."""
        return cls(**(data or {}))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, every key present."""
        return {"mode": self.mode, "max_restarts": self.max_restarts,
                "initial_delay": self.initial_delay, "max_delay": self.max_delay,
                "multiplier": self.multiplier, "jitter": self.jitter,
                "reset_after": self.reset_after}

    def wants_restart(self, status: ExitStatus) -> bool:
        """Whether the mode asks for a restart after a run that ended with ``status``."""
        if self.mode == "always":
            return True
        if self.mode == "on-failure":
            return not status.success
        return False

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The delay before restart number ``attempt + 1`` of a streak (attempt >= 0)."""
        base = min(self.max_delay, self.initial_delay * self.multiplier ** min(attempt, 64))
        if self.jitter:
            base *= 1 + (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, min(self.max_delay, base))

    def decide(self, status: ExitStatus, *, attempt: int, uptime: float,
               rng: random.Random | None = None) -> Decision:
        """What to do after a run of ``uptime`` seconds ended with ``status``.

        ``attempt`` is the consecutive-failure counter before this run ended.
        """
        if uptime >= self.reset_after:
            attempt = 0
        if not self.wants_restart(status):
            return Decision(restart=False, attempt=attempt)
        if self.max_restarts and attempt >= self.max_restarts:
            return Decision(restart=False, attempt=attempt, gave_up=True)
        return Decision(restart=True, delay=self.delay(attempt, rng), attempt=attempt + 1)
