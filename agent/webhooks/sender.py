"""One HTTP attempt at a webhook target, and how its outcome is told.

The request is a POST of the JSON body with the Standard Webhooks headers (``webhook-id``,
``webhook-timestamp``, ``webhook-signature``) and ``dployr-event``, ``dployr-delivery``,
``dployr-attempt``. Redirects are not followed (a 3xx is a failure), the whole attempt is
bounded by ``[webhooks] timeout``, at most ``max_response_bytes`` of the response body are read,
and every connection goes through the SSRF guard (``GuardedResolver``), which pins the
connection to the addresses it checked. Environment proxies are ignored.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Literal

import aiohttp

from agent.clock import Clock
from agent.config import WebhooksConfig
from agent.records import record
from agent.timefmt import from_epoch
from agent.webhooks.schedule import parse_retry_after
from agent.webhooks.signing import sign
from agent.webhooks.ssrf import GuardedResolver, TargetRefused, check_url

__all__ = ["AttemptResult", "Message", "Sender", "build_body"]

Outcome = Literal["succeeded", "failed", "refused"]
_EXCERPT_BYTES = 512


def build_body(event_type: str, created_at: float, data_json: str) -> bytes:
    """The request body: ``{"type", "timestamp", "data"}`` with the event's time in ISO 8601
    (UTC). The same bytes on every attempt; ``data_json`` is the event's stored JSON."""
    timestamp = from_epoch(created_at).isoformat().replace("+00:00", "Z")
    return (f'{{"type":{json.dumps(event_type)},"timestamp":{json.dumps(timestamp)},'
            f'"data":{data_json}}}').encode()


@record
class Message:
    """What one attempt sends. ``msg_id`` (the event id) is the same on every retry."""

    msg_id: str
    event_type: str
    body: bytes
    delivery_id: str
    attempt: int


@record
class AttemptResult:
    """What happened. ``gone`` is a 410: the target asked never to be called again."""

    outcome: Outcome
    duration_ms: float
    status_code: int | None = None
    error: str | None = None
    retry_after: float | None = None
    response_excerpt: str | None = None
    gone: bool = False


class Sender:
    """Sends attempts over one shared HTTP client session (``start`` before use)."""

    def __init__(self, config: WebhooksConfig, clock: Clock, *, user_agent: str) -> None:
        self._config = config
        self._clock = clock
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the client session."""
        # One connection per attempt (force_close): every attempt resolves and checks afresh.
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(allow_private=self._config.allow_private_targets),
            use_dns_cache=False, force_close=True, limit=self._config.concurrency)
        self._session = aiohttp.ClientSession(connector=connector, trust_env=False,
                                              auto_decompress=False)

    async def close(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def headers(self, key: bytes, message: Message) -> dict[str, str]:
        """The request headers of one attempt, signed now."""
        timestamp = int(self._clock.time())
        return {
            "Content-Type": "application/json",
            "User-Agent": self._user_agent,
            "Accept-Encoding": "identity",
            "webhook-id": message.msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(key, message.msg_id, timestamp, message.body),
            "dployr-event": message.event_type,
            "dployr-delivery": message.delivery_id,
            "dployr-attempt": str(message.attempt),
        }

    async def send(self, url: str, key: bytes, message: Message) -> AttemptResult:
        """Make one attempt; never raises for anything the target or network does."""
        if self._session is None:
            raise RuntimeError("the sender is not started")
        started = time.perf_counter()

        def elapsed() -> float:
            return round((time.perf_counter() - started) * 1000, 2)

        try:
            check_url(url, allow_private=self._config.allow_private_targets,
                      require_https=self._config.require_https)
            timeout = aiohttp.ClientTimeout(total=self._config.timeout)
            async with self._session.post(url, data=message.body,
                                          headers=self.headers(key, message),
                                          allow_redirects=False, timeout=timeout) as resp:
                excerpt = await self._read_capped(resp)
                return self._judge(resp, excerpt, elapsed())
        except TargetRefused as exc:
            return AttemptResult("refused", elapsed(), error=f"refused: {exc.reason}")
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            return AttemptResult("failed", elapsed(),
                                 error=f"timed out after {self._config.timeout:g} s")
        except aiohttp.ClientError as exc:
            return AttemptResult("failed", elapsed(), error=_describe(exc))
        except OSError as exc:
            return AttemptResult("failed", elapsed(),
                                 error=f"network error: {exc.strerror or type(exc).__name__}")

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes:
        cap = self._config.max_response_bytes
        data = bytearray()
        while len(data) < cap:
            part = await resp.content.read(cap - len(data))
            if not part:
                break
            data += part
        if not resp.content.at_eof():
            resp.close()  # more than we read: drop the connection rather than read on
        return bytes(data[:_EXCERPT_BYTES])

    def _judge(self, resp: aiohttp.ClientResponse, excerpt: bytes, duration_ms: float,
               ) -> AttemptResult:
        status = resp.status
        text = excerpt.decode("utf-8", errors="replace") or None
        if 200 <= status < 300:
            return AttemptResult("succeeded", duration_ms, status_code=status,
                                 response_excerpt=text)
        retry_after = parse_retry_after(resp.headers.get("Retry-After"), self._clock.time())
        if 300 <= status < 400:
            error = f"HTTP {status}: redirects are not followed"
        elif status == 410:
            error = "HTTP 410 Gone: the webhook was disabled"
        else:
            error = f"HTTP {status}"
        return AttemptResult("failed", duration_ms, status_code=status, error=error,
                             retry_after=retry_after, response_excerpt=text, gone=status == 410)


def _describe(exc: aiohttp.ClientError) -> str:
    """A short reason for the attempt log; never the request (it carries the signature)."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "TLS certificate verification failed"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "TLS handshake failed"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"cannot resolve {exc.host}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"connection to {exc.host}:{exc.port} failed: {exc.os_error.strerror or 'error'}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection without answering"
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientResponseError):
        return "the response was not valid HTTP"
    if isinstance(exc, aiohttp.InvalidURL):
        return "invalid URL"
    return f"request failed ({type(exc).__name__})"
