"""Services endpoints (seed: Services): list, get, status, start, stop, restart."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import Field

from agent.api.routing import EndpointTable
from agent.api.schemas import Page, PageQuery, QueryModel, Resource
from agent.keys import SUPERVISOR_KEY
from agent.supervisor.runtime import signal_name
from agent.supervisor.store import ExitRecord
from agent.supervisor.views import ServiceInfo, ServiceStatus
from agent.timefmt import from_epoch

__all__ = ["Service", "ServiceStatusBody", "routes"]

routes = EndpointTable("services")


def _time(value: float | None) -> datetime | None:
    return from_epoch(value) if value is not None else None


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

    @classmethod
    def fields_of(cls, info: ServiceInfo) -> dict[str, Any]:
        return dict(id=info.id, name=info.name, deployment_id=info.deployment_id,
                    runtime=info.runtime, state=info.state.value,
                    desired_state=info.desired_state.value, pid=info.pid,
                    container_id=info.container_id, port=info.port,
                    listen_port=info.listen_port, started_at=_time(info.started_at),
                    restart_count=info.restart_count, health=info.health,
                    next_restart_at=_time(info.next_restart_at), release_id=info.release_id,
                    created_at=from_epoch(info.created_at), updated_at=from_epoch(info.updated_at))

    @classmethod
    def of(cls, info: ServiceInfo) -> Service:
        # Built from the supervisor's own typed records: nothing to validate (the response
        # serializer still checks every field's type, and the tests fail on its warnings).
        return cls.model_construct(**cls.fields_of(info))


class LastExit(Resource):
    exit_code: int | None
    signal: str | None = Field(description="e.g. SIGKILL, when a signal ended the run")
    reason: str = Field(description="exited | stopped | restarted | unhealthy | start_timeout "
                                    "| lost | build_failed | build_timeout | build_stopped "
                                    "| spawn_failed | replaced | gate_failed")
    started_at: datetime | None
    exited_at: datetime
    stderr_tail: list[str] = Field(description="The last (up to 20) lines of stderr")

    @classmethod
    def of(cls, exit: ExitRecord) -> LastExit:
        sig = exit.status.signal
        return cls.model_construct(
            exit_code=exit.status.code, signal=signal_name(sig) if sig else None,
            reason=exit.reason, started_at=_time(exit.started_at),
            exited_at=from_epoch(exit.exited_at), stderr_tail=list(exit.stderr_tail))


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

    @classmethod
    def of_status(cls, status: ServiceStatus) -> ServiceStatusBody:
        h = status.health
        return cls.model_construct(**{  # typed records, see Service.of
            **Service.fields_of(status.info),
            "uptime_seconds": round(status.uptime, 3) if status.uptime is not None else None,
            "cpu_percent": status.cpu_percent, "cpu_seconds": status.cpu_seconds,
            "memory_bytes": status.memory_bytes, "processes": status.processes,
            "health_detail": HealthDetail.model_construct(
                status=h.status, consecutive_failures=h.failures,
                last_checked_at=_time(h.last_checked_at), last_error=h.last_error),
            "last_exit": LastExit.of(status.last_exit) if status.last_exit else None,
        })


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
async def list_services(request: web.Request, query: PageQuery) -> ServicePage:
    infos = [i for i in request.app[SUPERVISOR_KEY].list() if i.id > (query.cursor or "")]
    page = infos[:query.limit]
    cursor = page[-1].id if len(infos) > query.limit else None
    return ServicePage(data=[Service.of(i) for i in page], next_cursor=cursor)


@routes.get("/v1/services/{id}", summary="Get a service", access="viewer", response=Service,
            description="`{id}` is the service id or its name.")
async def get_service(request: web.Request) -> Service:
    return Service.of(request.app[SUPERVISOR_KEY].get(request.match_info["id"]))


@routes.get("/v1/services/{id}/status", summary="Status of a service", access="viewer",
            response=ServiceStatusBody,
            description="State, desired state, pid, uptime, restarts, ports, health, CPU and "
                        "memory of the process tree, and how the last run ended.")
async def get_service_status(request: web.Request) -> ServiceStatusBody:
    status = await request.app[SUPERVISOR_KEY].status(request.match_info["id"])
    return ServiceStatusBody.of_status(status)


def _wait(request: web.Request, query: ActionQuery) -> float | None:
    if not query.wait:
        return None
    return query.timeout or request.app[SUPERVISOR_KEY].wait_timeout


async def _answer(request: web.Request, key: str) -> ServiceStatusBody:
    """The status after a command: resource figures only when a current sample exists."""
    return ServiceStatusBody.of_status(await request.app[SUPERVISOR_KEY].status(key, sample=False))


@routes.post("/v1/services/{id}/start", summary="Start a service", access="developer",
             query=ActionQuery, response=ServiceStatusBody, errors=(503,),
             description="Idempotent: starting a running service changes nothing.")
async def start_service(request: web.Request, query: ActionQuery) -> ServiceStatusBody:
    key = request.match_info["id"]
    await request.app[SUPERVISOR_KEY].start(key, wait=_wait(request, query))
    return await _answer(request, key)


@routes.post("/v1/services/{id}/stop", summary="Stop a service", access="developer",
             query=ActionQuery, response=ServiceStatusBody, errors=(503,),
             description="Stop signal to the process group, grace period, then SIGKILL. The "
                         "service stays stopped across agent restarts. Idempotent.")
async def stop_service(request: web.Request, query: ActionQuery) -> ServiceStatusBody:
    key = request.match_info["id"]
    await request.app[SUPERVISOR_KEY].stop(key, wait=_wait(request, query))
    return await _answer(request, key)


@routes.post("/v1/services/{id}/restart", summary="Restart a service", access="developer",
             query=ActionQuery, response=ServiceStatusBody, errors=(503,))
async def restart_service(request: web.Request, query: ActionQuery) -> ServiceStatusBody:
    key = request.match_info["id"]
    await request.app[SUPERVISOR_KEY].restart(key, wait=_wait(request, query))
    return await _answer(request, key)
