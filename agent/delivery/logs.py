"""Deployment logs for readers: their files, the seq of their last line, and wake-ups.

The pipeline appends to ``<state>/apps/<service>/logs/deploy.log`` (``agent.deploy.logfile``,
the stamped line format of service logs); this object is the ``LogSource`` that the log
readers of ``agent.logs`` (tail, follow) need for it. ``notify`` is the pipeline's
``log_listener``: each write wakes the followers of that log. ``close`` (the deployment was
deleted) and ``shutdown`` (the agent stops) end them.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from agent.logs.files import LogFiles
from agent.logs.format import MAX_LINE, parse_line

__all__ = ["DEPLOY_LOG", "DeployLogs"]

DEPLOY_LOG = "deploy.log"


class DeployLogs:
    """Deployment logs of every service under ``apps_dir``, keyed by service name."""

    def __init__(self, apps_dir: Path) -> None:
        self._apps_dir = apps_dir
        self._events: dict[str, asyncio.Event] = {}
        self._closed: set[str] = set()
        self._stopping = False

    def path(self, service: str) -> Path:
        return self._apps_dir / service / "logs" / DEPLOY_LOG

    def files(self, key: str) -> LogFiles:
        """The log's files (one: deployment logs are not rotated)."""
        path = self.path(key)
        return LogFiles(path.parent, max_bytes=1 << 62, max_files=1, name=DEPLOY_LOG)

    def changed(self, key: str) -> asyncio.Event | None:
        if self._stopping or key in self._closed:
            return None
        return self._events.setdefault(key, asyncio.Event())

    def notify(self, path: Path) -> None:
        """A line was written to ``path`` (a deployment log): wake its followers."""
        event = self._events.pop(path.parent.parent.name, None)
        if event is not None:
            event.set()

    def open(self, key: str) -> None:
        """The service exists (again): its log may be followed."""
        self._closed.discard(key)

    def close(self, key: str) -> None:
        """The deployment was deleted: its followers end."""
        self._closed.add(key)
        event = self._events.pop(key, None)
        if event is not None:
            event.set()

    def shutdown(self) -> None:
        """The agent stops: every follower ends."""
        self._stopping = True
        for event in self._events.values():
            event.set()
        self._events.clear()

    def end_seq(self, key: str) -> int:
        """The seq of the log's last complete line (0 when empty). Reads the file's tail."""
        try:
            with self.path(key).open("rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(0, size - 2 * MAX_LINE))
                lines = handle.read().split(b"\n")[:-1]
        except FileNotFoundError:
            return 0
        for raw in reversed(lines):
            line = parse_line(raw)
            if line is not None:
                return line.seq
        return 0
