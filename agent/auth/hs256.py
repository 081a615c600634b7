"""JSON Web Tokens signed with HS256, and nothing else (RFC 7515 compact form, RFC 7519 claims).

The agent signs and checks its own access tokens with one shared secret, so it needs exactly
one algorithm. Doing that here (``hmac`` and ``json`` from the standard library) instead of
with PyJWT keeps ``cryptography`` (about 9 MB of resident memory, for algorithms we refuse
anyway) out of the agent's process. Tokens are interchangeable with PyJWT's: the tests check
both directions.

Decoding is strict: exactly three base64url segments without padding, a header whose
``alg`` is ``HS256`` (``none``, HS512, RS256... are refused before any signature check) and
that names no critical extension, a signature compared in constant time against the
canonical encoding of the expected one (so no two spellings of a signature are accepted), and
a JSON object as payload. Claims are checked by the caller (``agent.auth.tokens``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from typing import Any

__all__ = ["ALGORITHM", "InvalidToken", "decode", "encode"]

ALGORITHM = "HS256"
_HEADER = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=").decode()
_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")


class InvalidToken(Exception):
    """The token is not a JWT signed with HS256 by this secret."""


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(segment: str) -> bytes:
    if not _SEGMENT.fullmatch(segment) or len(segment) % 4 == 1:
        raise InvalidToken("not base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("not base64url") from None


def _signature(secret: bytes, signing_input: str) -> str:
    return _b64encode(hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest())


def encode(payload: dict[str, Any], secret: bytes) -> str:
    """The compact JWT of ``payload``, signed with HS256 and ``secret``."""
    body = _b64encode(json.dumps(payload, separators=(",", ":")).encode())
    signing_input = f"{_HEADER}.{body}"
    return f"{signing_input}.{_signature(secret, signing_input)}"


def decode(token: str, secret: bytes) -> dict[str, Any]:
    """The payload of ``token`` if it is an HS256 JWT signed with ``secret``; else InvalidToken."""
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidToken("not a compact JWS")
    header_segment, payload_segment, signature = parts
    try:
        header = json.loads(_b64decode(header_segment))
    except (ValueError, UnicodeDecodeError):
        raise InvalidToken("bad header") from None
    if not isinstance(header, dict) or header.get("alg") != ALGORITHM or "crit" in header:
        raise InvalidToken("algorithm not allowed")
    expected = _signature(secret, f"{header_segment}.{payload_segment}")
    if not hmac.compare_digest(expected.encode(), signature.encode("ascii", "replace")):
        raise InvalidToken("bad signature")
    try:
        payload = json.loads(_b64decode(payload_segment))
    except (ValueError, UnicodeDecodeError):
        raise InvalidToken("bad payload") from None
    if not isinstance(payload, dict):
        raise InvalidToken("payload is not an object")
    return payload
