"""LogManager: runs the captures of every service and tells followers about new lines.

All capture work (reads, stamping, writes, rotation, hole punching) runs on one dedicated
thread, so the event loop never waits on the disk and a capture is never used by two threads.
Pumps are triggered by inotify the moment an app writes (with a slow safety poll, and a fast
poll for files inotify refused). After each step that wrote lines, the service's ``changed``
event fires and followers read on.

A capture that fails (a full disk, most often) never stops supervision: the failure is logged
once (``log_capture_failed``), pumps of that service are retried on a backoff of their own
(from ``_RETRY_MIN`` to ``_RETRY_MAX`` seconds) rather than at every write the app makes,
and the first pump that works again logs ``log_capture_recovered`` with the number of failed
attempts. Lines the app wrote meanwhile stay in its raw file until then; lines that a full
disk prevented the app from writing at all are lost (to the app as to any log).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import structlog

from agent.clock import Clock
from agent.logs.capture import LogCapture
from agent.logs.files import LogFiles
from agent.logs.inotify import Inotify, InotifyUnavailable
from agent.supervisor.runtime import LogPaths
from agent.timers import next_multiple, sleep_until

__all__ = ["LogManager"]

log = structlog.get_logger("agent.logs")
T = TypeVar("T")

_TICK = 0.5            # seconds between polls of files inotify does not watch
_SAFETY_INTERVAL = 30.0  # seconds between polls of every running capture anyway
_RETRY_MIN = 0.5       # seconds before the first retry of a failed capture
_RETRY_MAX = 10.0      # longest wait between retries of a failing capture


@dataclass(eq=False)
class _Entry:
    service_id: str
    capture: LogCapture
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    dirty: bool = False
    live: bool = False          # a run may be writing: pump on inotify and polls
    inotify: bool = False
    closed: bool = False
    failures: int = 0           # failed pumps in a row (0: healthy)
    retry: asyncio.TimerHandle | None = None


class LogManager:
    """Owns the LogCapture of every service. ``open`` before use, ``close`` at shutdown."""

    def __init__(self, *, max_bytes: int, max_files: int, clock: Clock) -> None:
        self._max_bytes = max_bytes
        self._max_files = max_files
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="log-capture")
        self._inotify: Inotify | None = None
        self._poller: asyncio.Task[None] | None = None
        self._fast_poll = asyncio.Event()  # a live capture has no inotify watch
        self._stopping = False

    async def open(self) -> None:
        try:
            self._inotify = Inotify(self.kick)
        except InotifyUnavailable as exc:
            log.warning("log_inotify_unavailable", error=exc.strerror)
        self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def close(self) -> None:
        """Finish pending pumps, save state, release files. Followers end."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        for service_id in list(self._entries):
            await self.detach(service_id)
        if self._inotify is not None:
            self._inotify.close()
        self._executor.shutdown(wait=True)

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _entry(self, service_id: str) -> _Entry:
        entry = self._entries.get(service_id)
        if entry is None:
            raise KeyError(service_id)
        return entry

    # -- attaching services ------------------------------------------------------------------

    async def attach(self, service_id: str, app_dir: Path) -> LogPaths:
        """Open (creating) the capture of a service; return the raw paths its app writes to."""
        if service_id in self._entries:
            return self._entries[service_id].capture.raw_paths
        capture = LogCapture(app_dir, max_bytes=self._max_bytes, max_files=self._max_files,
                             now=self._clock.time)
        await self._run(capture.open)
        self._entries[service_id] = _Entry(service_id, capture)
        return capture.raw_paths

    async def detach(self, service_id: str, *, remove: bool = False) -> None:
        """Take the last lines, close the capture (followers end); ``remove`` deletes the
        service's app directory."""
        entry = self._entries.pop(service_id, None)
        if entry is None:
            return
        self.set_live(service_id, False, entry=entry)
        entry.closed = True
        if entry.retry is not None:
            entry.retry.cancel()
            entry.retry = None
        if entry.task is not None:
            with contextlib.suppress(Exception):
                await entry.task
        with contextlib.suppress(OSError):
            await self._run(entry.capture.pump)
        await self._run(entry.capture.close)
        self._notify(entry)
        if remove:
            await asyncio.to_thread(shutil.rmtree, entry.capture.app_dir, True)

    def set_live(self, service_id: str, live: bool, *, entry: _Entry | None = None) -> None:
        """Watch the raw files while a run may write to them."""
        entry = entry or self._entries.get(service_id)
        if entry is None or entry.live == live:
            return
        entry.live = live
        if live and self._inotify is not None:
            try:
                for path in (entry.capture.raw_paths.stdout, entry.capture.raw_paths.stderr):
                    self._inotify.watch(service_id, path)
                entry.inotify = True
            except InotifyUnavailable as exc:
                self._inotify.unwatch(service_id)
                log.warning("log_inotify_watch_refused", service_id=service_id,
                            error=exc.strerror)
        if live and not entry.inotify:
            self._fast_poll.set()
        elif not live and entry.inotify and self._inotify is not None:
            self._inotify.unwatch(service_id)
            entry.inotify = False
        if live:
            self.kick(service_id)

    # -- pumping -----------------------------------------------------------------------------

    def kick(self, service_id: str) -> None:
        """Schedule a pump of the service's capture (coalesced with one in progress)."""
        entry = self._entries.get(service_id)
        if entry is None or entry.closed:
            return
        if entry.retry is not None:
            return  # failing: the retry timer pumps, not every write of the app
        if entry.task is not None and not entry.task.done():
            entry.dirty = True
            return
        entry.task = asyncio.get_running_loop().create_task(self._pump(entry))

    async def _pump(self, entry: _Entry) -> None:
        while not entry.closed:
            entry.dirty = False
            try:
                written = await self._run(entry.capture.pump)
            except OSError as exc:
                self._failed(entry, exc)
                return
            self._succeeded(entry)
            if written:
                self._notify(entry)
            if not entry.dirty:
                return

    def _failed(self, entry: _Entry, exc: OSError) -> None:
        """Count a failed capture step; log the first; retry later on a backoff."""
        entry.failures += 1
        if entry.failures == 1:
            log.warning("log_capture_failed", service_id=entry.service_id, error=exc.strerror)
        if entry.closed or entry.retry is not None:
            return
        delay = min(_RETRY_MAX, _RETRY_MIN * 2 ** min(entry.failures - 1, 10))

        def retry() -> None:
            entry.retry = None
            self.kick(entry.service_id)

        entry.retry = asyncio.get_running_loop().call_later(delay, retry)

    def _succeeded(self, entry: _Entry) -> None:
        if entry.failures:
            log.info("log_capture_recovered", service_id=entry.service_id,
                     failed_attempts=entry.failures)
            entry.failures = 0

    async def _step(self, entry: _Entry, fn: Callable[[], T]) -> T | None:
        """Run one capture step on the capture thread; a failure is counted, never raised."""
        try:
            result = await self._run(fn)
        except OSError as exc:
            self._failed(entry, exc)
            return None
        self._succeeded(entry)
        return result

    async def _poll(self) -> None:
        """Pump every ``_TICK`` the live captures inotify does not watch, and every
        ``_SAFETY_INTERVAL`` all live captures. While no capture needs the fast poll the loop
        is not woken in between (an idle agent's CPU follows its wake-ups); ``set_live`` wakes
        this task when one does. Wake-ups are on the shared grid of ``agent.timers``."""
        loop = asyncio.get_running_loop()
        next_safety = next_multiple(loop.time(), _SAFETY_INTERVAL)
        while True:
            self._fast_poll.clear()
            if any(e.live and not e.inotify for e in self._entries.values()):
                await sleep_until(next_multiple(loop.time(), _TICK))
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(next_safety):
                        await self._fast_poll.wait()
            safety = loop.time() >= next_safety
            if safety:
                next_safety = next_multiple(loop.time(), _SAFETY_INTERVAL)
            due = [entry for entry in self._entries.values()
                   if entry.live and (not entry.inotify or safety)]
            if due:
                await self._pump_together(due)

    async def _pump_together(self, entries: list[_Entry]) -> None:
        """Pump ``entries`` in one step of the capture thread (a poll of many services
        costs one hand-over, not one per service). An entry with a pump in progress is
        marked dirty instead, and one that is failing is left to its retry timer."""
        batch = []
        for entry in entries:
            if entry.closed or entry.retry is not None:
                continue
            if entry.task is not None and not entry.task.done():
                entry.dirty = True
            else:
                batch.append(entry)
        if not batch:
            return
        captures = [entry.capture for entry in batch]
        results = await self._run(lambda: [_try_pump(capture) for capture in captures])
        for entry, result in zip(batch, results, strict=True):
            if isinstance(result, OSError):
                self._failed(entry, result)
                continue
            self._succeeded(entry)
            if result:
                self._notify(entry)

    def _notify(self, entry: _Entry) -> None:
        event, entry.changed = entry.changed, asyncio.Event()
        event.set()

    async def drain(self, service_id: str, *, final: bool = False) -> None:
        """Pump now and wait for it; ``final`` when the run has ended (takes a last line
        without a newline)."""
        entry = self._entry(service_id)
        if entry.task is not None and not entry.task.done():
            with contextlib.suppress(Exception):
                await entry.task
        if await self._step(entry, lambda: entry.capture.pump(final=final)):
            self._notify(entry)

    async def reset_raw(self, service_id: str) -> None:
        """A run ended, or one is about to start (no writer left): take the last lines, then
        empty the raw files. A failure (full disk) is logged, never raised: supervision goes
        on without those lines."""
        entry = self._entry(service_id)
        await self._step(entry, entry.capture.reset_raw)
        self._notify(entry)

    async def note(self, service_id: str, text: str) -> None:
        """Add a line of the agent's own (stream ``agent``) to the service's log."""
        entry = self._entries.get(service_id)
        if entry is None or entry.closed:
            return
        with contextlib.suppress(OSError):
            await self._run(lambda: entry.capture.note(text))
            self._notify(entry)

    # -- for readers -------------------------------------------------------------------------

    def files(self, service_id: str) -> LogFiles:
        return self._entry(service_id).capture.files

    def seq(self, service_id: str) -> int:
        """The seq of the last line written."""
        return self._entry(service_id).capture.seq

    def stderr_tail(self, service_id: str) -> list[str]:
        """The last lines the app wrote to stderr (up to 20)."""
        return list(self._entry(service_id).capture.stderr_tail)

    def changed(self, service_id: str) -> asyncio.Event | None:
        """An event that fires at the next write (or at close); None once closed."""
        entry = self._entries.get(service_id)
        return None if entry is None or entry.closed or self._stopping else entry.changed

    async def shutdown_followers(self) -> None:
        """Wake every follower so that they notice the agent is stopping."""
        self._stopping = True
        for entry in self._entries.values():
            self._notify(entry)


def _try_pump(capture: LogCapture) -> int | OSError:
    """``capture.pump()``, with a failure returned rather than raised (on the capture thread)."""
    try:
        return capture.pump()
    except OSError as exc:
        return exc
