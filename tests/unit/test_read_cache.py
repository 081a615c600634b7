"""``Database.cached``: values from the store reused until any commit, ours or another process's."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.store import Database
from agent.store.db import CACHE_MAX_ENTRIES


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(tmp_path / "state" / "agent.db")
    await database.open()
    try:
        yield database
    finally:
        await database.close()


class Counting:
    """A store read that counts how often it really ran."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.calls = 0

    def names(self) -> tuple[str, ...]:
        self.calls += 1
        return tuple(r["value"] for r in self.db.query("SELECT value FROM meta ORDER BY key"))


async def _next_iteration() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_value_is_reused_while_nothing_is_committed(db: Database) -> None:
    """Without a commit, the function runs once however often the value is asked for."""
    read = Counting(db)
    for _ in range(5):
        assert db.cached(("names",), read.names) == ()
        await _next_iteration()
    assert read.calls == 1


async def test_a_write_of_this_agent_is_seen_at_once(db: Database) -> None:
    """After ``db.write`` returns, the next cached read recomputes (even in the same iteration)."""
    read = Counting(db)
    assert db.cached(("names",), read.names) == ()
    await db.write(lambda tx: tx.execute("INSERT INTO meta VALUES ('a', 'first')"))
    assert db.cached(("names",), read.names) == ("first",)
    assert read.calls == 2


async def test_a_commit_by_another_process_is_seen_on_the_next_iteration(db: Database) -> None:
    """A row committed by a separate process (as the CLI does) invalidates the cached value."""
    read = Counting(db)
    assert db.cached(("names",), read.names) == ()
    script = textwrap.dedent(f"""
        import sqlite3
        conn = sqlite3.connect({str(db.path)!r}, isolation_level=None)
        conn.execute("INSERT INTO meta VALUES ('b', 'from-cli')")
        conn.close()
    """)
    done = await asyncio.create_subprocess_exec(sys.executable, "-c", script)
    assert await done.wait() == 0
    await _next_iteration()
    assert db.cached(("names",), read.names) == ("from-cli",)
    assert read.calls == 2


async def test_data_version_is_read_at_most_once_per_loop_iteration(db: Database) -> None:
    """Many cached reads in one iteration cost one ``PRAGMA data_version``; the next iteration
    reads it again."""
    statements: list[str] = []
    db.reader.set_trace_callback(statements.append)
    try:
        await _next_iteration()
        for key in range(10):
            db.cached(("k", key), lambda: None)
        first = sum("data_version" in s for s in statements)
        await _next_iteration()
        db.cached(("k", 0), lambda: None)
        second = sum("data_version" in s for s in statements)
    finally:
        db.reader.set_trace_callback(None)
    assert first == 1
    assert second == 2


async def test_keys_are_separate_and_failures_are_not_kept(db: Database) -> None:
    """Each key has its own value; a function that raises leaves nothing behind."""
    assert db.cached(("a",), lambda: 1) == 1
    assert db.cached(("b",), lambda: 2) == 2
    assert db.cached(("a",), lambda: 3) == 1

    def fail() -> int:
        raise LookupError("no such row")

    with pytest.raises(LookupError):
        db.cached(("c",), fail)
    assert db.cached(("c",), lambda: 4) == 4


async def test_arguments_are_passed_through(db: Database) -> None:
    """``cached(key, fn, *args)`` calls ``fn(*args)`` on a miss."""
    assert db.cached(("sum", 2, 3), lambda a, b: a + b, 2, 3) == 5


async def test_memory_is_bounded(db: Database) -> None:
    """The cache never holds more than its bound, however many distinct keys are asked for."""
    for key in range(CACHE_MAX_ENTRIES * 2 + 7):
        db.cached(("many", key), lambda: b"x")
    assert len(db._cache) <= CACHE_MAX_ENTRIES
