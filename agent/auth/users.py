"""Users and machine tokens in the store: plain functions over a SQLite connection.

Synchronous on purpose: the CLI calls them on its own connection, the API inside
``Database.write`` transactions. Passwords arrive here already hashed.
"""

from __future__ import annotations

import re
import sqlite3

from agent.auth.principal import Role
from agent.auth.tokens import hash_token, new_api_token
from agent.ids import new_id
from agent.records import record

__all__ = [
    "EMAIL_PATTERN",
    "ApiToken",
    "User",
    "add_user",
    "count_users",
    "create_token",
    "find_user_by_email",
    "get_user",
    "list_tokens",
    "list_users",
    "normalize_email",
    "remove_user",
    "revoke_token",
    "revoke_user_sessions",
    "set_password",
]

# No \s: JSON Schema (ECMA) and pydantic (Rust) disagree on what it matches (U+0085), and the
# OpenAPI document must mean exactly what the server checks. Controls and spaces are excluded.
EMAIL_PATTERN = r"^[^@\x00-\x20\x7f-\x9f]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$"
_EMAIL = re.compile(EMAIL_PATTERN)


@record
class User:
    id: str
    email: str
    role: Role
    created_at: float


@record
class ApiToken:
    id: str
    name: str
    role: Role
    created_at: float
    revoked_at: float | None


def normalize_email(email: str) -> str:
    """The canonical form of an email address; raise ValueError if it is not one."""
    email = email.strip()
    if not _EMAIL.match(email):
        raise ValueError("not a valid email address")
    local, _, domain = email.rpartition("@")
    return f"{local}@{domain.lower()}"


def _user(row: sqlite3.Row) -> User:
    return User(id=row["id"], email=row["email"], role=row["role"], created_at=row["created_at"])


def count_users(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM users").fetchone()[0])


def add_user(conn: sqlite3.Connection, *, email: str, password_hash: str, role: Role,
             now: float) -> User:
    """Insert a user; raise sqlite3.IntegrityError if the email is taken."""
    user_id = new_id("usr")
    conn.execute(
        "INSERT INTO users (id, email, password_hash, role, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (user_id, normalize_email(email), password_hash, role, now, now))
    return User(id=user_id, email=normalize_email(email), role=role, created_at=now)


def get_user(conn: sqlite3.Connection, user_id: str) -> User | None:
    row = conn.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone()
    return _user(row) if row else None


def find_user_by_email(conn: sqlite3.Connection, email: str) -> tuple[User, str] | None:
    """The user and their password hash, or None."""
    row = conn.execute("SELECT * FROM users WHERE email = ?", (email.strip(),)).fetchone()
    return (_user(row), row["password_hash"]) if row else None


def list_users(conn: sqlite3.Connection) -> list[User]:
    return [_user(row) for row in conn.execute("SELECT * FROM users ORDER BY id")]


def revoke_user_sessions(conn: sqlite3.Connection, user_id: str, *, now: float,
                         reason: str) -> None:
    """End every live session of the user (their access and refresh tokens stop working)."""
    conn.execute("UPDATE sessions SET revoked_at = ?, revoked_reason = ?"
                 " WHERE user_id = ? AND revoked_at IS NULL", (now, reason, user_id))


def set_password(conn: sqlite3.Connection, email: str, password_hash: str, *, now: float) -> bool:
    """Replace the password and end the user's sessions; False if there is no such user."""
    found = find_user_by_email(conn, email)
    if found is None:
        return False
    conn.execute("UPDATE users SET password_hash = ?, updated_at = ? WHERE id = ?",
                 (password_hash, now, found[0].id))
    revoke_user_sessions(conn, found[0].id, now=now, reason="password_changed")
    return True


def remove_user(conn: sqlite3.Connection, email: str) -> bool:
    """Delete the user (their sessions go with them); False if there is no such user."""
    return conn.execute("DELETE FROM users WHERE email = ?", (email.strip(),)).rowcount > 0


def create_token(conn: sqlite3.Connection, *, name: str, role: Role,
                 now: float) -> tuple[ApiToken, str]:
    """A new machine token; the plain token is returned once and only its hash is stored."""
    plain = new_api_token()
    token = ApiToken(id=new_id("tok"), name=name, role=role, created_at=now, revoked_at=None)
    conn.execute("INSERT INTO api_tokens (id, name, token_hash, role, created_at)"
                 " VALUES (?, ?, ?, ?, ?)", (token.id, name, hash_token(plain), role, now))
    return token, plain


def list_tokens(conn: sqlite3.Connection) -> list[ApiToken]:
    return [ApiToken(id=r["id"], name=r["name"], role=r["role"], created_at=r["created_at"],
                     revoked_at=r["revoked_at"])
            for r in conn.execute("SELECT * FROM api_tokens ORDER BY id")]


def revoke_token(conn: sqlite3.Connection, token_id: str, *, now: float) -> bool:
    """Revoke a machine token; False if there is no such live token."""
    return conn.execute("UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                        (now, token_id)).rowcount > 0
