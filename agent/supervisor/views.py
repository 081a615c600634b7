"""What the supervisor tells the rest of the agent: frozen snapshots of services.

These are the stable query surface for the proxy, metrics and upstream reporting
(``Supervisor.list()``, ``Supervisor.get()``, ``Supervisor.status()``). Fields are only ever
added, never renamed or removed.
"""

from __future__ import annotations

from pathlib import Path

from agent.records import record
from agent.supervisor.health import HealthState
from agent.supervisor.states import DesiredState, ServiceState
from agent.supervisor.store import ExitRecord

__all__ = ["ServiceInfo", "ServiceStatus"]


@record
class ServiceInfo:
    """One service, as it is now.

    ``port`` is the app's declared (public) port, the one proxy routes name; ``listen_port``
    is where the current run actually listens (the ``PORT`` it was given). ``started_at`` is
    the epoch time the current run was launched (None when no run exists). ``restart_count``
    counts automatic restarts since the last start or restart a user asked for.
    """

    id: str
    name: str
    deployment_id: str
    runtime: str
    state: ServiceState
    desired_state: DesiredState
    pid: int | None
    listen_port: int | None
    port: int | None
    started_at: float | None
    restart_count: int
    health: str                    # none | unknown | passing | failing
    next_restart_at: float | None
    created_at: float
    updated_at: float
    release_id: str | None = None  # the release the current run was started from (git deploys)
    cwd: Path | None = None        # where the current run works; a static site's root
    container_id: str | None = None  # the current run's container (Docker services)


@record
class ServiceStatus:
    """A service with what it costs now and how its last run ended."""

    info: ServiceInfo
    uptime: float | None
    cpu_percent: float | None
    cpu_seconds: float | None
    memory_bytes: int | None
    processes: int | None
    health: HealthState
    last_exit: ExitRecord | None
