"""The store: WAL with synchronous=FULL, recorded migrations, private files, corruption refused."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.events import EventBus
from agent.store import Database, StoreError, Tx, connect
from agent.store.migrations import load_migrations
from agent.testing import FakeClock


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """Run with umask 022 so that private modes must be set explicitly, not inherited."""
    old = os.umask(0o022)
    yield None
    os.umask(old)


async def test_wal_and_synchronous_full(tmp_path: Path) -> None:
    """The database is in WAL mode and the writer commits with synchronous=FULL."""
    db = Database(tmp_path / "state" / "agent.db")
    await db.open()
    try:
        assert db.query_one("PRAGMA journal_mode")[0] == "wal"  # type: ignore[index]
        sync = await db.read_in_thread(lambda c: c.execute("PRAGMA synchronous").fetchone()[0])
        assert sync == 2  # FULL
        fks = await db.read_in_thread(lambda c: c.execute("PRAGMA foreign_keys").fetchone()[0])
        assert fks == 1
    finally:
        await db.close()


async def test_migrations_are_recorded_once(tmp_path: Path) -> None:
    """Every shipped migration is applied and recorded; reopening applies nothing again."""
    path = tmp_path / "agent.db"
    db = Database(path)
    await db.open()
    rows = db.query("SELECT version, name FROM schema_migrations ORDER BY version")
    await db.close()
    shipped = load_migrations()
    assert [(r["version"], r["name"]) for r in rows] == [(m.version, m.name) for m in shipped]
    assert shipped[0].version == 1 and shipped[0].name == "foundation"
    conn = connect(path)
    try:
        again = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0]
    finally:
        conn.close()
    assert again == len(shipped)


async def test_state_dir_and_files_are_private(tmp_path: Path, permissive_umask: None) -> None:
    """The directory is 0700 and the database, WAL and shared-memory files are 0600."""
    state = tmp_path / "state"
    db = Database(state / "agent.db")
    await db.open()
    try:
        await db.write(lambda tx: tx.execute("INSERT INTO meta VALUES ('k', 'v')"))
        assert _mode(state) == 0o700
        for name in ("agent.db", "agent.db-wal", "agent.db-shm"):
            assert (state / name).exists(), name
            assert _mode(state / name) == 0o600, name
    finally:
        await db.close()


async def test_an_existing_loose_state_dir_is_tightened(tmp_path: Path, permissive_umask: None) -> None:
    """A state dir that exists with 0755 is made 0700 on open."""
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    (state / "agent.db").touch(mode=0o644)
    db = Database(state / "agent.db")
    await db.open()
    await db.close()
    assert _mode(state) == 0o700
    assert _mode(state / "agent.db") == 0o600


async def test_garbage_file_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    """A file that is not a database raises StoreError on one line with what to do."""
    path = tmp_path / "agent.db"
    path.write_bytes(os.urandom(8192))
    db = Database(path)
    with pytest.raises(StoreError) as info:
        await db.open()
    message = str(info.value)
    assert str(path) in message and "corrupt" in message and "backup" in message
    assert "\n" not in message


def _damaged_database(path: Path) -> None:
    conn = connect(path)
    conn.execute("BEGIN")
    for i in range(2000):
        conn.execute("INSERT INTO meta VALUES (?, ?)", (f"key-{i}", "v" * 200))
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    page_size = 4096
    with path.open("r+b") as f:  # smash the header of a b-tree page in the middle of the file
        f.seek(page_size * 20)
        f.write(b"\xff" * 64)


async def test_damaged_pages_are_caught_at_start(tmp_path: Path) -> None:
    """A database with a damaged page fails the integrity check and is refused."""
    path = tmp_path / "agent.db"
    _damaged_database(path)
    with pytest.raises(StoreError, match="corrupt"):
        await Database(path).open()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A database migrated by a newer agent (unknown migration) is refused, asking to upgrade."""
    path = tmp_path / "agent.db"
    connect(path).close()
    raw = sqlite3.connect(path)
    raw.execute("INSERT INTO schema_migrations VALUES (9999, 'future', 0)")
    raw.commit()
    raw.close()
    with pytest.raises(StoreError, match="upgrade the agent"):
        connect(path)


async def test_write_is_one_transaction_and_events_follow_commit(tmp_path: Path) -> None:
    """Events emitted in a write are in the outbox and on the bus only if it commits."""
    bus = EventBus()
    sub = bus.subscribe()
    db = Database(tmp_path / "agent.db", bus=bus, clock=FakeClock())
    await db.open()
    try:
        def ok(tx: Tx) -> str:
            tx.execute("INSERT INTO meta VALUES ('a', '1')")
            return tx.emit("service.started", {"service_id": "svc_1"}).id

        event_id = await db.write(ok)
        assert (await sub.get()).id == event_id

        def fails(tx: Tx) -> None:
            tx.execute("INSERT INTO meta VALUES ('b', '2')")
            tx.emit("service.stopped", {"service_id": "svc_1"})
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            await db.write(fails)
        assert db.query_one("SELECT value FROM meta WHERE key = 'b'") is None
        assert [r["type"] for r in db.query("SELECT type FROM events")] == ["service.started"]
        assert sub._queue.empty()
    finally:
        await db.close()
