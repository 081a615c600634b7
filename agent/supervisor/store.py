"""The supervisor's records and their rows: services joined with their deployment's settings,
and the exit history.

``ServiceRecord`` is the unit's mutable working copy; every change to it is written with
``update_service`` inside the transaction that also emits the event, so the table, the
memory and the outbox never disagree.
"""

from __future__ import annotations

import json
import signal
import sqlite3
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.records import record
from agent.store import Tx
from agent.supervisor.health import HealthCheck
from agent.supervisor.policy import RestartPolicy
from agent.supervisor.runtime import ExitStatus, Handle, signal_number
from agent.supervisor.states import DesiredState, ServiceState

__all__ = [
    "EXITS_KEPT",
    "ExitRecord",
    "ServiceRecord",
    "insert_exit",
    "load_last_exit",
    "load_services",
    "update_deployment_status",
    "update_service",
]

EXITS_KEPT = 50  # exit history rows kept per service

_SELECT = """
SELECT s.*, d.port AS port, d.fixed_port AS fixed_port, COALESCE(s.image_id, d.image) AS image,
       d.build_cmd AS build_cmd, d.health_check AS health_check, d.restart AS restart,
       d.limits AS limits, d.stop_signal AS stop_signal, d.stop_timeout AS stop_timeout,
       d.status AS deployment_status
FROM services s JOIN deployments d ON d.id = s.deployment_id
"""


@record
class ExitRecord:
    """One end of a run."""

    exited_at: float
    status: ExitStatus
    reason: str                      # exited | stopped | restarted | unhealthy | start_timeout
    started_at: float | None = None  # | lost | build_failed | spawn_failed
    stderr_tail: tuple[str, ...] = ()

    def event_data(self) -> dict[str, Any]:
        """The exit as it appears in events: code, signal name, reason, stderr tail."""
        from agent.supervisor.runtime import signal_name

        return {"exit_code": self.status.code,
                "signal": signal_name(self.status.signal) if self.status.signal else None,
                "reason": self.reason, "exited_at": self.exited_at,
                "stderr_tail": list(self.stderr_tail)}


@dataclass(frozen=True)  # replaced, never changed: ServiceUnit.info() caches on identity
class ServiceRecord:
    """A service and the settings of its deployment that supervision needs."""

    id: str
    name: str
    deployment_id: str
    runtime: str
    command: str | None
    cwd: Path | None
    image: str | None
    port: int | None
    fixed_port: bool
    desired: DesiredState
    state: ServiceState
    handle: Handle | None
    listen_port: int | None
    started_at: float | None
    restart_count: int
    attempt: int
    next_restart_at: float | None
    needs_build: bool
    build_cmd: str | None
    boot_id: str | None
    policy: RestartPolicy
    health_check: HealthCheck | None
    stop_signal: int
    stop_timeout: float
    limits: dict[str, Any]
    deployment_status: str
    created_at: float
    updated_at: float
    last_exit: ExitRecord | None = field(default=None)
    release_id: str | None = None
    run_env: dict[str, Any] | None = None      # {"path_dirs": [...], "variables": {...}}
    pending_run: dict[str, Any] | None = None  # the candidate of a switch in progress

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> ServiceRecord:
        return cls(
            id=row["id"], name=row["name"], deployment_id=row["deployment_id"],
            runtime=row["runtime"], command=row["command"],
            cwd=Path(row["cwd"]) if row["cwd"] else None, image=row["image"],
            port=row["port"], fixed_port=bool(row["fixed_port"]),
            desired=DesiredState(row["desired_state"]), state=ServiceState(row["state"]),
            handle=Handle.from_json(row["handle"]) if row["handle"] else None,
            listen_port=row["listen_port"], started_at=row["started_at"],
            restart_count=row["restart_count"], attempt=row["attempt"],
            next_restart_at=row["next_restart_at"], needs_build=bool(row["needs_build"]),
            build_cmd=row["build_cmd"], boot_id=row["boot_id"],
            policy=RestartPolicy.from_dict(_json(row["restart"])),
            health_check=HealthCheck.from_dict(_json(row["health_check"])),
            stop_signal=_signal(row["stop_signal"]), stop_timeout=float(row["stop_timeout"]),
            limits=_json(row["limits"]) or {}, deployment_status=row["deployment_status"],
            created_at=row["created_at"], updated_at=row["updated_at"],
            release_id=row["release_id"], run_env=_json(row["run_env"]),
            pending_run=_json(row["pending_run"]))

    @property
    def pid(self) -> int | None:
        return self.handle.pid if self.handle is not None else None


def _json(text: str | None) -> Any:
    return json.loads(text) if text else None


def _signal(name: str | None) -> int:
    try:
        return signal_number(name or "SIGTERM")
    except ValueError:
        return int(signal.SIGTERM)


def load_services(conn: sqlite3.Connection, service_id: str | None = None) -> list[ServiceRecord]:
    """Every service (or one) with its deployment's settings and its last exit."""
    if service_id is None:
        rows = conn.execute(_SELECT + " ORDER BY s.id").fetchall()
    else:
        rows = conn.execute(_SELECT + " WHERE s.id = ?", (service_id,)).fetchall()
    return [replace(record, last_exit=load_last_exit(conn, record.id))
            for record in map(ServiceRecord.from_row, rows)]


def load_last_exit(conn: sqlite3.Connection, service_id: str) -> ExitRecord | None:
    row = conn.execute("SELECT * FROM service_exits WHERE service_id = ? ORDER BY id DESC LIMIT 1",
                       (service_id,)).fetchone()
    if row is None:
        return None
    return ExitRecord(exited_at=row["exited_at"],
                      status=ExitStatus(code=row["exit_code"], signal=row["signal"]),
                      reason=row["reason"], started_at=row["started_at"],
                      stderr_tail=tuple(json.loads(row["stderr_tail"])))


def update_service(tx: Tx, record: ServiceRecord, now: float) -> None:
    """Write the record's mutable fields."""
    tx.execute(
        "UPDATE services SET desired_state = ?, state = ?, handle = ?, listen_port = ?,"
        " started_at = ?, restart_count = ?, attempt = ?, next_restart_at = ?,"
        " needs_build = ?, boot_id = ?, command = ?, cwd = ?, release_id = ?, run_env = ?,"
        " pending_run = ?, updated_at = ? WHERE id = ?",
        (record.desired.value, record.state.value,
         record.handle.to_json() if record.handle else None, record.listen_port,
         record.started_at, record.restart_count, record.attempt, record.next_restart_at,
         int(record.needs_build), record.boot_id, record.command,
         str(record.cwd) if record.cwd is not None else None, record.release_id,
         _dump(record.run_env), _dump(record.pending_run), now, record.id))


def _dump(value: dict[str, Any] | None) -> str | None:
    return json.dumps(value, sort_keys=True) if value is not None else None


def insert_exit(tx: Tx, service_id: str, exit: ExitRecord) -> None:
    """Record an exit and keep only the latest EXITS_KEPT of the service."""
    tx.execute("INSERT INTO service_exits (service_id, started_at, exited_at, exit_code, signal,"
               " reason, stderr_tail) VALUES (?, ?, ?, ?, ?, ?, ?)",
               (service_id, exit.started_at, exit.exited_at, exit.status.code, exit.status.signal,
                exit.reason, json.dumps(list(exit.stderr_tail))))
    tx.execute("DELETE FROM service_exits WHERE service_id = ? AND id <= (SELECT id FROM"
               " service_exits WHERE service_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
               (service_id, service_id, EXITS_KEPT))


def update_deployment_status(tx: Tx, deployment_id: str, status: str,
                             detail: dict[str, Any] | None, now: float) -> None:
    tx.execute("UPDATE deployments SET status = ?, status_detail = ?, updated_at = ? WHERE id = ?",
               (status, json.dumps(detail) if detail is not None else None, now, deployment_id))
