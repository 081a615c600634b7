"""Services endpoints (seed: Services): list, get, status, start, stop, restart.

Like the projects endpoints, responses are serialized from the supervisor's typed records
directly (``_service_fields``, ``_status_fields``), not by building the models first: the
models declare the shapes and the OpenAPI document, and a test holds the two byte for byte
identical (tests/api/test_response_bytes.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pydantic_core
from aiohttp import web
from pydantic import Field

from agent.api.routing import EndpointTable, json_body_response
from agent.api.schemas import Page, PageQuery, QueryModel, Resource, page_json
from agent.keys import SUPERVISOR_KEY
from agent.supervisor.runtime import signal_name
from agent.supervisor.store import ExitRecord
from agent.supervisor.views import ServiceInfo, ServiceStatus
from agent.timefmt import json_time

__all__ = ["Service", "ServiceStatusBody", "routes"]

routes = EndpointTable("services")


def _time(value: float | None) -> str | None:
    return json_time(value) if value is not None else None


class Service(Resource):
    id: str
    name: str
    deployment_id: str
    runtime: str = Field(description="process | docker | static (a site the proxy serves)")
    state: str = Field(description="stopped | starting | running | unhealthy | stopping | "
                                   "backoff | crashed | failed")
    desired_state: str = Field(description="running | stopped: what was asked for (persisted)")
    pid: int | None
    container_id: str | None = Field(default=None, description="The current run's container "
                                                                "(runtime docker)")
    port: int | None = Field(description="The app's declared (public) port")
    listen_port: int | None = Field(description="The port the current run was given as PORT")
    started_at: datetime | None
    restart_count: int = Field(description="Automatic restarts since the last user start")
    health: str = Field(description="none | unknown | passing | failing")
    next_restart_at: datetime | None = Field(description="When a backoff ends")
    release_id: str | None = Field(default=None, description="The release the current run was "
                                   "started from (deployments from git)")
    created_at: datetime
    updated_at: datetime


class LastExit(Resource):
    exit_code: int | None
    signal: str | None = Field(description="e.g. SIGKILL, when a signal ended the run")
    reason: str = Field(description="exited | stopped | restarted | unhealthy | start_timeout "
                                    "| lost | build_failed | build_timeout | build_stopped "
                                    "| spawn_failed | replaced | gate_failed")
    started_at: datetime | None
    exited_at: datetime
    stderr_tail: list[str] = Field(description="The last (up to 20) lines of stderr")


class HealthDetail(Resource):
    status: str
    consecutive_failures: int
    last_checked_at: datetime | None
    last_error: str | None


class ServiceStatusBody(Service):
    uptime_seconds: float | None
    cpu_percent: float | None = Field(description="CPU of the whole process tree, percent of one "
                                                  "core, since the previous sample")
    cpu_seconds: float | None
    memory_bytes: int | None = Field(description="Resident memory of the whole process tree")
    processes: int | None
    health_detail: HealthDetail
    last_exit: LastExit | None


def _service_fields(info: ServiceInfo) -> dict[str, Any]:
    """The JSON fields of ``Service`` for ``info``, in the model's field order."""
    return {"id": info.id, "name": info.name, "deployment_id": info.deployment_id,
            "runtime": info.runtime, "state": info.state.value,
            "desired_state": info.desired_state.value, "pid": info.pid,
            "container_id": info.container_id, "port": info.port,
            "listen_port": info.listen_port, "started_at": _time(info.started_at),
            "restart_count": info.restart_count, "health": info.health,
            "next_restart_at": _time(info.next_restart_at), "release_id": info.release_id,
            "created_at": json_time(info.created_at), "updated_at": json_time(info.updated_at)}


def _last_exit_fields(exit: ExitRecord) -> dict[str, Any]:
    """The JSON fields of ``LastExit``, in the model's field order."""
    sig = exit.status.signal
    return {"exit_code": exit.status.code, "signal": signal_name(sig) if sig else None,
            "reason": exit.reason, "started_at": _time(exit.started_at),
            "exited_at": json_time(exit.exited_at), "stderr_tail": list(exit.stderr_tail)}


def _status_fields(status: ServiceStatus) -> dict[str, Any]:
    """The JSON fields of ``ServiceStatusBody``, in the model's field order."""
    h = status.health
    fields = _service_fields(status.info)
    fields.update({
        "uptime_seconds": round(status.uptime, 3) if status.uptime is not None else None,
        "cpu_percent": status.cpu_percent, "cpu_seconds": status.cpu_seconds,
        "memory_bytes": status.memory_bytes, "processes": status.processes,
        "health_detail": {"status": h.status, "consecutive_failures": h.failures,
                          "last_checked_at": _time(h.last_checked_at),
                          "last_error": h.last_error},
        "last_exit": _last_exit_fields(status.last_exit) if status.last_exit else None,
    })
    return fields


class ServicePage(Page[Service]):
    pass


class ActionQuery(QueryModel):
    wait: bool = Field(default=False, description="Wait (bounded) for the outcome: running or a "
                                                  "failure state for start/restart, stopped for stop")
    timeout: float | None = Field(default=None, gt=0, le=3600,
                                  description="Seconds to wait at most (capped by the agent's "
                                              "[services] wait_timeout)")


@routes.get("/v1/services", summary="List services", access="viewer", query=PageQuery,
            response=ServicePage)
async def list_services(request: web.Request, query: PageQuery) -> web.Response:
    infos = [i for i in request.app[SUPERVISOR_KEY].list() if i.id > (query.cursor or "")]
    page = infos[:query.limit]
    cursor = page[-1].id if len(infos) > query.limit else None
    return json_body_response(page_json([_service_fields(i) for i in page], cursor))


@routes.get("/v1/services/{id}", summary="Get a service", access="viewer", response=Service,
            description="`{id}` is the service id or its name.")
async def get_service(request: web.Request) -> web.Response:
    info = request.app[SUPERVISOR_KEY].get(request.match_info["id"])
    return json_body_response(pydantic_core.to_json(_service_fields(info)))


@routes.get("/v1/services/{id}/status", summary="Status of a service", access="viewer",
            response=ServiceStatusBody,
            description="State, desired state, pid, uptime, restarts, ports, health, CPU and "
                        "memory of the process tree, and how the last run ended.")
async def get_service_status(request: web.Request) -> web.Response:
    status = await request.app[SUPERVISOR_KEY].status(request.match_info["id"])
    return json_body_response(pydantic_core.to_json(_status_fields(status)))


def _wait(request: web.Request, query: ActionQuery) -> float | None:
    if not query.wait:
        return None
    return query.timeout or request.app[SUPERVISOR_KEY].wait_timeout


async def _answer(request: web.Request, key: str) -> web.Response:
    """The status after a command: resource figures only when a current sample exists."""
    status = await request.app[SUPERVISOR_KEY].status(key, sample=False)
    return json_body_response(pydantic_core.to_json(_status_fields(status)))


@routes.post("/v1/services/{id}/start", summary="Start a service", access="developer",
             query=ActionQuery, response=ServiceStatusBody, errors=(503,),
             description="Idempotent: starting a running service changes nothing.")
async def start_service(request: web.Request, query: ActionQuery) -> web.Response:
    key = request.match_info["id"]
    await request.app[SUPERVISOR_KEY].start(key, wait=_wait(request, query))
    return await _answer(request, key)


@routes.post("/v1/services/{id}/stop", summary="Stop a service", access="developer",
             query=ActionQuery, response=ServiceStatusBody, errors=(503,),
             description="Stop signal to the process group, grace period, then SIGKILL. The "
                         "service stays stopped across agent restarts. Idempotent.")
async def stop_service(request: web.Request, query: ActionQuery) -> web.Response:
    key = request.match_info["id"]
    await request.app[SUPERVISOR_KEY].stop(key, wait=_wait(request, query))
    return await _answer(request, key)


@routes.post("/v1/services/{id}/restart", summary="Restart a service", access="developer",
             query=ActionQuery, response=ServiceStatusBody, errors=(503,))
async def restart_service(request: web.Request, query: ActionQuery) -> web.Response:
    key = request.match_info["id"]
    await request.app[SUPERVISOR_KEY].restart(key, wait=_wait(request, query))
    return await _answer(request, key)
