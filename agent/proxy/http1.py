"""HTTP/1.1 message heads for the built-in proxy's upstream client: parse and write.

Response framing follows RFC 9112 section 6.3: no body for HEAD, 1xx, 204 and 304; a
chunked body when chunked is the last transfer coding; another transfer coding means the
body ends when the connection does; then Content-Length, which must be one valid number;
else until the connection closes. A head that is malformed (bad status line, obsolete line
folding, header names with spaces) is refused rather than guessed at.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["MAX_HEAD", "Head", "UpstreamError", "UpstreamNotSent", "parse_head", "request_head"]

MAX_HEAD = 64 * 1024
_NO_BODY_STATUS = frozenset({204, 304})


class UpstreamError(Exception):
    """The app's connection failed or its answer is not valid HTTP/1.1."""


class UpstreamNotSent(UpstreamError):
    """The app closed the connection without a byte of answer (so it did not act on it,
    for a request without a body, which it could not have read in full)."""


@dataclass(slots=True)
class Head:
    """A parsed response head and how its body is framed."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    keep_alive: bool
    length: int | None  # body length; None = chunked or until close
    chunked: bool


def parse_head(raw: bytes, method: str) -> Head:
    """The head of a response to ``method``; UpstreamError if it is not valid HTTP/1.1."""
    try:
        # Not surrogateescape: aiohttp writes response headers as strict UTF-8.
        text = raw.decode("utf-8", "replace")
        bare = text.replace("\r\n", "")
        if "\r" in bare or "\n" in bare or "\x00" in bare:  # no header injection downstream
            raise UpstreamError("bare CR, LF or NUL in the response head")
        status_line, *lines = text.split("\r\n")
        version, _, rest = status_line.partition(" ")
        code, _, reason = rest.partition(" ")
        status = int(code)
    except ValueError:
        raise UpstreamError("malformed status line") from None
    if version not in ("HTTP/1.1", "HTTP/1.0") or not 100 <= status <= 999 or len(code) != 3:
        raise UpstreamError("malformed status line")
    headers: list[tuple[str, str]] = []
    lengths: set[str] = set()
    encodings: list[str] = []
    connection = ""
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or line[0] in " \t":
            raise UpstreamError("malformed header line")
        value = value.strip(" \t")
        lower = name.lower()
        if lower == "content-length":
            lengths.add(value)
        elif lower == "transfer-encoding":
            encodings += [e.strip().lower() for e in value.split(",") if e.strip()]
        elif lower == "connection":
            connection += "," + value.lower()
        headers.append((name, value))
    tokens = {t.strip() for t in connection.split(",")} if connection else set()
    keep_alive = ("close" not in tokens if version == "HTTP/1.1" else "keep-alive" in tokens)
    if method == "HEAD" or status < 200 or status in _NO_BODY_STATUS:
        return Head(status, reason, headers, keep_alive, 0, False)
    if encodings:
        if encodings[-1] == "chunked":
            return Head(status, reason, headers, keep_alive, None, True)
        return Head(status, reason, headers, False, None, False)  # until close
    if lengths:
        if len(lengths) != 1 or not next(iter(lengths)).isdigit():
            raise UpstreamError("conflicting or invalid Content-Length")
        return Head(status, reason, headers, keep_alive, int(next(iter(lengths))), False)
    return Head(status, reason, headers, False, None, False)


def request_head(method: str, target: str, headers: Iterable[tuple[str, str]],
                  chunked: bool) -> bytes:
    """The bytes of a request head (``chunked``: announce a chunked body)."""
    lines = [f"{method} {target} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in headers]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    # surrogateescape: the bytes the client sent, as aiohttp's parser decoded them.
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
