"""HTTP/1.1 message heads for the built-in proxy's upstream client: parse and write.

Response framing follows RFC 9112 section 6.3: no body for HEAD, 1xx, 204 and 304; a
chunked body when chunked is the last transfer coding; another transfer coding means the
body ends when the connection does; then Content-Length, which must be one valid number;
else until the connection closes. A head that is malformed (bad status line, obsolete line
folding, header names with spaces) is refused rather than guessed at.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

__all__ = [
    "IDEMPOTENT",
    "MAX_HEAD",
    "Head",
    "UpstreamError",
    "UpstreamNotSent",
    "parse_head",
    "request_head",
]

MAX_HEAD = 64 * 1024
#: Methods a client may repeat (RFC 9110 section 9.2.2): one that met a closed connection
#: before any answer may be sent again.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_NO_BODY_STATUS = frozenset({204, 304})
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
# Each header line: a token, a colon, the value after the whitespace before it.
_FIELDS = re.compile(rb"\r\n(" + _TOKEN + rb"):[ \t]*([^\r\n]*)")
_VALID_FIELDS = re.compile(rb"(?:\r\n" + _TOKEN + rb":[^\r\n]*)*")
# The fields that frame the body, or that the proxy adds when missing.
_NOTED = re.compile(rb"\r\n(date|content-length|transfer-encoding|connection):[ \t]*([^\r\n]*)",
                    re.IGNORECASE)


class UpstreamError(Exception):
    """The app's connection failed or its answer is not valid HTTP/1.1."""


class UpstreamNotSent(UpstreamError):
    """The app closed the connection without a byte of answer (so it did not act on it,
    for a request without a body, which it could not have read in full)."""


class Head:
    """A parsed response head and how its body is framed."""

    __slots__ = ("chunked", "connection", "fields", "has_date", "keep_alive", "length",
                 "status", "status_line")

    def __init__(self, status: int, status_line: bytes, fields: bytes, *, keep_alive: bool,
                 length: int | None, chunked: bool, connection: frozenset[bytes] = frozenset(),
                 has_date: bool = False) -> None:
        self.status = status
        self.status_line = status_line  # as received
        self.fields = fields  # the header lines as received, each after its CRLF
        self.keep_alive = keep_alive
        self.length = length  # body length; None = chunked or until close
        self.chunked = chunked
        self.connection = connection  # the Connection header's tokens, lower-case
        self.has_date = has_date

    @property
    def reason(self) -> str:
        # Not surrogateescape: aiohttp writes response headers as strict UTF-8.
        return self.status_line[13:].decode("utf-8", "replace")

    @property
    def headers(self) -> list[tuple[str, str]]:
        """The header fields, in order, values trimmed (decoded as UTF-8, for aiohttp)."""
        return [(name.decode("ascii"), value.rstrip(b" \t").decode("utf-8", "replace"))
                for name, value in _FIELDS.findall(self.fields)]

    def __repr__(self) -> str:
        return (f"Head({self.status_line!r}, length={self.length}, chunked={self.chunked}, "
                f"keep_alive={self.keep_alive})")


@functools.lru_cache(maxsize=128)
def _tokens(connection: bytes) -> frozenset[bytes]:
    return frozenset(t.strip() for t in connection.split(b",")) - {b""}


def parse_head(raw: bytes, method: str) -> Head:
    """The head of a response to ``method`` (without its blank line); UpstreamError if it
    is not valid HTTP/1.1. Bytes throughout: the head is relayed as received, minus what the
    proxy removes."""
    crlf = raw.count(b"\r\n")
    if raw.count(b"\r") != crlf or raw.count(b"\n") != crlf or b"\x00" in raw:
        raise UpstreamError("bare CR, LF or NUL in the response head")  # no header injection
    line_end = raw.find(b"\r\n")
    status_line = raw if line_end < 0 else raw[:line_end]
    version, code = status_line[:8], status_line[9:12]
    if (version not in (b"HTTP/1.1", b"HTTP/1.0") or status_line[8:9] != b" " or len(code) != 3
            or not code.isdigit() or status_line[12:13] not in (b"", b" ") or code[:1] == b"0"):
        raise UpstreamError("malformed status line")
    status = int(code)
    fields = raw[len(status_line):]
    if not _VALID_FIELDS.fullmatch(fields):  # a line that is no field: no name, spaces
        raise UpstreamError("malformed header line")  # around it, obsolete line folding
    lengths: set[bytes] = set()
    encodings: list[bytes] = []
    connection = b""
    has_date = False
    for name, value in _NOTED.findall(fields):
        lower = name.lower()
        if lower == b"date":
            has_date = True
        elif lower == b"content-length":
            lengths.add(value.rstrip(b" \t"))
        elif lower == b"transfer-encoding":
            encodings += [e.strip().lower() for e in value.split(b",") if e.strip()]
        else:
            connection += b"," + value.lower()
    tokens = _tokens(connection) if connection else frozenset()
    keep_alive = (b"close" not in tokens if version == b"HTTP/1.1" else b"keep-alive" in tokens)
    length: int | None = None
    chunked = False
    if method == "HEAD" or status < 200 or status in _NO_BODY_STATUS:
        length = 0
    elif encodings:
        chunked = encodings[-1] == b"chunked"
        keep_alive = keep_alive and chunked  # another coding: the body ends with the connection
    elif lengths:
        value = next(iter(lengths))
        if len(lengths) != 1 or not value.isdigit():
            raise UpstreamError("conflicting or invalid Content-Length")
        length = int(value)
    else:
        keep_alive = False  # until close
    return Head(status, status_line, fields, keep_alive=keep_alive, length=length,
                chunked=chunked, connection=tokens, has_date=has_date)


def request_head(method: str, target: str, headers: Iterable[tuple[str, str]],
                  chunked: bool) -> bytes:
    """The bytes of a request head (``chunked``: announce a chunked body)."""
    lines = [f"{method} {target} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in headers]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    # surrogateescape: the bytes the client sent, as aiohttp's parser decoded them.
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
