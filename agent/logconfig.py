"""The agent's own log: structlog, JSON when stderr is not a terminal, secrets redacted.

Called once by the CLI (never at import). Records from the standard library (aiohttp's
internals) go through the same renderer. No traceback is ever written: an exception shows
as its type and where it was raised, because exception texts and frames can hold secrets.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import re
import sys
import threading
import traceback
from collections.abc import MutableMapping
from typing import Any, TextIO

import pydantic_core
import structlog

__all__ = ["REDACTED", "LineWriter", "configure_logging", "flush_logs", "redact"]

REDACTED = "[redacted]"
_SENSITIVE = re.compile(
    r"(^|_)(password|passwd|secret|token|authorization|cookie|api_key|credentials?)$",
    re.IGNORECASE)
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


_sensitive_keys: dict[str, bool] = {}  # key -> whether it names a secret (keys come from code)


def _is_sensitive(key: str) -> bool:
    known = _sensitive_keys.get(key)
    if known is None:
        known = _SENSITIVE.search(key) is not None
        if len(_sensitive_keys) < 4096:
            _sensitive_keys[key] = known
    return known


def redact(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: blank the value of any key that names a secret."""
    for key in event_dict:
        if _is_sensitive(key):
            event_dict[key] = REDACTED
    return event_dict


def _render_json(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> str:
    """The event as one JSON line. pydantic-core's encoder (Rust) is several times faster than
    the json module on this path, which runs once per request; anything it cannot encode is
    written as its ``str``."""
    try:
        return pydantic_core.to_json(event_dict, fallback=str).decode()
    except pydantic_core.PydanticSerializationError:  # e.g. bytes that are not UTF-8
        return json.dumps(event_dict, default=repr, separators=(",", ":"))


EventDict = MutableMapping[str, Any]


def _drop_exc_info(_logger: Any, _name: str, event_dict: EventDict) -> EventDict:
    exc_info = event_dict.pop("exc_info", None)
    event_dict.pop("exception", None)
    if exc_info:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if exc is not None:
            event_dict["error_type"] = type(exc).__name__
            frames = traceback.extract_tb(exc.__traceback__)
            if frames:
                event_dict["where"] = f"{frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}"
    return event_dict


class _StdlibBridge(logging.Handler):
    """Sends standard-library records through structlog, without tracebacks or arguments."""

    def emit(self, record: logging.LogRecord) -> None:
        log = structlog.get_logger(record.name)
        fields: dict[str, Any] = {}
        if record.exc_info and record.exc_info[1] is not None:
            fields["exc_info"] = record.exc_info[1]
        # The format string only: arguments may carry request data.
        log.log(record.levelno, "library_log", message=str(record.msg)[:200], **fields)


class LineWriter:
    """The structlog logger: writes each rendered event as one line to a stream.

    Info and debug lines logged on an event loop's thread (the access log: one per request)
    are collected and written together ``delay`` seconds later, one system call per batch
    instead of one per request. Warnings and errors, lines logged from other threads or with
    no loop running, are written at once, after anything pending, so the order of lines is
    kept. A process killed with SIGKILL can lose up to ``delay`` seconds of info lines;
    ``flush`` (called at shutdown and at exit) writes whatever is pending.
    """

    def __init__(self, stream: TextIO, *, delay: float = 0.05, max_pending: int = 1024) -> None:
        self._stream = stream
        self._binary = getattr(stream, "buffer", None)
        self._delay = delay
        self._max_pending = max_pending
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._scheduled = False

    def _later(self, message: str) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._now(message)
            return
        with self._lock:
            self._pending.append(message)
            full = len(self._pending) >= self._max_pending
        if full:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_later(self._delay, self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._scheduled = False
        self.flush()

    def _now(self, message: str) -> None:
        with self._lock:
            self._pending.append(message)
        self.flush()

    def flush(self) -> None:
        """Write every pending line."""
        with self._lock:
            if not self._pending:
                return
            text = "\n".join(self._pending) + "\n"
            self._pending.clear()
            try:
                if self._binary is not None:
                    self._stream.flush()  # anything printed directly goes first
                    self._binary.write(text.encode("utf-8", "backslashreplace"))
                    self._binary.flush()
                else:
                    self._stream.write(text)
                    self._stream.flush()
            except (OSError, ValueError):
                pass  # the log's destination is gone (closed pipe): nothing better to do

    debug = info = _later
    msg = warning = error = critical = exception = fatal = log = _now


_writers: list[LineWriter] = []


def flush_logs() -> None:
    """Write what the log writers still hold (at shutdown; also registered at exit)."""
    for writer in _writers:
        writer.flush()


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None,
                      *, cache_loggers: bool = True) -> None:
    """Set up structlog (and route the standard library's logging through it).

    ``cache_loggers=False`` lets a test configure logging again later (cached loggers keep
    the configuration they were first used with).
    """
    stream = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: Any = _render_json if use_json else structlog.dev.ConsoleRenderer(colors=False)
    flush_logs()
    writer = LineWriter(stream)
    if not _writers:
        atexit.register(flush_logs)
    _writers[:] = [writer]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            _drop_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=lambda *_args: writer,
        cache_logger_on_first_use=cache_loggers,
    )
    root = logging.getLogger()
    root.handlers[:] = [_StdlibBridge()]
    root.setLevel(max(_LEVELS[level], logging.WARNING))

