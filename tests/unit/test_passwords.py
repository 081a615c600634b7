"""Password hashing: argon2id, off the event loop, with bounded concurrency."""

from __future__ import annotations

import asyncio
import threading

from agent.auth import PasswordHasher


class _Tracking(PasswordHasher):
    """Counts how many hashes run at the same time (in their threads)."""

    def __init__(self, concurrency: int) -> None:
        super().__init__(time_cost=1, memory_kib=64, parallelism=1, concurrency=concurrency)
        self._lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.threads: set[str] = set()

    def hash_sync(self, password: str) -> str:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.threads.add(threading.current_thread().name)
        try:
            # Long enough that concurrent calls would overlap if they were allowed to.
            for _ in range(20):
                super().hash_sync(password)
            return super().hash_sync(password)
        finally:
            with self._lock:
                self.running -= 1


async def test_hashes_argon2id_and_verifies() -> None:
    """A hash is argon2id and verifies only the right password."""
    hasher = PasswordHasher(time_cost=1, memory_kib=64, parallelism=1)
    digest = await hasher.hash("correct horse")
    assert digest.startswith("$argon2id$")
    assert await hasher.verify(digest, "correct horse")
    assert not await hasher.verify(digest, "wrong horse")
    assert not await hasher.verify("not-a-hash", "correct horse")
    assert not await hasher.verify(None, "correct horse")


async def test_concurrency_is_bounded_and_off_the_loop() -> None:
    """With concurrency=2, eight simultaneous hashes never run more than two at once, in threads."""
    hasher = _Tracking(concurrency=2)
    await asyncio.gather(*(hasher.hash(f"password-{n}") for n in range(8)))
    assert hasher.most == 2
    assert threading.main_thread().name not in hasher.threads


async def test_needs_rehash_when_parameters_change() -> None:
    """A hash made with other costs is flagged for rehashing."""
    old = PasswordHasher(time_cost=1, memory_kib=64, parallelism=1)
    new = PasswordHasher(time_cost=2, memory_kib=64, parallelism=1)
    digest = await old.hash("pw-123456")
    assert new.needs_rehash(digest) and not old.needs_rehash(digest)
