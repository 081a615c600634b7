"""A minimal inotify binding (ctypes): wake the log capture the moment an app writes.

One inotify descriptor for the whole agent, read from the event loop (``loop.add_reader``).
The kernel merges repeated identical events while they are unread, so a chatty app costs
one wake-up per loop turn, not one per write.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import struct
from collections.abc import Callable
from pathlib import Path

__all__ = ["Inotify", "InotifyUnavailable"]

IN_MODIFY = 0x00000002
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len

_libc = ctypes.CDLL(None, use_errno=True)


class InotifyUnavailable(OSError):
    """The kernel refused an inotify instance or watch (limits reached, or no inotify)."""


class Inotify:
    """Watches files for writes and calls ``on_change(key)`` for each changed one."""

    def __init__(self, on_change: Callable[[str], None]) -> None:
        fd = _libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise InotifyUnavailable(err, os.strerror(err))
        self._fd = fd
        self._on_change = on_change
        self._keys: dict[int, str] = {}
        self._wds: dict[tuple[str, Path], int] = {}
        asyncio.get_running_loop().add_reader(fd, self._read)

    def watch(self, key: str, path: Path) -> None:
        """Report writes to ``path`` as ``key``; raises InotifyUnavailable when refused."""
        wd = _libc.inotify_add_watch(self._fd, os.fsencode(path), IN_MODIFY)
        if wd < 0:
            err = ctypes.get_errno()
            raise InotifyUnavailable(err, os.strerror(err))
        self._keys[wd] = key
        self._wds[(key, path)] = wd

    def unwatch(self, key: str) -> None:
        """Forget every watch registered under ``key``."""
        for (owner, path), wd in list(self._wds.items()):
            if owner == key:
                _libc.inotify_rm_watch(self._fd, wd)
                del self._wds[(owner, path)]
                self._keys.pop(wd, None)

    def _read(self) -> None:
        try:
            data = os.read(self._fd, 64 * 1024)
        except BlockingIOError:
            return
        changed: set[str] = set()
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, _mask, _cookie, length = _EVENT.unpack_from(data, offset)
            offset += _EVENT.size + length
            key = self._keys.get(wd)
            if key is not None:
                changed.add(key)
        for key in changed:
            self._on_change(key)

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self._fd)
        os.close(self._fd)
        self._keys.clear()
        self._wds.clear()
