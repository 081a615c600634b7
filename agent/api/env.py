"""Environment variable endpoints (seed: Environment Variables)."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web
from pydantic import Field

from agent.api.routing import EndpointTable, json_response
from agent.api.schemas import ApiModel, QueryModel, Resource
from agent.env import MASK, EnvVar
from agent.keys import ENV_KEY, SUPERVISOR_KEY
from agent.supervisor.states import DesiredState
from agent.timefmt import from_epoch

__all__ = ["routes"]

routes = EndpointTable("env")


class EnvVarCreate(ApiModel):
    # The patterns are documented for clients; agent.env checks them with its own messages.
    key: str = Field(min_length=1, max_length=255, examples=["NODE_ENV"],
                     json_schema_extra={"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                     description="[A-Za-z_][A-Za-z0-9_]*; PORT is reserved")
    value: str = Field(max_length=1_048_576, examples=["production"],
                       json_schema_extra={"pattern": "^[^\\x00]*$"},
                       description="UTF-8, no NUL, at most [services] env_value_max_bytes bytes")
    secret: bool = Field(default=False, description="Mask the value in listings")


class EnvVarBody(Resource):
    key: str
    value: str = Field(description=f"The value, or {MASK!r} when secret")
    secret: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, var: EnvVar) -> EnvVarBody:
        return cls(key=var.key, value=var.shown_value, secret=var.secret,
                   created_at=from_epoch(var.created_at), updated_at=from_epoch(var.updated_at))


class EnvVarSet(EnvVarBody):
    created: bool = Field(description="True when the key was new")
    restarted: bool = Field(description="True when the service was restarted to apply it")


class EnvList(Resource):
    data: list[EnvVarBody]


class ApplyQuery(QueryModel):
    restart: bool = Field(default=False, description="Restart the service now to apply the "
                                                     "change (otherwise it applies at the next start)")


async def _apply(request: web.Request, service_id: str, restart: bool) -> bool:
    """Restart the service when asked and it is meant to run."""
    supervisor = request.app[SUPERVISOR_KEY]
    if not restart or supervisor.get(service_id).desired_state is not DesiredState.RUNNING:
        return False
    await supervisor.restart(service_id)
    return True


@routes.get("/v1/services/{id}/env", summary="List a service's env vars", access="developer",
            response=EnvList, description="Secret values are shown as `********`.")
async def list_env(request: web.Request) -> EnvList:
    service = request.app[SUPERVISOR_KEY].get(request.match_info["id"])
    return EnvList(data=[EnvVarBody.of(v) for v in request.app[ENV_KEY].list(service.id)])


@routes.post("/v1/services/{id}/env", summary="Set an env var", access="developer",
             body=EnvVarCreate, query=ApplyQuery, response=EnvVarSet, status=201,
             extra_responses={200: "Replaced an existing variable"},
             description="Creates (201) or replaces (200) one variable. It applies at the next "
                         "start; `?restart=true` restarts the service now.")
async def set_env(request: web.Request, body: EnvVarCreate, query: ApplyQuery) -> web.Response:
    service = request.app[SUPERVISOR_KEY].get(request.match_info["id"])
    var, created = await request.app[ENV_KEY].set(service.id, body.key, body.value,
                                                   secret=body.secret)
    restarted = await _apply(request, service.id, query.restart)
    result = EnvVarSet.model_validate({**EnvVarBody.of(var).model_dump(), "created": created,
                                       "restarted": restarted})
    return json_response(result, 201 if created else 200)


@routes.delete("/v1/services/{id}/env/{key}", summary="Delete an env var", access="developer",
               query=ApplyQuery, status=204)
async def delete_env(request: web.Request, query: ApplyQuery) -> None:
    service = request.app[SUPERVISOR_KEY].get(request.match_info["id"])
    await request.app[ENV_KEY].delete(service.id, request.match_info["key"])
    await _apply(request, service.id, query.restart)
