"""Webhooks: signed, retried, never-lost deliveries of the agent's events.

- ``signing``: secrets and Standard Webhooks signatures;
- ``ssrf``: which targets may be contacted (checked at every connection);
- ``schedule``: the retry backoff and ``Retry-After``;
- ``hooks``: the resource (create, list, change, delete, ping, delivery log);
- ``dispatcher``: outbox -> delivery rows, exactly once;
- ``sender``: one HTTP attempt; ``worker``: due attempts within concurrency limits;
- ``runtime``: starts and stops the loops.
"""

from agent.webhooks.hooks import PING_EVENT, Attempt, Delivery, Webhook, WebhookService
from agent.webhooks.runtime import WebhookRuntime

__all__ = ["PING_EVENT", "Attempt", "Delivery", "Webhook", "WebhookRuntime", "WebhookService"]
