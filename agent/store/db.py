"""The SQLite database: WAL, ``synchronous=FULL``, one writer thread, inline reads.

Writes (and their fsyncs) run on a single dedicated thread, one transaction at a time, so the
event loop never waits on the disk and writers never contend. Reads use a second connection on
the event loop's thread: in WAL mode a reader never waits for a writer and a small indexed
query costs microseconds, far less than a hop to a thread. Heavy reads (scans, exports) should
go through ``read_in_thread``.

A write is acknowledged only after its COMMIT returned, and with ``synchronous=FULL`` a commit
survives a kill -9 or a power cut.

``cached`` keeps values computed from the store (a session lookup, a serialized page) until
anything is committed, by this agent or by another process: see docs/read-cache.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import sqlite3
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, TypeVarTuple

from agent.clock import Clock, SystemClock
from agent.events import Event, EventBus
from agent.ids import new_id
from agent.store.migrations import MigrationError, migrate

__all__ = [
    "Database",
    "StateLock",
    "StoreError",
    "Tx",
    "connect",
    "ensure_private_dir",
    "ensure_private_file",
]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

# Entries kept by ``Database.cached`` before it starts over (a bound on memory, not a tuning
# knob: the cache empties at every commit anyway).
CACHE_MAX_ENTRIES = 4096


class StoreError(Exception):
    """The database cannot be opened or is corrupt; the message says what to do."""


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) if needed and make it 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)


def ensure_private_file(path: Path) -> None:
    """Create ``path`` empty if it does not exist and make it 0600."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    path.chmod(0o600)


class StateLock:
    """An exclusive lock on a state directory, so that two agents never share one.

    ``flock`` on ``<dir>/agent.lock``: the kernel releases it when the process ends, however it
    ends, so a crashed agent never leaves a stale lock. The CLI's user and token commands do
    not take it: they are meant to run beside the agent.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "agent.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise StoreError naming the process that holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(f"another dployr-agent (pid {holder}) is using the state dir "
                             f"{self.path.parent}; stop it first or use another state.dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let the lock go (also happens when the process exits)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


_RECOVERY = "restore it from a backup, or move it away to start with an empty state"


def connect(path: Path, *, check: bool = True) -> sqlite3.Connection:
    """Open the database file, set the pragmas, check integrity and apply migrations.

    For synchronous users (the CLI) and for the writer thread. Raises StoreError, with one
    line saying what is wrong and what to do, when the file is not a usable database.
    """
    ensure_private_dir(path.parent)
    ensure_private_file(path)
    conn: sqlite3.Connection | None = None
    try:
        if check:
            _check_integrity(path)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.row_factory = sqlite3.Row
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"the database {path} cannot use WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        migrate(conn)
    except MigrationError as exc:
        _close_quietly(conn)
        raise StoreError(f"cannot use the database {path}: {exc}") from None
    except sqlite3.DatabaseError as exc:
        _close_quietly(conn)
        raise StoreError(f"the database {path} is unreadable or corrupt ({exc}); {_RECOVERY}") from None
    except StoreError:
        _close_quietly(conn)
        raise
    return conn


def _check_integrity(path: Path) -> None:
    """``PRAGMA integrity_check`` on a connection of its own, closed afterwards: the check
    reads every page, and the page cache it fills would otherwise stay with the connection
    the agent keeps (about half a megabyte of resident memory for nothing)."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        result = [str(row[0]) for row in conn.execute("PRAGMA integrity_check(10)")]
    finally:
        conn.close()
    if result != ["ok"]:
        problems = "; ".join(" ".join(r.split()) for r in result[:3])
        raise StoreError(f"the database {path} is corrupt ({problems}); {_RECOVERY}")


def _close_quietly(conn: sqlite3.Connection | None) -> None:
    if conn is not None:
        with contextlib.suppress(sqlite3.Error):
            conn.close()


def _reader(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                           check_same_thread=False, timeout=5)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


class Tx:
    """One write transaction. ``emit`` adds an event to the outbox in the same transaction."""

    def __init__(self, conn: sqlite3.Connection, clock: Clock) -> None:
        self.conn = conn
        self._clock = clock
        self.events: list[Event] = []

    def execute(self, sql: str, params: Iterable[Any] | dict[str, Any] = ()) -> sqlite3.Cursor:
        """Run one statement inside the transaction."""
        return self.conn.execute(sql, params)  # type: ignore[arg-type]

    def emit(self, type: str, data: dict[str, Any]) -> Event:
        """Record an event; it is published to the bus only if the transaction commits."""
        event_id = new_id("evt")
        timestamp = self._clock.time()
        cur = self.conn.execute(
            "INSERT INTO events (id, type, created_at, data) VALUES (?, ?, ?, ?)",
            (event_id, type, timestamp, json.dumps(data, separators=(",", ":"))),
        )
        event = Event(seq=int(cur.lastrowid or 0), id=event_id, type=type, timestamp=timestamp,
                      data=data)
        self.events.append(event)
        return event


class Database:
    """The agent's store. ``open`` before use, ``close`` at shutdown."""

    def __init__(self, path: Path, *, bus: EventBus | None = None,
                 clock: Clock | None = None) -> None:
        self.path = path
        self.bus = bus or EventBus()
        self.clock: Clock = clock or SystemClock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._version_cursor: sqlite3.Cursor | None = None
        self._cache: dict[Hashable, Any] = {}
        self._data_version: int | None = None
        self._version_checked = False  # data_version was read in this loop iteration

    async def open(self) -> None:
        """Open (creating and migrating if needed); raises StoreError on corruption."""
        loop = asyncio.get_running_loop()

        self._writer = await loop.run_in_executor(self._executor, connect, self.path)
        self._reader = _reader(self.path)
        self._version_cursor = self._reader.cursor()
        self._version_cursor.row_factory = None  # a plain tuple: cheaper than sqlite3.Row
        self._loop = loop

    async def close(self) -> None:
        """Finish pending writes and close both connections."""
        loop = asyncio.get_running_loop()
        if self._writer is not None:
            writer, self._writer = self._writer, None
            await loop.run_in_executor(self._executor, writer.close)
        if self._reader is not None:
            self._version_cursor = None
            self._reader.close()
            self._reader = None
        self._cache.clear()
        self._data_version = None
        self._executor.shutdown(wait=True)

    @property
    def reader(self) -> sqlite3.Connection:
        """The read connection, for small indexed queries on the event loop's thread."""
        if self._reader is None:
            raise StoreError("the database is not open")
        return self._reader

    def query(self, sql: str, params: Iterable[Any] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        """Run a small read inline and return all rows."""
        return self.reader.execute(sql, params).fetchall()  # type: ignore[arg-type]

    def query_one(self, sql: str, params: Iterable[Any] | dict[str, Any] = ()) -> sqlite3.Row | None:
        """Run a small read inline and return the first row, or None."""
        row: sqlite3.Row | None = self.reader.execute(sql, params).fetchone()  # type: ignore[arg-type]
        return row

    def cached(self, key: Hashable, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        """``fn(*args)``, computed from the store, reused until anything is committed.

        The value stays valid while SQLite's ``PRAGMA data_version`` on the read connection is
        unchanged: it changes whenever another connection commits, whether it is this agent's
        writer thread or another process (the CLI). The version is read at most once per
        event-loop iteration (every request starts in an iteration after its bytes were read,
        so a commit that finished before a request was sent is always seen), and again after
        each of this agent's own writes. If ``fn`` raises, nothing is kept.

        For the event loop's thread only, like ``query``. ``key`` must name everything the
        value depends on besides the store (e.g. ``("projects.page", limit, cursor)``), and
        values must be immutable: every caller gets the same object.
        """
        if not self._version_checked:
            self._check_version()
        try:
            value: T = self._cache[key]
            return value
        except KeyError:
            pass
        value = fn(*args)
        if len(self._cache) >= CACHE_MAX_ENTRIES:
            self._cache.clear()
        self._cache[key] = value
        return value

    def _check_version(self) -> None:
        cursor = self._version_cursor
        if cursor is None:
            raise StoreError("the database is not open")
        version = cursor.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:
            self._cache.clear()
            self._data_version = version
        loop = self._loop
        if loop is not None and not loop.is_closed():
            # Trust this reading for the rest of this loop iteration only: the callback runs
            # at the start of the next one, before any request read since then is handled.
            self._version_checked = True
            loop.call_soon(self._expire_version_check)

    def _expire_version_check(self) -> None:
        self._version_checked = False

    async def read_in_thread(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a heavy read on the writer's thread (serialized with writes)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(self._require_writer()))

    def _require_writer(self) -> sqlite3.Connection:
        if self._writer is None:
            raise StoreError("the database is not open")
        return self._writer

    def _run_tx(self, fn: Callable[[Tx], T]) -> tuple[T, list[Event]]:
        conn = self._require_writer()
        tx = Tx(conn, self.clock)
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(tx)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result, tx.events

    async def write(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn`` in one transaction on the writer thread and commit it.

        ``fn`` must be synchronous and quick. When this returns the change is durable, and the
        events ``fn`` emitted have been published on the bus. If ``fn`` raises, nothing of it
        is kept and the exception propagates.
        """
        loop = asyncio.get_running_loop()
        try:
            result, events = await loop.run_in_executor(self._executor, self._run_tx, fn)
        finally:
            # Whatever happened, read data_version again before the next cached value: the
            # writer's commit is visible to the reader from now on.
            self._version_checked = False
        for event in events:
            self.bus.publish(event)
        return result
