"""The stages of a deploy run, as an Enum with an explicit transition table. Imports nothing of ours.

::

    queued -> cloning -> building -> starting -> succeeded
       |         |           |           |
       |         +-----------+-----------+----> failed      (with stage, reason, exit code)
       +----------------------------------------> failed      (agent stopped before it ran)
       +----------------------------------------> superseded  (a newer deploy of the service
       |                                                       replaced it while it waited)
       +------------------------> starting                    (a rollback: nothing to fetch
                                                               or build)

``superseded`` is not a failure: nothing was tried. A running deploy is never superseded; the
newer one waits for it.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "ACTIVE_STAGES",
    "TERMINAL_STAGES",
    "TRANSITIONS",
    "InvalidTransition",
    "Stage",
    "check_transition",
]


class Stage(StrEnum):
    QUEUED = "queued"
    CLONING = "cloning"
    BUILDING = "building"
    STARTING = "starting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SUPERSEDED = "superseded"


TRANSITIONS: dict[Stage, frozenset[Stage]] = {
    Stage.QUEUED: frozenset({Stage.CLONING, Stage.STARTING, Stage.FAILED, Stage.SUPERSEDED}),
    Stage.CLONING: frozenset({Stage.BUILDING, Stage.FAILED}),
    Stage.BUILDING: frozenset({Stage.STARTING, Stage.FAILED}),
    Stage.STARTING: frozenset({Stage.SUCCEEDED, Stage.FAILED}),
    Stage.SUCCEEDED: frozenset(),
    Stage.FAILED: frozenset(),
    Stage.SUPERSEDED: frozenset(),
}

ACTIVE_STAGES: frozenset[Stage] = frozenset({Stage.CLONING, Stage.BUILDING, Stage.STARTING})
TERMINAL_STAGES: frozenset[Stage] = frozenset({Stage.SUCCEEDED, Stage.FAILED, Stage.SUPERSEDED})


class InvalidTransition(Exception):
    """A bug: code tried a transition the table does not allow."""


def check_transition(current: Stage, new: Stage) -> None:
    """Raise ``InvalidTransition`` unless ``current -> new`` is in ``TRANSITIONS``."""
    if new not in TRANSITIONS[current]:
        raise InvalidTransition(f"{current} -> {new} is not a deploy transition")
