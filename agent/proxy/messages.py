"""Bytes the built-in proxy's fast path writes to clients, and how it reads request targets.

* ``response_head``: the app's response head as relayed (hop-by-hop headers removed as in
  ``headers.response_headers``), with the framing this client gets: the app's Content-Length
  when it sent one; else chunked for HTTP/1.1 clients, or the body until the connection
  closes for HTTP/1.0 ones. A ``Date`` is added when the app sent none.
* ``error_response``: the API's error envelope (JSON) for the proxy's own answers (400, 404,
  405, 431, 502, 504 ...), complete with its length.
* ``split_target``: the request target sent upstream and the decoded path routes match on.
"""

from __future__ import annotations

import http
import json
import re
import time
from email.utils import formatdate
from urllib.parse import unquote

import httptools

from agent.errors import AgentError
from agent.proxy.headers import (
    HOP_BY_HOP,
    TrustedNetworks,
    forwarded_items,
    forwarded_lines,
    request_lines,
    strip_hop_by_hop,
)
from agent.proxy.http1 import Head, request_head
from agent.records import record

__all__ = [
    "BadTarget",
    "HeadTooLarge",
    "OutFraming",
    "error_response",
    "http_date",
    "response_head",
    "split_target",
    "upstream_request_head",
]

_date_cache: tuple[int, str] = (0, "")
_LENGTH_LINES = re.compile(rb"\r\ncontent-length:[^\r\n]*", re.IGNORECASE)


def http_date() -> str:
    """The current time as an HTTP date (formatted once per second)."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


@record
class OutFraming:
    """How a relayed response's body goes to the client."""

    chunked: bool  # re-encode the body in chunks
    keep_alive: bool  # the client connection stays open afterwards


def response_head(head: Head, *, http10: bool, keep_alive: bool) -> tuple[bytes, OutFraming]:
    """The head to send the client for the app's ``head``, and the body's framing.

    ``keep_alive``: whether the client connection may stay open (its request allowed it and
    the proxy is not stopping); it is turned off for an HTTP/1.0 client whose body can only
    end with the connection.
    """
    known_length = head.length is not None
    chunked = not known_length and not http10
    if not known_length and http10:
        keep_alive = False
    fields = strip_hop_by_hop(head.fields, head.connection)
    if not known_length:  # the body is re-framed: a length alongside would contradict it
        fields = _LENGTH_LINES.sub(b"", fields)
    status_line = head.status_line
    parts = [b"HTTP/1.1" + status_line[8:] if len(status_line) > 12 else
             b"HTTP/1.1 %d " % head.status, fields]
    if not head.has_date:
        parts.append(b"\r\nDate: " + http_date().encode())
    if chunked:
        parts.append(b"\r\nTransfer-Encoding: chunked")
    if not keep_alive:
        parts.append(b"\r\nConnection: close")
    elif http10:
        parts.append(b"\r\nConnection: keep-alive")
    parts.append(b"\r\n\r\n")
    return b"".join(parts), OutFraming(chunked, keep_alive)


def error_response(error: AgentError, *, head_only: bool, keep_alive: bool) -> bytes:
    """A complete response carrying ``error`` in the API's envelope (no body for HEAD)."""
    body = json.dumps(error.to_dict(), separators=(",", ":")).encode()
    lines = [f"HTTP/1.1 {error.status} {_reason(error.status)}",
             "Content-Type: application/json", f"Content-Length: {len(body)}",
             f"Date: {http_date()}"]
    lines += [f"{name}: {value}" for name, value in error.headers.items()]
    if not keep_alive:
        lines.append("Connection: close")
    lines.append("\r\n")
    head = "\r\n".join(lines).encode("utf-8")
    return head if head_only else head + body


class HeadTooLarge(AgentError):
    status = 431
    code = "request_header_fields_too_large"
    default_message = "The request head is too large"


def _tokens(connection: str) -> frozenset[str]:
    return frozenset(t.strip() for t in connection.split(",")) - {""}


def upstream_request_head(raw_head: bytes, headers: list[tuple[str, str]], *, method: str,
                          origin_form: bool, target: str, http10: bool, host: str | None,
                          authority: str, chunked: bool, connection: str, prior: bool,
                          peer: str | None, trusted: TrustedNetworks) -> bytes:
    """The request head for the app: the client's fields minus those ``forwarded_items``
    drops, its X-Forwarded-* lines, Host (``authority``) when the client sent none (HTTP/1.0),
    and the body's framing, on an HTTP/1.1 request line.

    ``raw_head`` is the head as received (llhttp accepted it) and ``headers`` its fields
    decoded; ``connection``: the Connection header's values joined with commas; ``prior``:
    the client sent X-Forwarded-* headers. Usually the client's own lines are reused (one
    regex pass, no decoding); through ``forwarded_items`` when Connection names other
    headers, a trusted peer's X-Forwarded-* must be kept, or the target is not origin-form.
    """
    if (raw_head[:1] in (b"\r", b"\n") or not origin_form
            or (connection and not _tokens(connection) <= HOP_BY_HOP)
            or (prior and trusted.contains(peer))):
        items = forwarded_items(headers, peer=peer, host=host or "", scheme="http",
                                trusted=trusted)
        if host is None:
            items.append(("Host", authority))
        return request_head(method, target, items, chunked)
    line_end = raw_head.find(b"\r\n")
    line = raw_head[:line_end - 3] + b"1.1" if http10 else raw_head[:line_end]
    return b"".join((
        line, request_lines(raw_head[line_end:-4]), forwarded_lines(peer, host or "", "http"),
        b"" if host is not None else b"\r\nHost: " + authority.encode(),
        b"\r\nTransfer-Encoding: chunked\r\n\r\n" if chunked else b"\r\n\r\n"))


class BadTarget(ValueError):
    """The request target is not one the proxy forwards."""


def split_target(raw: bytes) -> tuple[str, str]:
    """(target to send upstream, percent-decoded path for route matching).

    Origin-form (``/path?query``) goes upstream as the client sent it (the app decodes it
    itself); absolute-form (``http://host/path?query``) is reduced to its path and query; the
    asterisk form is kept for OPTIONS. Raises ``BadTarget`` for anything else (authority
    form, garbage).
    """
    if raw[:1] == b"/":
        target = raw.decode("utf-8", "surrogateescape")
    elif raw == b"*":
        return "*", "*"
    else:
        try:
            url = httptools.parse_url(raw)
        except httptools.HttpParserInvalidURLError:
            raise BadTarget("malformed request target") from None
        if url.schema not in (b"http", b"https") or not url.host:
            raise BadTarget("unsupported request target")
        target = ((url.path or b"/") + (b"?" + url.query if url.query else b"")).decode(
            "utf-8", "surrogateescape")
    path = target.partition("?")[0]
    if "%" in path:
        path = unquote(path, errors="surrogateescape")
    return target, path
