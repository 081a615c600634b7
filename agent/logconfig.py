"""The agent's own log: structlog, JSON when stderr is not a terminal, secrets redacted.

Called once by the CLI (never at import). Records from the standard library (aiohttp's
internals) go through the same renderer. No traceback is ever written: an exception shows
as its type and where it was raised, because exception texts and frames can hold secrets.

The canonical access line (``http_request``, one per API request) has a fast path:
``AccessLog`` writes the same JSON line, field for field and in the same order, without
going through structlog's processor chain, to the same batched ``LineWriter``. It is only
used when the log is JSON and the level lets info lines through; otherwise the middleware
logs through structlog as any other event.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import re
import sys
import threading
import time
import traceback
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any, TextIO

import pydantic_core
import structlog

__all__ = [
    "REDACTED",
    "REQUEST_ID",
    "AccessLog",
    "LineWriter",
    "access_log",
    "configure_logging",
    "flush_logs",
    "redact",
    "reset_logging",
]

REDACTED = "[redacted]"
# The id of the API request being handled (set by the middleware; each request runs in a task
# of its own, so it never leaks into another request). Every line logged meanwhile carries it.
REQUEST_ID: ContextVar[str | None] = ContextVar("dployr_request_id", default=None)
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


def _add_request_id(_logger: Any, _name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: the current request's id, as ``request_id``."""
    request_id = REQUEST_ID.get()
    if request_id is not None:
        event_dict.setdefault("request_id", request_id)
    return event_dict


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

    ``later_record`` queues a line that is not rendered yet: a tuple whose first item renders
    the whole tuple as the line. It is rendered when the batch is written, in its place among
    the other lines (rendering hundreds of lines in one go is cheaper than one per request).
    """

    def __init__(self, stream: TextIO, *, delay: float = 0.05, max_pending: int = 1024) -> None:
        self._stream = stream
        self._binary = getattr(stream, "buffer", None)
        self._delay = delay
        self._max_pending = max_pending
        self._pending: list[str | tuple[Any, ...]] = []
        self._lock = threading.Lock()
        self._scheduled = False

    def _later(self, message: str | tuple[Any, ...]) -> None:
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

    def later_record(self, record: tuple[Any, ...]) -> None:
        """Queue ``record`` (``(render, *fields)``) to be rendered and written with the next
        batch, or at once when no event loop runs on this thread (and none is pending)."""
        if not self._scheduled:
            self._later(record)  # finds the loop, schedules the batch
            return
        with self._lock:
            self._pending.append(record)
            full = len(self._pending) >= self._max_pending
        if full:
            self.flush()

    def _scheduled_flush(self) -> None:
        self._scheduled = False
        self.flush()

    def _now(self, message: str | tuple[Any, ...]) -> None:
        with self._lock:
            self._pending.append(message)
        self.flush()

    def flush(self) -> None:
        """Write every pending line."""
        with self._lock:
            if not self._pending:
                return
            text = "\n".join([item if isinstance(item, str) else item[0](item)
                              for item in self._pending]) + "\n"
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


class AccessLog:
    """Writes the ``http_request`` line exactly as structlog renders it, for a fraction of
    the cost: on the request's path only its fields are queued (``LineWriter.later_record``);
    the line is rendered with the rest of its batch.

    The fields are fixed and none of them names a secret (``redact`` would leave them alone);
    ``path`` is the URL path without its query string, and no header is ever written. Text
    that is plain printable ASCII without quotes or backslashes is written as is; anything
    else goes through the same encoder as structlog's lines, so the escaping is identical.
    The timestamp is structlog's ISO format (UTC, ``Z``) of the moment ``write`` was called.
    """

    def __init__(self, writer: LineWriter) -> None:
        self._writer = writer
        self._second = -1
        self._second_text = ""
        # str -> its JSON form, for the few recurring values (methods, routes, paths, principals;
        # request ids are new each time and are not kept)
        self._texts: dict[str, str] = {}

    def write(self, method: str, route: str | None, path: str, status: int, seconds: float,
              principal: str | None, request_id: str) -> None:
        """Log one answered request that took ``seconds`` (written as ``duration_ms``)."""
        self._writer.later_record((self._render, time.time(), method, route, path, status,
                                   seconds, principal, request_id))

    def _render(self, record: tuple[Any, ...]) -> str:
        _, now, method, route, path, status, seconds, principal, request_id = record
        second = int(now)
        if second != self._second:
            self._second, self._second_text = second, _utc_second(second)
        micros = int((now - second) * 1_000_000)
        stamp = f"{self._second_text}.{micros:06d}Z" if micros else f"{self._second_text}Z"
        text = self._text
        return (f'{{"method":{text(method)},"route":{"null" if route is None else text(route)},'
                f'"path":{text(path)},"status":{status},'
                f'"duration_ms":{_json_float(round(seconds * 1000, 2))},'
                f'"principal":{"null" if principal is None else text(principal)},'
                f'"event":"http_request","request_id":{_json_text(request_id)},"level":"info",'
                f'"timestamp":"{stamp}"}}')

    def _text(self, value: str) -> str:
        encoded = self._texts.get(value)
        if encoded is None:
            encoded = _json_text(value)
            if len(self._texts) >= 4096:
                self._texts.clear()
            self._texts[value] = encoded
        return encoded


def _utc_second(second: int) -> str:
    t = time.gmtime(second)
    return (f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"
            f"T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}")


_PLAIN = re.compile(r'[\x20\x21\x23-\x5b\x5d-\x7e]*')


def _json_text(value: str) -> str:
    if _PLAIN.fullmatch(value):
        return f'"{value}"'
    try:
        return pydantic_core.to_json(value).decode()
    except pydantic_core.PydanticSerializationError:  # lone surrogates (undecodable bytes)
        return json.dumps(value)


def _json_float(value: float) -> str:
    # repr and pydantic-core's encoder agree on finite floats below 1e16 (the shortest digits
    # that read back the same); beyond that, or for inf/nan, use the encoder itself.
    if -1e16 < value < 1e16:
        return repr(value)
    return pydantic_core.to_json(value).decode()


_writers: list[LineWriter] = []
_access_log: AccessLog | None = None
_flush_at_exit = False


def access_log() -> AccessLog | None:
    """The fast writer for access lines, or None: then log ``http_request`` through structlog."""
    return _access_log


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
    global _access_log, _flush_at_exit
    stream = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: Any = _render_json if use_json else structlog.dev.ConsoleRenderer(colors=False)
    flush_logs()
    writer = LineWriter(stream)
    if not _flush_at_exit:
        atexit.register(flush_logs)
        _flush_at_exit = True
    _writers[:] = [writer]
    _access_log = AccessLog(writer) if use_json and _LEVELS[level] <= logging.INFO else None
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _add_request_id,
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



def reset_logging() -> None:
    """Undo ``configure_logging``: structlog's defaults, no fast access line (for tests)."""
    global _access_log
    flush_logs()
    _access_log = None
    _writers.clear()
    structlog.reset_defaults()
