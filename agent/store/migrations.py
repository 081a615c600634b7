"""Numbered schema migrations: ``agent/store/sql/NNNN_name.sql``, applied in number order.

Applied migrations are recorded by number in ``schema_migrations``, so numbers may have gaps
and a migration merged later with a lower number is still applied. Each file runs in one
transaction together with its record, so a crash mid-migration leaves no half-applied file.
Files are never edited once released: a change to the schema is a new file.
"""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

from agent.records import record

__all__ = ["Migration", "MigrationError", "load_migrations", "migrate"]

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(sqlite3.DatabaseError):
    """The database's schema cannot be brought to this agent's version."""


@record
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    """Every migration shipped with the package, in version order; numbers must be unique."""
    found: list[Migration] = []
    # A plain directory walk: the package is always installed as files, and importlib.resources
    # would cost its imports at every start for nothing.
    for entry in (Path(__file__).parent / "sql").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError("two migrations share a number")
    return found


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Apply every pending migration; return the versions applied now.

    Refuses a database that has migrations this agent does not know (written by a newer one).
    """
    conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                 " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)")
    migrations = load_migrations()
    applied = {int(row[0]) for row in conn.execute("SELECT version FROM schema_migrations")}
    unknown = applied - {m.version for m in migrations}
    if unknown:
        raise MigrationError(
            f"the database has migrations {sorted(unknown)} this agent does not know; "
            "upgrade the agent")
    done: list[int] = []
    for migration in migrations:
        if migration.version in applied:
            continue
        script = (f"BEGIN IMMEDIATE;\n{migration.sql}\n"
                  f"INSERT INTO schema_migrations VALUES ({migration.version}, '{migration.name}', "
                  f"{time.time()});\nCOMMIT;")
        try:
            conn.executescript(script)
        except sqlite3.Error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        done.append(migration.version)
    return done
