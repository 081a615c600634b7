"""The durable record of deploy runs: the pipeline's observer, and recovery after a restart.

Every change of a run (``agent.deploy.pipeline.DeployRun``) is written in one transaction:

* its row in ``deploy_runs`` (status and detail: stages with their times, failure, commit,
  release, toolchain);
* the deployment's ``status`` and ``status_detail`` when the run is the deployment's newest
  (a newly queued run always is; a run superseded meanwhile no longer is);
* the event, when the run ended: ``deployment.succeeded`` (a deploy),
  ``deployment.rolled_back`` (a rollback) or ``deployment.failed`` (with stage and reason;
  none for a run cancelled because its deployment is being deleted).

After an agent restart, runs that were in flight are settled (``recover``): a run caught
while ``starting`` whose release is what the service now runs had switched before the agent
went away, so it ``succeeded``; every other one ends ``failed`` at its stage, "interrupted by
an agent restart". The release the service runs keeps running either way.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Callable
from typing import Any

import structlog

from agent.clock import Clock
from agent.deploy.pipeline import DeployRun
from agent.deploy.releases import ReleaseStore
from agent.deploy.stages import Stage
from agent.store import Database, Tx

__all__ = ["INTERRUPTED", "RunRecorder", "run_detail"]

log = structlog.get_logger("agent.delivery")

INTERRUPTED = "Interrupted by an agent restart; the running release kept serving. Deploy again"


def run_detail(run: DeployRun) -> dict[str, Any]:
    """What the store keeps of a run (no secret: the remote has none, env only its keys)."""
    data = run.to_dict()
    data["run_id"] = data.pop("id")
    for key in ("service", "deployment_id", "env_keys"):
        data.pop(key, None)
    return data


class RunRecorder:
    """The pipeline's observer. ``__call__`` is the ``RunObserver``."""

    def __init__(self, db: Database, clock: Clock, releases: ReleaseStore) -> None:
        self._db = db
        self._clock = clock
        self._releases = releases

    async def __call__(self, run: DeployRun) -> None:
        deployment_id = run.spec.deployment_id
        if deployment_id is None:
            return
        detail = run_detail(run)
        previous = None
        if run.status == Stage.SUCCEEDED:
            previous = self._releases.pointers(run.service)[1]
        now = self._clock.time()

        def write(tx: Tx) -> None:
            row = tx.execute("SELECT d.name, d.status_detail, s.id AS service_id FROM deployments d"
                             " LEFT JOIN services s ON s.deployment_id = d.id WHERE d.id = ?",
                             (deployment_id,)).fetchone()
            if row is None:
                return  # deleted meanwhile: nothing left to record
            _save(tx, deployment_id, run.kind, detail, run.created_at, now,
                  newest=run.status == Stage.QUEUED)
            event = _event(run, detail, row["name"], row["service_id"], previous)
            if event is not None:
                tx.emit(*event)

        await self._db.write(write)

    async def recover(self, current_release: Callable[[str], str | None]) -> list[str]:
        """Settle the runs an earlier agent left in flight; return the services concerned.

        ``current_release(service name)`` is the release the service runs now.
        """
        rows = await self._db.read_in_thread(_in_flight)
        now = self._clock.time()
        services: list[str] = []
        for row in rows:
            detail = json.loads(row["detail"]) if row["detail"] else None
            services.append(row["name"])
            if detail is None:  # queued by the deployment's creation, never announced
                await self._db.write(functools.partial(_fail_unannounced, row=row, now=now))
                continue
            switched = (detail["status"] == str(Stage.STARTING) and detail.get("release_id")
                        and current_release(row["name"]) == detail["release_id"])
            if switched:
                await self._releases.mark_current(row["name"], detail["release_id"])
                _finish(detail, Stage.SUCCEEDED, now)
            else:
                detail["failure"] = {"stage": detail["status"], "reason": INTERRUPTED,
                                     "exit_code": None, "code": "interrupted"}
                if detail["status"] in (str(Stage.CLONING), str(Stage.BUILDING)):
                    detail["release_id"] = None  # a draft, removed by the next prune
                _finish(detail, Stage.FAILED, now)
            log.info("deploy_run_recovered", run_id=detail["run_id"], status=detail["status"])
            previous = self._releases.pointers(row["name"])[1]
            await self._db.write(functools.partial(_settle, row=row, detail=detail,
                                                   previous=previous, now=now))
        return sorted(set(services))


def _settle(tx: Tx, row: sqlite3.Row, detail: dict[str, Any], previous: str | None,
            now: float) -> None:
    _save(tx, row["deployment_id"], detail["kind"], detail, row["created_at"], now, newest=False)
    tx.emit(*_event_of(detail, row["deployment_id"], row["name"], row["service_id"], previous))


def _save(tx: Tx, deployment_id: str, kind: str, detail: dict[str, Any], created_at: float,
          now: float, *, newest: bool) -> None:
    """Upsert the run; mirror it on the deployment when it is (or becomes) its newest run."""
    text = json.dumps(detail, separators=(",", ":"))
    tx.execute("INSERT INTO deploy_runs (id, deployment_id, kind, status, detail, created_at,"
               " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
               " status = excluded.status, detail = excluded.detail,"
               " updated_at = excluded.updated_at",
               (detail["run_id"], deployment_id, kind, detail["status"], text, created_at, now))
    tracked = tx.execute("SELECT json_extract(status_detail, '$.run_id') FROM deployments"
                         " WHERE id = ?", (deployment_id,)).fetchone()
    if newest or (tracked is not None and tracked[0] == detail["run_id"]):
        tx.execute("UPDATE deployments SET status = ?, status_detail = ?, updated_at = ?"
                   " WHERE id = ?", (detail["status"], text, now, deployment_id))


def _event(run: DeployRun, detail: dict[str, Any], name: str, service_id: str | None,
           previous: str | None) -> tuple[str, dict[str, Any]] | None:
    if run.status not in (Stage.SUCCEEDED, Stage.FAILED):
        return None
    if run.failure is not None and run.failure.code == "cancelled":
        return None  # its deployment is being deleted: deployment.deleted says it all
    return _event_of(detail, run.spec.deployment_id or "", name, service_id, previous)


def _event_of(detail: dict[str, Any], deployment_id: str, name: str, service_id: str | None,
              previous: str | None) -> tuple[str, dict[str, Any]]:
    """The event of a finished run, with its payload (see docs/api.md)."""
    base = {"deployment_id": deployment_id, "name": name, "service_id": service_id,
            "run_id": detail["run_id"], "kind": detail["kind"]}
    duration = None
    if detail.get("finished_at") is not None:
        duration = round(detail["finished_at"] - detail["created_at"], 3)
    toolchain = detail.get("toolchain") or {}
    if detail["status"] == str(Stage.SUCCEEDED):
        if detail["kind"] == "rollback":
            return "deployment.rolled_back", {
                **base, "from_release_id": previous, "to_release_id": detail["release_id"],
                "commit": detail["commit"], "duration_seconds": duration}
        return "deployment.succeeded", {
            **base, "release_id": detail["release_id"], "previous_release_id": previous,
            "commit": detail["commit"], "branch": detail["branch"],
            "runtime": toolchain.get("runtime"), "version": toolchain.get("version"),
            "duration_seconds": duration}
    failure = detail.get("failure") or {}
    return "deployment.failed", {
        **base, "stage": failure.get("stage"), "reason": failure.get("reason"),
        "exit_code": failure.get("exit_code"), "code": failure.get("code"),
        "commit": detail.get("commit"), "duration_seconds": duration}


def _finish(detail: dict[str, Any], status: Stage, now: float) -> None:
    stages = detail.setdefault("stages", [])
    if stages and stages[-1].get("finished_at") is None:
        stages[-1]["finished_at"] = now
    stages.append({"stage": str(status), "started_at": now, "finished_at": now})
    detail["status"] = str(status)
    detail["finished_at"] = now


def _in_flight(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """Runs still in flight, and deployments left ``queued`` without any run."""
    runs = conn.execute(
        "SELECT r.id, r.deployment_id, r.detail, r.created_at, d.name, s.id AS service_id"
        " FROM deploy_runs r JOIN deployments d ON d.id = r.deployment_id"
        " LEFT JOIN services s ON s.deployment_id = d.id"
        " WHERE r.status IN ('queued', 'cloning', 'building', 'starting')"
        " ORDER BY r.created_at").fetchall()
    orphans = conn.execute(
        "SELECT NULL AS id, d.id AS deployment_id, NULL AS detail, d.updated_at AS created_at,"
        " d.name, s.id AS service_id FROM deployments d"
        " LEFT JOIN services s ON s.deployment_id = d.id"
        " WHERE d.source = 'remote' AND d.status IN ('queued', 'cloning', 'building', 'starting')"
        " AND NOT EXISTS (SELECT 1 FROM deploy_runs r WHERE r.deployment_id = d.id"
        " AND r.status IN ('queued', 'cloning', 'building', 'starting'))").fetchall()
    return [*runs, *orphans]


def _fail_unannounced(tx: Tx, row: sqlite3.Row, now: float) -> None:
    detail = {"stage": "queued", "reason": INTERRUPTED, "exit_code": None, "code": "interrupted"}
    tx.execute("UPDATE deployments SET status = 'failed', status_detail = ?, updated_at = ?"
               " WHERE id = ?", (json.dumps({"failure": detail}), now, row["deployment_id"]))
    tx.emit("deployment.failed", {"deployment_id": row["deployment_id"], "name": row["name"],
                                  "service_id": row["service_id"], "run_id": None,
                                  "kind": "deploy", **detail, "commit": None,
                                  "duration_seconds": None})
