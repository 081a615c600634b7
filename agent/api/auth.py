"""Authentication endpoints: login, refresh, logout, me."""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from pydantic import Field

from agent.api.routing import EndpointTable, json_response, principal_of
from agent.api.schemas import ApiModel, Resource
from agent.auth import Role, TokenPair
from agent.keys import AUTH_KEY

__all__ = ["routes"]

routes = EndpointTable("auth")


class LoginRequest(ApiModel):
    email: str = Field(min_length=3, max_length=320, examples=["user@example.com"])
    password: str = Field(min_length=1, max_length=1024, examples=["password"])


class RefreshRequest(ApiModel):
    refresh_token: str = Field(min_length=1, max_length=512)


class TokenResponse(Resource):
    access_token: str
    refresh_token: str
    expires_in: int = Field(description="Seconds until the access token expires")
    token_type: Literal["Bearer"] = "Bearer"


class Me(Resource):
    kind: Literal["user", "token"]
    id: str
    name: str = Field(description="The user's email, or the machine token's name")
    role: Role


def _tokens(pair: TokenPair) -> web.Response:
    response = json_response(TokenResponse(access_token=pair.access_token,
                                           refresh_token=pair.refresh_token,
                                           expires_in=pair.expires_in))
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


@routes.post("/v1/auth/login", summary="Log in with email and password", access="public",
             body=LoginRequest, response=TokenResponse, errors=(401,),
             description="The same 401 for an unknown email and a wrong password. Failed "
                         "logins are also limited per account (429).")
async def login(request: web.Request, body: LoginRequest) -> web.Response:
    return _tokens(await request.app[AUTH_KEY].login(body.email, body.password))


@routes.post("/v1/auth/refresh", summary="Exchange a refresh token for new tokens",
             access="public", body=RefreshRequest, response=TokenResponse, errors=(401,),
             description="The refresh token rotates: each is good once. Presenting a used one "
                         "revokes the whole session.")
async def refresh(request: web.Request, body: RefreshRequest) -> web.Response:
    return _tokens(await request.app[AUTH_KEY].refresh(body.refresh_token))


@routes.post("/v1/auth/logout", summary="End this login session", access="viewer", status=204,
             errors=(403,),
             description="Revokes the session: its access and refresh tokens stop working. "
                         "Machine tokens get 403: revoke them with DELETE /v1/tokens/{id}.")
async def logout(request: web.Request) -> None:
    await request.app[AUTH_KEY].logout(principal_of(request))


@routes.get("/v1/auth/me", summary="Who the bearer token belongs to", access="viewer",
            response=Me)
async def get_me(request: web.Request) -> Me:
    principal = principal_of(request)
    return Me(kind=principal.kind, id=principal.id, name=principal.name, role=principal.role)
