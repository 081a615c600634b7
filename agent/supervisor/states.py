"""The states of a supervised service and the only transitions allowed between them.

Imports nothing of ours, so every part of the agent may use it. ::

               start                 first passing check (or stable for startup_seconds)
    stopped ----------> starting ------------------------------> running <--+
       ^ ^                 |  |                                   |  ^      | recovered
       | |  stop           |  | exited / start timeout            |  +-> unhealthy
       | +---- stopping <--+--+----------------------------------+      |
       |          |                      |                               |
       |          | (restart)            v exited, policy restarts       |
       |          +---> starting      backoff ---- timer ----> starting  |
       |                                 | exited, policy gives up       |
       +---- stop ---- crashed <---------+-------------------------------+
                       failed  (the start itself failed: build, spawn)

``desired_state`` (running or stopped) is separate: it is what the user asked for and is
persisted, so a stopped service stays stopped across agent restarts and reboots.
"""

from __future__ import annotations

import enum

__all__ = [
    "ACTIVE_STATES",
    "RUNNING_STATES",
    "SETTLED_STATES",
    "TRANSITIONS",
    "DesiredState",
    "IllegalTransition",
    "ServiceState",
    "check_transition",
]


class ServiceState(enum.StrEnum):
    """What a service is doing now."""

    STOPPED = "stopped"      # no process; nothing scheduled
    STARTING = "starting"    # a process runs (or is being built) and has not yet proved healthy
    RUNNING = "running"      # the process is up and healthy (or stable, without a check)
    UNHEALTHY = "unhealthy"  # up, but its health check failed `threshold` times in a row
    STOPPING = "stopping"    # the stop signal was sent; waiting for the grace period
    BACKOFF = "backoff"      # the process ended; a restart is scheduled after a delay
    CRASHED = "crashed"      # the process ended and the restart policy gave up
    FAILED = "failed"        # the start itself failed (build failed, command could not run)


class DesiredState(enum.StrEnum):
    """What the user asked for."""

    RUNNING = "running"
    STOPPED = "stopped"


S = ServiceState

#: Every allowed (from, to) pair. A transition not listed here is a bug.
TRANSITIONS: dict[ServiceState, frozenset[ServiceState]] = {
    S.STOPPED: frozenset({S.STARTING, S.FAILED}),
    S.STARTING: frozenset({S.RUNNING, S.STOPPING, S.BACKOFF, S.CRASHED, S.FAILED, S.STOPPED}),
    S.RUNNING: frozenset({S.UNHEALTHY, S.STOPPING, S.BACKOFF, S.CRASHED, S.STOPPED}),
    S.UNHEALTHY: frozenset({S.RUNNING, S.STOPPING, S.BACKOFF, S.CRASHED, S.STOPPED}),
    S.STOPPING: frozenset({S.STOPPED, S.STARTING, S.BACKOFF, S.CRASHED, S.FAILED}),
    S.BACKOFF: frozenset({S.STARTING, S.STOPPED, S.FAILED}),
    S.CRASHED: frozenset({S.STARTING, S.STOPPED, S.FAILED}),
    S.FAILED: frozenset({S.STARTING, S.STOPPED, S.FAILED}),
}

#: States in which a process of the service exists.
ACTIVE_STATES: frozenset[ServiceState] = frozenset({S.STARTING, S.RUNNING, S.UNHEALTHY, S.STOPPING})
#: States in which the service serves (what a proxy may route to).
RUNNING_STATES: frozenset[ServiceState] = frozenset({S.RUNNING, S.UNHEALTHY})
#: States a `?wait=true` caller stops waiting at: nothing more happens without a new event.
SETTLED_STATES: frozenset[ServiceState] = frozenset(
    {S.RUNNING, S.UNHEALTHY, S.STOPPED, S.BACKOFF, S.CRASHED, S.FAILED})


class IllegalTransition(RuntimeError):
    """A transition that the table does not allow was attempted (a programming error)."""


def check_transition(current: ServiceState, new: ServiceState) -> None:
    """Raise IllegalTransition unless ``current -> new`` is in TRANSITIONS."""
    if new not in TRANSITIONS[current]:
        raise IllegalTransition(f"{current.value} -> {new.value} is not allowed")
