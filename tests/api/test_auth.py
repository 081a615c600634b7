"""Login, refresh rotation and reuse detection, logout, token expiry and tampering, lockout."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient

from agent.app import AdminSeed, create_app
from agent.auth import PasswordHasher
from agent.keys import AUTH_KEY
from agent.testing import FakeClock
from tests.conftest import Client, bearer, login
from tests.support.agent import ADMIN_EMAIL, ADMIN_PASSWORD, make_config
from tests.support.api import assert_error


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(access_token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(access_token, options={"verify_signature": False})
    return claims


async def _assert_unauthorized(resp: Any) -> None:
    await assert_error(resp, 401, "unauthorized")
    assert resp.headers["WWW-Authenticate"] == "Bearer"


async def test_login_returns_tokens_not_cached(client: Client) -> None:
    """Login answers access and refresh tokens, expires_in and token_type, with no-store."""
    resp = await client.post("/v1/auth/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    body = await resp.json()
    assert set(body) == {"access_token", "refresh_token", "expires_in", "token_type"}
    assert body["expires_in"] == 3600 and body["token_type"] == "Bearer"
    assert jwt.get_unverified_header(body["access_token"])["alg"] == "HS256"
    claims = _claims(body["access_token"])
    assert {"exp", "iat", "jti", "sub", "sid"} <= set(claims)
    assert claims["exp"] - claims["iat"] == 3600
    me = await client.get("/v1/auth/me", headers=bearer(body["access_token"]))
    assert (await me.json())["name"] == ADMIN_EMAIL and (await me.json())["role"] == "admin"


async def test_login_email_is_case_insensitive(client: Client) -> None:
    """An email's domain and letter case do not matter at login."""
    body = await login(client, ADMIN_EMAIL.upper(), ADMIN_PASSWORD)
    assert body["access_token"]


async def test_configured_access_token_ttl(make_client: Callable[..., Any]) -> None:
    """expires_in follows auth.access_token_ttl."""
    client = await make_client(auth={"access_token_ttl": 600})
    assert (await login(client))["expires_in"] == 600


async def test_unknown_email_and_wrong_password_look_the_same(client: Client) -> None:
    """An unknown email and a wrong password get the same 401 body and headers."""
    wrong = await client.post("/v1/auth/login", json={"email": ADMIN_EMAIL, "password": "nope-nope"})
    unknown = await client.post("/v1/auth/login",
                                json={"email": "ghost@example.com", "password": "nope-nope"})
    for resp in (wrong, unknown):
        await _assert_unauthorized(resp)
    assert await wrong.json() == await unknown.json()


class _RecordingArgon:
    """Wraps argon2's hasher and records the parameters of each verification."""

    def __init__(self, real: Any, record: list[str]) -> None:
        self._real = real
        self._record = record

    def verify(self, password_hash: str | bytes, password: str | bytes) -> bool:
        text = password_hash if isinstance(password_hash, str) else password_hash.decode()
        self._record.append(text.rsplit("$", 2)[0])  # algorithm, version, parameters
        return bool(self._real.verify(password_hash, password))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class CountingHasher(PasswordHasher):
    """A real argon2id hasher that records the parameters of every verification it runs."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_kib=64, parallelism=1, concurrency=2)
        self.verified: list[str] = []
        self._argon = _RecordingArgon(self._argon, self.verified)  # type: ignore[assignment]


async def test_unknown_email_does_the_same_hashing_work(aiohttp_client: Any, state_dir: Path) -> None:
    """A login for an unknown email runs one argon2id verification with the same parameters."""
    hasher = CountingHasher()
    app = create_app(make_config(state_dir), hasher=hasher, admin=AdminSeed(ADMIN_EMAIL, ADMIN_PASSWORD))
    client: TestClient = await aiohttp_client(app)
    await client.post("/v1/auth/login", json={"email": ADMIN_EMAIL, "password": "wrong-password"})
    known = list(hasher.verified)
    hasher.verified.clear()
    await client.post("/v1/auth/login", json={"email": "ghost@example.com", "password": "wrong-password"})
    assert len(known) == 1 and hasher.verified == known
    assert known[0].startswith("$argon2id$")


async def test_refresh_rotates_the_token(client: Client) -> None:
    """A refresh gives a new pair; the new access token works and the refresh token changed."""
    first = await login(client)
    resp = await client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    second = await resp.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert _claims(second["access_token"])["sid"] == _claims(first["access_token"])["sid"]
    me = await client.get("/v1/auth/me", headers=bearer(second["access_token"]))
    assert me.status == 200


async def test_refresh_reuse_revokes_the_whole_family(client: Client) -> None:
    """Replaying a used refresh token revokes the session: every token of it stops working."""
    other = await login(client)  # another session of the same user is not affected
    first = await login(client)
    resp = await client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    second = await resp.json()

    replay = await client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    await _assert_unauthorized(replay)
    # The thief's and the user's newest tokens are dead too.
    again = await client.post("/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
    await _assert_unauthorized(again)
    for token in (first["access_token"], second["access_token"]):
        await _assert_unauthorized(await client.get("/v1/auth/me", headers=bearer(token)))
    assert (await client.get("/v1/auth/me", headers=bearer(other["access_token"]))).status == 200


async def test_unknown_refresh_token_is_401(client: Client) -> None:
    """A refresh token that was never issued gets 401."""
    resp = await client.post("/v1/auth/refresh", json={"refresh_token": "dplr_made-up"})
    await _assert_unauthorized(resp)


async def test_logout_revokes_access_and_refresh(client: Client) -> None:
    """After logout the session's access and refresh tokens are refused."""
    tokens = await login(client)
    resp = await client.post("/v1/auth/logout", headers=bearer(tokens["access_token"]))
    assert resp.status == 204
    await _assert_unauthorized(await client.get("/v1/auth/me", headers=bearer(tokens["access_token"])))
    resp = await client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    await _assert_unauthorized(resp)


async def test_expired_access_token_is_refused(make_client: Callable[..., Any]) -> None:
    """An access token works until its expiry on the agent's clock and not after."""
    clock = FakeClock()
    client = await make_client(clock=clock)
    tokens = await login(client)
    clock.advance(3599)
    assert (await client.get("/v1/auth/me", headers=bearer(tokens["access_token"]))).status == 200
    clock.advance(2)
    await _assert_unauthorized(await client.get("/v1/auth/me", headers=bearer(tokens["access_token"])))
    # The refresh token still works and brings a fresh access token.
    resp = await client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    fresh = await resp.json()
    assert (await client.get("/v1/auth/me", headers=bearer(fresh["access_token"]))).status == 200


async def test_expired_refresh_token_is_refused(make_client: Callable[..., Any]) -> None:
    """A refresh token is refused once the session's lifetime has passed."""
    clock = FakeClock()
    client = await make_client(clock=clock, auth={"refresh_token_ttl": 3600})
    tokens = await login(client)
    clock.advance(3601)
    resp = await client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    await _assert_unauthorized(resp)


def _forgeries(secret: bytes, good: str) -> dict[str, str]:
    claims = _claims(good)
    header = jwt.get_unverified_header(good)
    head, body, _sig = good.split(".")
    missing = {name: {k: v for k, v in claims.items() if k != name}
               for name in ("exp", "iat", "jti", "sub", "sid")}
    forged = {
        "alg_none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{body}.",
        "alg_none_upper": f"{_b64({'alg': 'NONE', 'typ': 'JWT'})}.{body}.",
        "wrong_signature": jwt.encode(claims, b"x" * 64, algorithm="HS256"),
        "hs512_right_secret": jwt.encode(claims, secret, algorithm="HS512"),
        "rs256_header": f"{_b64({**header, 'alg': 'RS256'})}.{body}.{_sig}",
        "flipped_payload": f"{head}.{_b64({**claims, 'sub': 'usr_someoneelse'})}.{_sig}",
        "refresh_typ": jwt.encode({**claims, "typ": "refresh"}, secret, algorithm="HS256"),
        "other_issuer": jwt.encode({**claims, "iss": "someone"}, secret, algorithm="HS256"),
        "unknown_session": jwt.encode({**claims, "sid": "ses_unknown"}, secret, algorithm="HS256"),
        "expired": jwt.encode({**claims, "exp": claims["iat"] - 1}, secret, algorithm="HS256"),
        "garbage": "not-a-token",
        "truncated": good[:-5],
    }
    for name, payload in missing.items():
        forged[f"missing_{name}"] = jwt.encode(payload, secret, algorithm="HS256")
    return forged


async def test_tampered_tokens_are_refused(client: Client, state_dir: Path) -> None:
    """alg none, wrong signatures, other algorithms, missing claims: all 401 with Bearer."""
    good = (await login(client))["access_token"]
    secret = (state_dir / "jwt-secret").read_bytes().strip()
    # The control: a token we sign ourselves with the agent's secret is accepted.
    resigned = jwt.encode(_claims(good), secret, algorithm="HS256")
    assert (await client.get("/v1/auth/me", headers=bearer(resigned))).status == 200
    for name, token in _forgeries(secret, good).items():
        resp = await client.get("/v1/auth/me", headers=bearer(token))
        assert resp.status == 401, name
        await _assert_unauthorized(resp)


@pytest.mark.parametrize("header", [
    "Bearer", "Bearer ", "Basic YWRtaW46cGFzcw==", "Token abc", "Bearer " + "a" * 5000,
    "Bearer abc def", "Bearer caf\u00e9",
])
async def test_malformed_authorization_header_is_401(client: Client, header: str) -> None:
    """A malformed Authorization header gets 401 with WWW-Authenticate: Bearer, never 5xx."""
    raw = header.encode("utf-8").decode("latin-1")
    resp = await client.get("/v1/auth/me", headers={"Authorization": raw})
    await _assert_unauthorized(resp)


async def test_machine_token_from_api_works_until_revoked(client: Client,
                                                          admin_headers: dict[str, str]) -> None:
    """A machine token acts with its role until it is revoked, then gets 401."""
    resp = await client.post("/v1/tokens", json={"name": "control-plane", "role": "viewer"},
                             headers=admin_headers)
    created = await resp.json()
    token = created["token"]
    assert token.startswith("dpl_")
    me = await (await client.get("/v1/auth/me", headers=bearer(token))).json()
    assert me == {"kind": "token", "id": created["id"], "name": "control-plane", "role": "viewer"}
    await assert_error(await client.post("/v1/projects", json={"name": "x"}, headers=bearer(token)),
                       403, "forbidden")
    assert (await client.delete(f"/v1/tokens/{created['id']}", headers=admin_headers)).status == 204
    await _assert_unauthorized(await client.get("/v1/auth/me", headers=bearer(token)))


async def test_machine_token_cannot_log_out(client: Client, admin_headers: dict[str, str]) -> None:
    """Logout with a machine token is a 403 that says how to revoke it instead."""
    created = await (await client.post("/v1/tokens", json={"name": "ci", "role": "admin"},
                                       headers=admin_headers)).json()
    resp = await client.post("/v1/auth/logout", headers=bearer(created["token"]))
    error = await assert_error(resp, 403, "forbidden")
    assert "DELETE /v1/tokens/" in error["message"]
    assert (await client.get("/v1/auth/me", headers=bearer(created["token"]))).status == 200


async def test_failed_logins_are_limited_per_account(make_client: Callable[..., Any]) -> None:
    """Failures from many addresses lock one account (429, even the right password) for a while."""
    clock = FakeClock()
    client = await make_client(clock=clock, server={"trusted_proxies": ["127.0.0.1/32"]},
                               auth={"login_attempts_per_account": 5, "login_window_seconds": 600})
    admin = bearer((await login(client))["access_token"])
    await client.post("/v1/users", headers=admin,
                      json={"email": "dev@example.com", "password": "dev-password", "role": "developer"})

    def from_address(n: int) -> dict[str, str]:
        return {"X-Forwarded-For": f"198.51.100.{n}"}

    for n in range(5):
        resp = await client.post("/v1/auth/login", headers=from_address(n),
                                 json={"email": ADMIN_EMAIL, "password": f"guess-{n}"})
        await _assert_unauthorized(resp)
    resp = await client.post("/v1/auth/login", headers=from_address(99),
                             json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
    error = await assert_error(resp, 429, "rate_limited")
    assert int(resp.headers["Retry-After"]) >= 1
    assert "failed logins" in error["message"]
    # Another account logs in fine meanwhile.
    resp = await client.post("/v1/auth/login", headers=from_address(100),
                             json={"email": "dev@example.com", "password": "dev-password"})
    assert resp.status == 200
    clock.advance(60)
    resp = await client.post("/v1/auth/login", headers=from_address(101),
                             json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
    await assert_error(resp, 429, "rate_limited")
    clock.advance(600)
    resp = await client.post("/v1/auth/login", headers=from_address(102),
                             json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
    assert resp.status == 200


async def test_login_hashing_does_not_block_the_loop(aiohttp_client: Any, state_dir: Path) -> None:
    """While a slow login hashes, other requests are answered."""
    hasher = PasswordHasher(time_cost=4, memory_kib=65_536, parallelism=1, concurrency=1)
    app = create_app(make_config(state_dir), hasher=hasher, admin=AdminSeed(ADMIN_EMAIL, ADMIN_PASSWORD))
    client: TestClient = await aiohttp_client(app)
    import asyncio

    slow = asyncio.create_task(client.post("/v1/auth/login",
                                           json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
    answered_while_hashing = 0
    started = time.monotonic()
    while not slow.done() and time.monotonic() - started < 30:
        resp = await client.get("/v1/health")
        assert resp.status == 200
        answered_while_hashing += 1
    assert (await slow).status == 200
    assert answered_while_hashing >= 2


async def test_refresh_extends_the_session_and_expired_ones_are_pruned(
        make_client: Callable[..., Any]) -> None:
    """Each refresh extends the session; an idle one expires and is pruned from the store."""
    clock = FakeClock()
    client = await make_client(clock=clock, auth={"refresh_token_ttl": 3600})
    tokens = await login(client)
    for _ in range(3):  # 3 x 3000 s: longer than one ttl, but never idle for a whole one
        clock.advance(3000)
        resp = await client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        assert resp.status == 200
        tokens = await resp.json()
    auth = client.app[AUTH_KEY]  # type: ignore[index]
    assert await auth.prune() == 0
    clock.advance(3601)
    assert await auth.prune() == 1
    resp = await client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    await _assert_unauthorized(resp)
