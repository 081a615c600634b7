"""Capture the agent's own log, configured exactly as ``dployr-agent serve`` configures it."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from agent.logconfig import configure_logging, flush_logs, reset_logging


class CapturedLog:
    """The JSON lines the agent wrote while the capture was active."""

    def __init__(self, stream: io.StringIO) -> None:
        self._stream = stream

    @property
    def text(self) -> str:
        flush_logs()  # lines logged on the event loop are written in batches
        return self._stream.getvalue()

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines() if line.strip()]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("event") == name]


@contextmanager
def captured_agent_log(level: str = "debug") -> Iterator[CapturedLog]:
    """Route the agent's structlog output, as JSON, into memory for the block."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    configure_logging(level, "json", stream, cache_loggers=False)
    try:
        yield CapturedLog(stream)
    finally:
        reset_logging()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
