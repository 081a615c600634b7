"""Webhooks endpoints (seed: Webhooks), admin only: hooks reveal where events go."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from aiohttp import web
from pydantic import AfterValidator, Field
from pydantic.config import JsonDict

from agent.api.routing import EndpointTable
from agent.api.schemas import ApiModel, Page, PageQuery, Resource
from agent.events import EVENT_TYPES
from agent.keys import WEBHOOKS_KEY
from agent.timefmt import from_epoch
from agent.webhooks import PING_EVENT, Attempt, Delivery, Webhook
from agent.webhooks.signing import MAX_PLAIN_LENGTH, MIN_PLAIN_LENGTH

__all__ = ["routes"]

routes = EndpointTable("webhooks")


def _known_event(name: str) -> str:
    if name != "*" and name not in EVENT_TYPES:
        raise ValueError(f"Unknown event type '{name}'")
    return name


# The schema lists the names; the validator gives the error naming the unknown one.
EventName = Annotated[str, Field(max_length=100, json_schema_extra={
    "enum": sorted(EVENT_TYPES | {"*"})}), AfterValidator(_known_event)]
_EVENTS_DOC = "Event types to deliver, or [\"*\"] for all: " + ", ".join(sorted(EVENT_TYPES))
# Declared in the schema; enforced (with clearer messages) by the webhook service.
_SECRET_SCHEMA: JsonDict = {"minLength": MIN_PLAIN_LENGTH, "maxLength": MAX_PLAIN_LENGTH,
                  "pattern": r"^[^\x00-\x1f\x7f-\x9f]+$"}
_URL_SCHEMA: JsonDict = {"format": "uri", "pattern": r"^https?://[^/?#\s]+"}
_SECRET_DOC = ("A 'whsec_' + base64 secret (24-64 bytes), or any 8-256 printable characters "
               "(the HMAC key is then their UTF-8 bytes). Generated when absent. Never returned "
               "after this response.")


class WebhookCreate(ApiModel):
    url: str = Field(max_length=2048, json_schema_extra=_URL_SCHEMA,
                     examples=["https://example.com/webhook"])
    events: list[EventName] = Field(min_length=1, max_length=64, description=_EVENTS_DOC,
                                    examples=[["deployment.created", "deployment.failed"]])
    secret: str | None = Field(default=None, max_length=MAX_PLAIN_LENGTH + 100,
                               json_schema_extra=_SECRET_SCHEMA,
                               description=_SECRET_DOC, examples=["webhook-secret"])


class WebhookUpdate(ApiModel):
    url: str | None = Field(default=None, max_length=2048, json_schema_extra=_URL_SCHEMA)
    events: list[EventName] | None = Field(default=None, min_length=1, max_length=64)
    enabled: bool | None = None
    secret: str | None = Field(default=None, max_length=MAX_PLAIN_LENGTH + 100,
                               json_schema_extra=_SECRET_SCHEMA,
                               description="A new secret; not returned.")


class WebhookOut(Resource):
    id: str
    url: str
    events: list[str]
    enabled: bool
    disabled_reason: str | None
    secret_hint: str = Field(description="Tells secrets apart; never the secret itself")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, hook: Webhook) -> WebhookOut:
        return cls(id=hook.id, url=hook.url, events=list(hook.events), enabled=hook.enabled,
                   disabled_reason=hook.disabled_reason, secret_hint=hook.secret_hint,
                   created_at=from_epoch(hook.created_at), updated_at=from_epoch(hook.updated_at))


class CreatedWebhook(WebhookOut):
    secret: str = Field(description="The signing secret. Shown only in this response.")


class WebhookPage(Page[WebhookOut]):
    pass


class PingOut(Resource):
    webhook_id: str
    event_id: str = Field(description="Also the webhook-id header of the delivery")
    type: Literal["webhook.ping"] = PING_EVENT
    created_at: datetime


class AttemptOut(Resource):
    number: int
    started_at: datetime
    duration_ms: float | None
    outcome: Literal["in_progress", "succeeded", "failed", "refused", "interrupted"]
    status_code: int | None
    error: str | None
    response_excerpt: str | None = Field(description="The first 512 bytes of the response body")
    next_attempt_at: datetime | None

    @classmethod
    def of(cls, a: Attempt) -> AttemptOut:
        return cls(number=a.number, started_at=from_epoch(a.started_at), duration_ms=a.duration_ms,
                   outcome=a.outcome, status_code=a.status_code,
                   error=a.error, response_excerpt=a.response_excerpt,
                   next_attempt_at=_maybe(a.next_attempt_at))


class DeliveryOut(Resource):
    id: str
    webhook_id: str
    event_id: str
    event_type: str
    status: Literal["pending", "delivering", "succeeded", "failed", "cancelled"]
    attempts: int
    interrupted: int = Field(description="Attempts cut short by an agent crash: the target may "
                                         "have received the event more than once")
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    attempt_log: list[AttemptOut]

    @classmethod
    def of(cls, d: Delivery) -> DeliveryOut:
        return cls(id=d.id, webhook_id=d.webhook_id, event_id=d.event_id, event_type=d.event_type,
                   status=d.status, attempts=d.attempts,
                   interrupted=d.interrupted, next_attempt_at=_maybe(d.next_attempt_at),
                   last_status_code=d.last_status_code, last_error=d.last_error,
                   created_at=from_epoch(d.created_at), updated_at=from_epoch(d.updated_at),
                   completed_at=_maybe(d.completed_at),
                   attempt_log=[AttemptOut.of(a) for a in d.attempt_log])


class DeliveryPage(Page[DeliveryOut]):
    pass


def _maybe(ts: float | None) -> datetime | None:
    return None if ts is None else from_epoch(ts)


@routes.get("/v1/webhooks", summary="List webhooks", access="admin", query=PageQuery,
            response=WebhookPage)
async def list_webhooks(request: web.Request, query: PageQuery) -> WebhookPage:
    hooks, cursor = request.app[WEBHOOKS_KEY].list(limit=query.limit, after=query.cursor)
    return WebhookPage(data=[WebhookOut.of(h) for h in hooks], next_cursor=cursor)


@routes.post("/v1/webhooks", summary="Register a webhook", access="admin", body=WebhookCreate,
             response=CreatedWebhook, status=201,
             description="The response is the only one that shows the secret.")
async def create_webhook(request: web.Request, body: WebhookCreate) -> CreatedWebhook:
    hook = await request.app[WEBHOOKS_KEY].create(body.url, body.events, body.secret)
    return CreatedWebhook(**WebhookOut.of(hook).model_dump(), secret=hook.secret)


@routes.get("/v1/webhooks/{id}", summary="Get a webhook", access="admin", response=WebhookOut)
async def get_webhook(request: web.Request) -> WebhookOut:
    return WebhookOut.of(request.app[WEBHOOKS_KEY].get(request.match_info["id"]))


@routes.patch("/v1/webhooks/{id}", summary="Change a webhook", access="admin",
              body=WebhookUpdate, response=WebhookOut,
              description="Setting enabled=false cancels its pending deliveries; enabled=true "
                          "re-enables a hook disabled by a 410.")
async def update_webhook(request: web.Request, body: WebhookUpdate) -> WebhookOut:
    hook = await request.app[WEBHOOKS_KEY].update(
        request.match_info["id"], url=body.url, events=body.events, enabled=body.enabled,
        secret=body.secret)
    return WebhookOut.of(hook)


@routes.delete("/v1/webhooks/{id}", summary="Delete a webhook and its delivery log",
               access="admin", status=204)
async def delete_webhook(request: web.Request) -> None:
    await request.app[WEBHOOKS_KEY].delete(request.match_info["id"])


@routes.post("/v1/webhooks/{id}/test", summary="Send a webhook.ping event to this webhook",
             access="admin", response=PingOut, status=202, errors=(409,),
             description="The ping goes through the outbox and is delivered (and retried) like "
                         "any other event; follow it in the delivery log.")
async def test_webhook(request: web.Request) -> PingOut:
    webhook_id = request.match_info["id"]
    event_id, created_at = await request.app[WEBHOOKS_KEY].ping(webhook_id)
    return PingOut(webhook_id=webhook_id, event_id=event_id, created_at=from_epoch(created_at))


@routes.get("/v1/webhooks/{id}/deliveries", summary="The delivery log of a webhook",
            access="admin", query=PageQuery, response=DeliveryPage,
            description="Oldest first; each delivery carries every attempt made.")
async def list_deliveries(request: web.Request, query: PageQuery) -> DeliveryPage:
    deliveries, cursor = request.app[WEBHOOKS_KEY].deliveries(
        request.match_info["id"], limit=query.limit, after=query.cursor)
    return DeliveryPage(data=[DeliveryOut.of(d) for d in deliveries], next_cursor=cursor)
