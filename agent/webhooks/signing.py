"""Webhook secrets and Standard Webhooks signatures.

A secret comes in one of two forms, and both map to the raw HMAC-SHA256 key in the way the
``standardwebhooks`` libraries expect:

- ``whsec_<base64>`` (the Standard Webhooks form, and what the agent generates): the key is the
  base64-decoded part after the prefix, 24 to 64 bytes. A receiver passes the string unchanged
  to ``Webhook("whsec_...")``.
- any other string of 8 to 256 printable characters (e.g. the seed's ``"webhook-secret"``):
  the key is its UTF-8 bytes. A receiver passes those bytes, ``Webhook(secret.encode())``, or
  equivalently ``Webhook("whsec_" + base64(secret))``.

The signature is ``v1,<base64 HMAC-SHA256(key, f"{msg_id}.{timestamp}.{body}")>``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

__all__ = [
    "MAX_PLAIN_LENGTH",
    "MIN_PLAIN_LENGTH",
    "SECRET_PREFIX",
    "generate_secret",
    "secret_hint",
    "secret_key",
    "sign",
    "validate_secret",
]

SECRET_PREFIX = "whsec_"
MIN_PLAIN_LENGTH = 8
MAX_PLAIN_LENGTH = 256
_MIN_KEY_BYTES = 24
_MAX_KEY_BYTES = 64


def generate_secret() -> str:
    """A new ``whsec_`` secret with a 32-byte random key."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def validate_secret(secret: str) -> str | None:
    """Why ``secret`` cannot be used, or None when it can."""
    if secret.startswith(SECRET_PREFIX):
        try:
            key = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
        except (binascii.Error, ValueError):
            return "A 'whsec_' secret must be followed by valid base64"
        if not _MIN_KEY_BYTES <= len(key) <= _MAX_KEY_BYTES:
            return (f"A 'whsec_' secret must encode {_MIN_KEY_BYTES} to {_MAX_KEY_BYTES} bytes, "
                    f"not {len(key)}")
        return None
    if not MIN_PLAIN_LENGTH <= len(secret) <= MAX_PLAIN_LENGTH:
        return f"Must be {MIN_PLAIN_LENGTH} to {MAX_PLAIN_LENGTH} characters long"
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or 0xD800 <= ord(c) <= 0xDFFF for c in secret):
        return "Must not contain control characters"
    return None


def secret_key(secret: str) -> bytes:
    """The HMAC key of a valid secret (see the module docstring)."""
    if secret.startswith(SECRET_PREFIX):
        return base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    return secret.encode()


def secret_hint(secret: str) -> str:
    """A hint that tells secrets apart without weakening them: the form and, for long
    secrets only, the last four characters."""
    if secret.startswith(SECRET_PREFIX):
        return f"{SECRET_PREFIX}...{secret[-4:]}"
    return f"...{secret[-4:]}" if len(secret) >= 20 else "..."


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one message."""
    to_sign = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, to_sign, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()
