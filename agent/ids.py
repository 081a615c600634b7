"""Identifiers: short, URL-safe, time-sortable strings with a type prefix (``prj_...``)."""

from __future__ import annotations

import secrets
import time

__all__ = ["new_id", "new_secret"]

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


def _b32(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, rem = divmod(value, 32)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    """A new id such as ``prj_01hx3v9k2m7q8r4t5w6y``: 48 bits of milliseconds, 60 random bits.

    Ids of one prefix sort in creation order (to the millisecond), so they work as cursors.
    """
    millis = time.time_ns() // 1_000_000
    return f"{prefix}_{_b32(millis, 10)}{_b32(secrets.randbits(60), 12)}"


def new_secret(nbytes: int = 32) -> str:
    """A random URL-safe secret string."""
    return secrets.token_urlsafe(nbytes)
