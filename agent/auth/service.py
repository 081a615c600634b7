"""Authentication: login, refresh rotation with reuse detection, logout, bearer checks.

A login creates a *session*; its refresh tokens form one rotation family. Each refresh marks
the presented token used and issues a new one. Presenting a used token again means it was
stolen (or replayed): the whole session is revoked, which also kills its access tokens,
because every bearer check looks the session up. The lookup goes through ``Database.cached``:
it is reused until the next commit to the store (by this agent or by the CLI), so a logout, a
revocation or a removed user takes effect on the very next request.
"""

from __future__ import annotations

from agent.auth.passwords import PasswordHasher
from agent.auth.principal import Principal
from agent.auth.tokens import (
    API_TOKEN_PREFIX,
    AccessClaims,
    TokenError,
    decode_access_token,
    hash_token,
    issue_access_token,
    new_refresh_token,
)
from agent.auth.users import find_user_by_email
from agent.clock import Clock
from agent.config import AuthConfig
from agent.errors import Forbidden, RateLimited, Unauthorized
from agent.ids import new_id
from agent.ratelimit import RateLimiter
from agent.records import record
from agent.store import Database, Tx

__all__ = ["AuthService", "TokenPair"]

_BAD_LOGIN = "Invalid email or password"
_BAD_TOKEN = "Invalid or expired token"
_VERIFIED_CACHE_SIZE = 4096


@record
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "Bearer"


class AuthService:
    """Everything about proving who a caller is. Knows nothing of HTTP."""

    def __init__(self, db: Database, hasher: PasswordHasher, secret: bytes, config: AuthConfig,
                 clock: Clock) -> None:
        self._db = db
        self._hasher = hasher
        self._secret = secret
        self._config = config
        self._clock = clock
        self._failed_logins = RateLimiter(config.login_attempts_per_account,
                                          config.login_window_seconds, clock, max_keys=100_000)
        # Verified access tokens -> their claims. A token is an exact signed string, so a hit
        # stands for a signature already checked; expiry and the session are still checked
        # on every request. Bounded: at worst a token is verified again.
        self._verified: dict[str, AccessClaims] = {}

    async def login(self, email: str, password: str) -> TokenPair:
        """Check the credentials and open a session.

        Raises Unauthorized (the same for an unknown email and a wrong password, after the same
        work) or RateLimited when the account had too many failures recently.
        """
        account_key = email.strip().lower()
        if self._failed_logins.peek(account_key).remaining == 0:
            decision = self._failed_logins.charge(account_key)
            raise RateLimited("Too many failed logins for this account; try again later",
                              headers={"Retry-After": str(decision.retry_after)})
        found = find_user_by_email(self._db.reader, email)
        password_hash = found[1] if found else None
        if not await self._hasher.verify(password_hash, password) or found is None:
            self._failed_logins.charge(account_key)
            raise Unauthorized(_BAD_LOGIN)
        self._failed_logins.reset(account_key)
        user = found[0]
        now = self._clock.time()
        refresh = new_refresh_token()
        session_id = new_id("ses")
        rehash = await self._hasher.hash(password) if self._hasher.needs_rehash(found[1]) else None

        def _open_session(tx: Tx) -> None:
            tx.execute("INSERT INTO sessions (id, user_id, created_at, expires_at)"
                       " VALUES (?, ?, ?, ?)",
                       (session_id, user.id, now, now + self._config.refresh_token_ttl))
            self._insert_refresh(tx, session_id, refresh, now)
            if rehash is not None:
                tx.execute("UPDATE users SET password_hash = ? WHERE id = ?", (rehash, user.id))

        await self._db.write(_open_session)
        return self._pair(user.id, session_id, refresh, now)

    async def refresh(self, refresh_token: str) -> TokenPair:
        """Rotate a refresh token. A token used before revokes its whole session."""
        token_hash = hash_token(refresh_token)
        now = self._clock.time()
        fresh = new_refresh_token()

        def _rotate(tx: Tx) -> tuple[str, str] | str:
            row = tx.execute(
                "SELECT rt.used_at, rt.expires_at, s.id AS session_id, s.user_id, s.revoked_at"
                " FROM refresh_tokens rt JOIN sessions s ON s.id = rt.session_id"
                " WHERE rt.token_hash = ?", (token_hash,)).fetchone()
            if row is None or row["revoked_at"] is not None or row["expires_at"] <= now:
                return "invalid"
            if row["used_at"] is not None:
                tx.execute("UPDATE sessions SET revoked_at = ?, revoked_reason = ? WHERE id = ?",
                           (now, "refresh_token_reuse", row["session_id"]))
                return "reused"
            tx.execute("UPDATE refresh_tokens SET used_at = ? WHERE token_hash = ?",
                       (now, token_hash))
            # A session lives while it is used: it ends refresh_token_ttl after its last refresh.
            tx.execute("UPDATE sessions SET expires_at = ? WHERE id = ?",
                       (now + self._config.refresh_token_ttl, row["session_id"]))
            self._insert_refresh(tx, row["session_id"], fresh, now)
            return row["user_id"], row["session_id"]

        outcome = await self._db.write(_rotate)
        if outcome == "reused":
            raise Unauthorized("Refresh token already used; the session has been revoked")
        if isinstance(outcome, str):
            raise Unauthorized(_BAD_TOKEN)
        user_id, session_id = outcome
        return self._pair(user_id, session_id, fresh, now)

    async def logout(self, principal: Principal) -> None:
        """Revoke the caller's session: its access and refresh tokens stop working."""
        if principal.session_id is None:
            raise Forbidden("Machine tokens cannot log out; revoke them with DELETE /v1/tokens/{id} "
                            "or 'dployr-agent token revoke'", details={"issue": "Not a login session"})
        now = self._clock.time()
        session_id = principal.session_id
        await self._db.write(lambda tx: tx.execute(
            "UPDATE sessions SET revoked_at = ?, revoked_reason = 'logout'"
            " WHERE id = ? AND revoked_at IS NULL", (now, session_id)))

    def authenticate(self, token: str) -> Principal:
        """The caller a bearer token stands for; raise Unauthorized if it is not valid now."""
        if token.startswith(API_TOKEN_PREFIX):
            return self._machine_principal(token)
        now = self._clock.time()
        claims = self._verified.get(token)
        if claims is None:
            try:
                claims = decode_access_token(self._secret, token, now=now)
            except TokenError:
                raise Unauthorized(_BAD_TOKEN) from None
            if len(self._verified) >= _VERIFIED_CACHE_SIZE:
                self._verified.clear()
            self._verified[token] = claims
        elif claims.expires_at <= now:
            del self._verified[token]
            raise Unauthorized(_BAD_TOKEN)
        return self._db.cached(("auth.session", claims.session_id, claims.user_id),
                               self._session_principal, claims)

    def _session_principal(self, claims: AccessClaims) -> Principal:
        row = self._db.query_one(
            "SELECT u.email, u.role, s.revoked_at FROM sessions s JOIN users u ON u.id = s.user_id"
            " WHERE s.id = ? AND u.id = ?", (claims.session_id, claims.user_id))
        if row is None or row["revoked_at"] is not None:
            raise Unauthorized(_BAD_TOKEN)
        return Principal(kind="user", id=claims.user_id, role=row["role"], name=row["email"],
                         session_id=claims.session_id)

    def _machine_principal(self, token: str) -> Principal:
        # Unknown tokens raise, and so are never kept: guessing cannot fill the cache.
        token_hash = hash_token(token)
        return self._db.cached(("auth.api_token", token_hash), self._api_token_principal,
                               token_hash)

    def _api_token_principal(self, token_hash: str) -> Principal:
        row = self._db.query_one(
            "SELECT id, name, role FROM api_tokens WHERE token_hash = ? AND revoked_at IS NULL",
            (token_hash,))
        if row is None:
            raise Unauthorized(_BAD_TOKEN)
        return Principal(kind="token", id=row["id"], role=row["role"], name=row["name"])

    def _insert_refresh(self, tx: Tx, session_id: str, token: str, now: float) -> None:
        tx.execute("INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at)"
                   " VALUES (?, ?, ?, ?)",
                   (hash_token(token), session_id, now, now + self._config.refresh_token_ttl))

    def _pair(self, user_id: str, session_id: str, refresh: str, now: float) -> TokenPair:
        access, _ = issue_access_token(self._secret, user_id=user_id, session_id=session_id,
                                       now=now, ttl=self._config.access_token_ttl)
        return TokenPair(access_token=access, refresh_token=refresh,
                         expires_in=self._config.access_token_ttl)

    async def prune(self) -> int:
        """Delete sessions (and with them their refresh tokens) that can no longer be used.

        Used refresh tokens of live sessions are kept: they are how reuse is detected.
        Returns the number of sessions deleted.
        """
        now = self._clock.time()

        def _prune(tx: Tx) -> int:
            deleted = tx.execute("DELETE FROM sessions WHERE expires_at < ?", (now,)).rowcount
            tx.execute("DELETE FROM refresh_tokens WHERE expires_at < ?", (now,))
            return int(deleted)

        return await self._db.write(_prune)
