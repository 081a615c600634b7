"""The agent's own HS256 JWT codec: interchangeable with PyJWT, and strict where it matters."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import jwt
import pytest

from agent.auth import hs256

SECRET = b"s" * 64
PAYLOAD = {"iss": "dployr-agent", "sub": "usr_1", "sid": "ses_1", "jti": "jti_1", "iat": 100,
           "exp": 200, "typ": "access"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _signed(header: bytes, payload: bytes, secret: bytes = SECRET) -> str:
    """Raw header and payload bytes, signed over their segments with HS256."""
    signing_input = f"{_b64(header)}.{_b64(payload)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _forge(header: dict[str, object], payload: dict[str, object]) -> str:
    """A token with any header, signed over its segments with HS256."""
    return _signed(json.dumps(header).encode(), json.dumps(payload).encode())


def test_tokens_we_sign_are_valid_for_pyjwt() -> None:
    """PyJWT accepts our tokens, with the HS256 header."""
    token = hs256.encode(PAYLOAD, SECRET)
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    assert jwt.decode(token, SECRET, algorithms=["HS256"], issuer="dployr-agent",
                      options={"verify_exp": False, "verify_iat": False}) == PAYLOAD


def test_tokens_pyjwt_signs_are_valid_for_us() -> None:
    """Tokens issued before (by PyJWT) keep working."""
    assert hs256.decode(jwt.encode(PAYLOAD, SECRET, algorithm="HS256"), SECRET) == PAYLOAD


@pytest.mark.parametrize("name", ["none", "HS512", "RS256", "hs256", "missing", "crit"])
def test_other_algorithms_are_refused(name: str) -> None:
    """alg none, other HMACs, public-key algorithms, a lower-case alg, no alg, or a critical
    extension: refused even when the HMAC over the segments is right."""
    header: dict[str, object] = {"typ": "JWT"}
    if name == "crit":
        header.update(alg="HS256", crit=["exp"], exp=1)
    elif name != "missing":
        header["alg"] = name
    with pytest.raises(hs256.InvalidToken):
        hs256.decode(_forge(header, PAYLOAD), SECRET)
    unsigned = f"{_b64(json.dumps({'alg': 'none'}).encode())}.{_b64(json.dumps(PAYLOAD).encode())}."
    with pytest.raises(hs256.InvalidToken):
        hs256.decode(unsigned, SECRET)


def test_signature_must_match_exactly() -> None:
    """A wrong secret, a changed payload, or another spelling of the signature is refused."""
    token = hs256.encode(PAYLOAD, SECRET)
    header, payload, signature = token.split(".")
    other = _b64(json.dumps({**PAYLOAD, "sub": "usr_admin"}).encode())
    for bad in (hs256.encode(PAYLOAD, b"t" * 64), f"{header}.{other}.{signature}",
                f"{header}.{payload}.{signature}=", f"{header}.{payload}.{signature}A",
                f"{header}.{payload}.{signature[:-1]}", f"{header}.{payload}.",
                f"{header}.{payload}.{signature}+/", f"{header}.{payload}.{signature}.x",
                f"{header}.{payload}", "", "...", "a.b.c"):
        with pytest.raises(hs256.InvalidToken):
            hs256.decode(bad, SECRET)
    # The last character of a 43-character signature carries 2 unused bits: flipping them
    # decodes to the same bytes, and must still be refused.
    last = signature[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = alphabet[alphabet.index(last) ^ 1]
    assert base64.urlsafe_b64decode(signature[:-1] + twin + "=") == \
        base64.urlsafe_b64decode(signature + "=")
    with pytest.raises(hs256.InvalidToken):
        hs256.decode(f"{header}.{payload}.{signature[:-1]}{twin}", SECRET)


def test_payload_must_be_a_json_object() -> None:
    """A correctly signed payload that is not a JSON object is refused."""
    for payload in (b"[1, 2]", b"not json", b"\xff\xfe"):
        with pytest.raises(hs256.InvalidToken):
            hs256.decode(_signed(b'{"alg":"HS256"}', payload), SECRET)

