"""Token formats: signed access JWTs, opaque refresh tokens and machine API tokens.

Access tokens are JWTs signed with HS256 only (the algorithm is pinned on decode, so
``alg: none`` and key-confusion tricks fail; see ``agent.auth.hs256``) and must carry iss,
exp, iat, jti, sub and sid. Refresh and machine tokens are random strings; only their
SHA-256 is stored.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from agent.auth import hs256
from agent.ids import new_id
from agent.records import record

__all__ = [
    "API_TOKEN_PREFIX",
    "AccessClaims",
    "TokenError",
    "decode_access_token",
    "hash_token",
    "issue_access_token",
    "load_or_create_secret",
    "new_api_token",
    "new_refresh_token",
]

ALGORITHM = hs256.ALGORITHM
ISSUER = "dployr-agent"
API_TOKEN_PREFIX = "dpl_"
REFRESH_TOKEN_PREFIX = "dplr_"


_REQUIRED = ("exp", "iat", "jti", "sub", "sid", "iss")


class TokenError(Exception):
    """The token is malformed, expired, or not signed by us."""


@record
class AccessClaims:
    user_id: str
    session_id: str
    jti: str
    expires_at: int


def load_or_create_secret(path: Path) -> bytes:
    """The signing secret stored at ``path`` (0600), created with 64 random bytes if absent."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_bytes().strip()
        if len(secret) < 32:
            raise TokenError(f"the token secret in {path} is too short; "
                             "delete it to make a new one") from None
        return secret
    secret = secrets.token_hex(64).encode()
    try:
        os.write(fd, secret)
        os.fsync(fd)
    finally:
        os.close(fd)
    return secret


def issue_access_token(secret: bytes, *, user_id: str, session_id: str, now: float,
                       ttl: int) -> tuple[str, AccessClaims]:
    """A signed access token for the session, valid for ``ttl`` seconds from ``now``."""
    issued = int(now)
    claims = AccessClaims(user_id=user_id, session_id=session_id, jti=new_id("jti"),
                          expires_at=issued + ttl)
    payload = {"iss": ISSUER, "sub": user_id, "sid": session_id, "jti": claims.jti,
               "iat": issued, "exp": claims.expires_at, "typ": "access"}
    return hs256.encode(payload, secret), claims


def decode_access_token(secret: bytes, token: str, *, now: float) -> AccessClaims:
    """The claims of a valid access token; raise TokenError for anything else.

    Every time check uses ``now`` (the agent's clock), never the library's own clock.
    """
    try:
        payload = hs256.decode(token, secret)
    except hs256.InvalidToken:
        raise TokenError("invalid token") from None
    if any(claim not in payload for claim in _REQUIRED) or payload["iss"] != ISSUER:
        raise TokenError("invalid token")
    if "aud" in payload:  # not meant for us (PyJWT refused these too)
        raise TokenError("invalid token")
    exp, iat = payload.get("exp"), payload.get("iat")
    if payload.get("typ") != "access" or not isinstance(exp, int) or not isinstance(iat, int):
        raise TokenError("invalid token")
    if exp <= now:
        raise TokenError("expired token")
    sub, sid, jti = payload.get("sub"), payload.get("sid"), payload.get("jti")
    if not (isinstance(sub, str) and isinstance(sid, str) and isinstance(jti, str)):
        raise TokenError("invalid token")
    return AccessClaims(user_id=sub, session_id=sid, jti=jti, expires_at=exp)


def hash_token(token: str) -> str:
    """The stored form of an opaque token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_refresh_token() -> str:
    """A new opaque refresh token."""
    return REFRESH_TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_api_token() -> str:
    """A new opaque machine token."""
    return API_TOKEN_PREFIX + secrets.token_urlsafe(32)
