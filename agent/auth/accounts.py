"""Managing users and machine tokens from the API (the CLI uses ``agent.auth.users`` directly)."""

from __future__ import annotations

import sqlite3

from agent.auth import users
from agent.auth.passwords import PasswordHasher
from agent.auth.principal import Role
from agent.clock import Clock
from agent.errors import Conflict, InvalidRequest, NotFound
from agent.store import Database, Tx

__all__ = ["AccountService"]


class AccountService:
    """Users and machine tokens. Passwords are hashed off the event loop."""

    def __init__(self, db: Database, hasher: PasswordHasher, clock: Clock,
                 *, password_min_length: int) -> None:
        self._db = db
        self._hasher = hasher
        self._clock = clock
        self._min_length = password_min_length

    def check_password(self, password: str) -> None:
        """Raise InvalidRequest if the password is too weak to accept."""
        if len(password) < self._min_length:
            raise InvalidRequest("Password too short", field="password",
                                 issue=f"Must be at least {self._min_length} characters")

    def list_users(self) -> list[users.User]:
        return users.list_users(self._db.reader)

    async def add_user(self, email: str, password: str, role: Role) -> users.User:
        """A new user; Conflict if the email is taken."""
        try:
            email = users.normalize_email(email)
        except ValueError:
            raise InvalidRequest("Invalid email", field="email",
                                 issue="Not a valid email address") from None
        self.check_password(password)
        password_hash = await self._hasher.hash(password)
        now = self._clock.time()
        try:
            return await self._db.write(lambda tx: users.add_user(
                tx.conn, email=email, password_hash=password_hash, role=role, now=now))
        except sqlite3.IntegrityError:
            raise Conflict("A user with that email already exists",
                           details={"field": "email", "issue": "Already taken"}) from None

    async def remove_user(self, user_id: str) -> None:
        """Delete a user and end their sessions.

        NotFound if absent; Conflict for the last admin (nobody could manage the agent).
        """

        def _remove(tx: Tx) -> str:
            row = tx.execute("SELECT role FROM users WHERE id = ?", (user_id,)).fetchone()
            if row is None:
                return "missing"
            if row["role"] == "admin" and tx.execute(
                    "SELECT count(*) FROM users WHERE role = 'admin'").fetchone()[0] <= 1:
                return "last_admin"
            tx.execute("DELETE FROM users WHERE id = ?", (user_id,))
            return "deleted"

        outcome = await self._db.write(_remove)
        if outcome == "missing":
            raise NotFound(f"No user with id '{user_id}'")
        if outcome == "last_admin":
            raise Conflict("This is the last admin; add another admin before removing it",
                           details={"field": "id", "issue": "Last admin"})

    def list_tokens(self) -> list[users.ApiToken]:
        return users.list_tokens(self._db.reader)

    async def create_token(self, name: str, role: Role) -> tuple[users.ApiToken, str]:
        """A new machine token and its plain value (shown once)."""
        now = self._clock.time()
        return await self._db.write(lambda tx: users.create_token(tx.conn, name=name, role=role,
                                                                  now=now))

    async def revoke_token(self, token_id: str) -> None:
        """Revoke a machine token; NotFound if there is no live one with that id."""
        now = self._clock.time()
        if not await self._db.write(lambda tx: users.revoke_token(tx.conn, token_id, now=now)):
            raise NotFound(f"No live token with id '{token_id}'")

    async def ensure_initial_admin(self, email: str, password: str) -> bool:
        """Create the first admin if there are no users yet; True if one was created."""
        if users.count_users(self._db.reader):
            return False  # the usual case: no hashing work at start
        password_hash = await self._hasher.hash(password)
        now = self._clock.time()

        def _bootstrap(tx: Tx) -> bool:
            conn = tx.conn
            if users.count_users(conn):
                return False
            users.add_user(conn, email=email, password_hash=password_hash, role="admin", now=now)
            return True

        return await self._db.write(_bootstrap)
