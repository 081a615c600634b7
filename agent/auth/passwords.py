"""Password hashing with argon2id, off the event loop and with bounded concurrency.

Hashing costs tens of milliseconds of CPU and tens of MiB of memory by design, so at most
``concurrency`` hashes run at once (in threads); further logins wait their turn instead of
exhausting memory. A login for an unknown account verifies against a dummy hash of the same
cost so that the answer takes as long as for a wrong password.
"""

from __future__ import annotations

import asyncio
import secrets

from argon2 import PasswordHasher as _Argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = ["PasswordHasher"]


class PasswordHasher:
    """argon2id hashing and verification."""

    def __init__(self, *, time_cost: int = 3, memory_kib: int = 65_536, parallelism: int = 2,
                 concurrency: int = 2) -> None:
        self._argon = _Argon2(time_cost=time_cost, memory_cost=memory_kib,
                              parallelism=parallelism)
        self._limit = asyncio.Semaphore(concurrency)
        self._dummy_hash = self._argon.hash(secrets.token_hex(16))

    def hash_sync(self, password: str) -> str:
        """The argon2id hash of ``password`` (blocking; for the CLI and threads)."""
        return self._argon.hash(password)

    def verify_sync(self, password_hash: str | None, password: str) -> bool:
        """Whether ``password`` matches; ``None`` checks a dummy hash and returns False."""
        try:
            ok = self._argon.verify(password_hash or self._dummy_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        return ok and password_hash is not None

    def needs_rehash(self, password_hash: str) -> bool:
        """Whether the hash was made with other parameters than the configured ones."""
        return self._argon.check_needs_rehash(password_hash)

    async def hash(self, password: str) -> str:
        """Hash in a thread, at most ``concurrency`` at once."""
        async with self._limit:
            return await asyncio.to_thread(self.hash_sync, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Verify in a thread, at most ``concurrency`` at once."""
        async with self._limit:
            return await asyncio.to_thread(self.verify_sync, password_hash, password)
