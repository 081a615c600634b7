"""Users and machine tokens, for admins: ``/v1/users`` and ``/v1/tokens``."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web
from pydantic import Field

from agent.api.routing import EndpointTable
from agent.api.schemas import ApiModel, Page, Resource
from agent.auth import Role
from agent.auth.users import EMAIL_PATTERN
from agent.keys import ACCOUNTS_KEY
from agent.timefmt import from_epoch

__all__ = ["routes"]

routes = EndpointTable("accounts")


class UserCreate(ApiModel):
    email: str = Field(max_length=320, pattern=EMAIL_PATTERN, examples=["dev@example.com"])
    password: str = Field(min_length=8, max_length=1024, examples=["a-long-passphrase"],
                          description="At least 8 characters, or auth.password_min_length if "
                                      "that is set higher")
    role: Role = "developer"


class User(Resource):
    id: str
    email: str
    role: Role
    created_at: datetime


class UserPage(Page[User]):
    pass


class TokenCreate(ApiModel):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._-]*$",
                      examples=["control-plane"])
    role: Role = "developer"


class Token(Resource):
    id: str
    name: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None = None


class CreatedToken(Token):
    token: str = Field(description="The token itself. Shown only in this response.")


class TokenPage(Page[Token]):
    pass


@routes.get("/v1/users", summary="List users", access="admin", response=UserPage)
async def list_users(request: web.Request) -> UserPage:
    return UserPage(data=[User(id=u.id, email=u.email, role=u.role,
                               created_at=from_epoch(u.created_at))
                          for u in request.app[ACCOUNTS_KEY].list_users()])


@routes.post("/v1/users", summary="Add a user", access="admin", body=UserCreate, response=User,
             status=201, errors=(409,))
async def create_user(request: web.Request, body: UserCreate) -> User:
    u = await request.app[ACCOUNTS_KEY].add_user(body.email, body.password, body.role)
    return User(id=u.id, email=u.email, role=u.role, created_at=from_epoch(u.created_at))


@routes.delete("/v1/users/{id}", summary="Remove a user and end their sessions", access="admin",
               status=204, errors=(409,),
               description="409 for the last admin: add another admin first.")
async def delete_user(request: web.Request) -> None:
    await request.app[ACCOUNTS_KEY].remove_user(request.match_info["id"])


@routes.get("/v1/tokens", summary="List machine tokens", access="admin", response=TokenPage)
async def list_tokens(request: web.Request) -> TokenPage:
    return TokenPage(data=[
        Token(id=t.id, name=t.name, role=t.role, created_at=from_epoch(t.created_at),
              revoked_at=from_epoch(t.revoked_at) if t.revoked_at else None)
        for t in request.app[ACCOUNTS_KEY].list_tokens()])


@routes.post("/v1/tokens", summary="Create a machine token (shown once)", access="admin",
             body=TokenCreate, response=CreatedToken, status=201)
async def create_token(request: web.Request, body: TokenCreate) -> web.Response:
    token, plain = await request.app[ACCOUNTS_KEY].create_token(body.name, body.role)
    created = CreatedToken(id=token.id, name=token.name, role=token.role,
                           created_at=from_epoch(token.created_at), token=plain)
    response = web.Response(body=created.model_dump_json().encode(), status=201,
                            content_type="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response


@routes.delete("/v1/tokens/{id}", summary="Revoke a machine token", access="admin", status=204)
async def revoke_token(request: web.Request) -> None:
    await request.app[ACCOUNTS_KEY].revoke_token(request.match_info["id"])
