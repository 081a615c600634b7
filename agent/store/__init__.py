"""Persistent state in SQLite: the database, its migrations and one repository per table group."""

from agent.store.db import (
    Database,
    StateLock,
    StoreError,
    Tx,
    connect,
    ensure_private_dir,
    ensure_private_file,
)

__all__ = [
    "Database",
    "StateLock",
    "StoreError",
    "Tx",
    "connect",
    "ensure_private_dir",
    "ensure_private_file",
]
