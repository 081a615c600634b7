"""Webhook secrets and signatures, checked against the standardwebhooks library."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook as LibraryWebhook

from agent.webhooks.signing import (
    generate_secret,
    secret_hint,
    secret_key,
    sign,
    validate_secret,
)
from tests.support.webhooks import library_key

BODY = b'{"type":"service.crashed","timestamp":"2024-01-01T00:00:00Z","data":{"exit_code":1}}'


@pytest.mark.parametrize("secret", [generate_secret(), "webhook-secret",
                                    "whsec_" + base64.b64encode(b"k" * 24).decode(),
                                    "a plain secret with spaces and ünïcode"])
def test_library_verifies_our_signature(secret: str) -> None:
    """The library, given the secret as docs/api.md says, accepts what the agent signs."""
    assert validate_secret(secret) is None
    now = int(time.time())
    headers = {"webhook-id": "evt_1", "webhook-timestamp": str(now),
               "webhook-signature": sign(secret_key(secret), "evt_1", now, BODY)}
    assert LibraryWebhook(library_key(secret)).verify(BODY, headers)["data"] == {"exit_code": 1}
    plain_as_whsec = "whsec_" + base64.b64encode(secret_key(secret)).decode()
    assert LibraryWebhook(plain_as_whsec).verify(BODY, headers) is not None


def test_signature_matches_library_signing() -> None:
    """Byte for byte the same header value as the library's own sign()."""
    secret = generate_secret()
    expected = LibraryWebhook(secret).sign("msg_x", datetime.fromtimestamp(1700000000, tz=UTC),
                                           BODY.decode())
    assert sign(secret_key(secret), "msg_x", 1700000000, BODY) == expected


def test_generated_secrets_are_32_random_bytes() -> None:
    """Generated secrets are whsec_ + base64 of 32 bytes, and differ."""
    a, b = generate_secret(), generate_secret()
    assert a != b and len(secret_key(a)) == 32


@pytest.mark.parametrize(("secret", "issue"), [
    ("short", "8 to 256"),
    ("x" * 257, "8 to 256"),
    ("tab\there!", "control characters"),
    ("whsec_not base64!", "base64"),
    ("whsec_" + base64.b64encode(b"k" * 8).decode(), "24 to 64 bytes"),
])
def test_unusable_secrets(secret: str, issue: str) -> None:
    """Too short, too long, control characters and bad whsec_ forms are refused with a reason."""
    reason = validate_secret(secret)
    assert reason is not None and issue in reason


def test_hint_reveals_little() -> None:
    """The hint shows the form and at most the last four characters of a long secret."""
    assert secret_hint("whsec_abcdefghijklmnop1234") == "whsec_...1234"
    assert secret_hint("a-long-plain-secret-9876") == "...9876"
    assert secret_hint("webhook-secret") == "..."
