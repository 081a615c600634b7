"""Numbered schema migrations: ``agent/store/sql/NNNN_name.sql``, applied in order.

The schema version is SQLite's ``user_version``. Each file runs in its own transaction
together with the version bump, so a crash mid-migration leaves the previous version intact.
Files are never edited once released: a change to the schema is a new file.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from importlib import resources

__all__ = ["Migration", "load_migrations", "migrate"]

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    """Every migration shipped with the package, in version order; versions must be 1..N."""
    found: list[Migration] = []
    for entry in resources.files("agent.store.sql").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    expected = list(range(1, len(found) + 1))
    if [m.version for m in found] != expected:
        raise RuntimeError(f"migration numbers must run 1..{len(found)} without gaps")
    return found


def migrate(conn: sqlite3.Connection) -> int:
    """Apply every pending migration; return the schema version reached.

    Refuses a database written by a newer agent (its version is above ours).
    """
    migrations = load_migrations()
    current = int(conn.execute("PRAGMA user_version").fetchone()[0])
    latest = migrations[-1].version if migrations else 0
    if current > latest:
        raise sqlite3.DatabaseError(
            f"schema version {current} is newer than this agent knows ({latest}); upgrade the agent")
    for migration in migrations[current:]:
        conn.executescript(
            f"BEGIN IMMEDIATE;\n{migration.sql}\nPRAGMA user_version = {migration.version};\nCOMMIT;")
    return latest
