"""systemd notifications (``Type=notify``): READY, STOPPING, and watchdog pings.

A no-op when the agent is not started by systemd (no ``NOTIFY_SOCKET``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Mapping

from agent.timers import sleep_interval

__all__ = ["Notifier"]


class Notifier:
    """Sends sd_notify messages to the socket named in the environment."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        # As sd_watchdog_enabled(): the watchdog is meant for us unless WATCHDOG_PID names
        # another process (a parent that forked us and kept the variable).
        for_us = not pid or (pid.isdigit() and int(pid) == os.getpid())
        self.watchdog_interval = (int(usec) / 2_000_000
                                  if usec.isdigit() and int(usec) > 0 and for_us else None)

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, message: str) -> None:
        """Send one message such as ``READY=1``; errors are ignored (systemd may be gone)."""
        if not self._address:
            return
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(self._address)
            sock.sendall(message.encode())

    @contextlib.asynccontextmanager
    async def watchdog(self) -> AsyncIterator[None]:
        """Ping the watchdog at half its interval while the block runs."""
        if self.watchdog_interval is None or not self._address:
            yield
            return
        interval = self.watchdog_interval

        async def _ping() -> None:
            while True:
                self.notify("WATCHDOG=1")
                await sleep_interval(interval)

        task = asyncio.create_task(_ping())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
