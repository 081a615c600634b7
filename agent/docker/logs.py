"""Forwarding a container's output into the service's raw log files, exactly once.

The Runtime contract says an app's stdout and stderr end up appended to two raw files, which
the agent's log capture reads (``agent.logs.capture``). A container writes to Docker's
json-file log instead; a ``LogForwarder`` per stream follows it through the engine
(``GET /containers/{id}/logs?follow=1&timestamps=1``, one blocking stream in a thread of its
own) and appends each message, without Docker's timestamp, to the raw file.

No line is lost or doubled across an agent crash. The forwarder remembers its *position*
in ``run/docker-<container>-<stream>.json``: the container, the Docker timestamp (nanoseconds) of the
last message copied, how many messages carried exactly that timestamp, and the raw file's
size right after it. A restarted forwarder asks Docker for the messages ``since`` that
timestamp, drops those up to the remembered one, and then drops as many *bytes* of the next
messages as the raw file grew beyond the remembered size: those were copied after the
position was last saved (the position is saved at most every 0.2 s, and always at the end).
What makes this exact is that the raw file only grows while a forwarder runs (the capture
frees consumed bytes with a hole, keeping the size) and that Docker returns a stream's
messages in the same order every time. The one limit is Docker's own retention
(``[docker] log_max_size`` x ``log_max_file``): output an app writes while the agent is away
beyond what Docker keeps is gone before the agent can copy it.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import structlog

from agent.docker.engine import describe_failure
from agent.docker.sdk import docker

__all__ = ["LogForwarder", "Outcome", "Position", "Stream", "parse_timestamp"]

log = structlog.get_logger("agent.docker.logs")

Stream = Literal["stdout", "stderr"]
#: How a forwarding run ended: the stream ended (the container stopped, or the engine went
#: away: the caller inspects to know which), it was closed by the agent, the container no
#: longer exists, or the engine could not be reached.
Outcome = Literal["ended", "closed", "gone", "unreachable"]

_SAVE_EVERY = 0.2        # seconds between saves of the position while messages flow
_SINCE_MARGIN = 1_000_000  # ns asked before the position (the API takes a float of seconds)


@lru_cache(maxsize=4096)
def _epoch_seconds(text: bytes) -> int:
    return int(datetime(int(text[0:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]),
                        int(text[14:16]), int(text[17:19]), tzinfo=UTC).timestamp())


def parse_timestamp(text: bytes) -> int:
    """``2024-05-01T12:00:00.123456789Z`` -> nanoseconds since the epoch (UTC only)."""
    seconds = _epoch_seconds(text[:19])
    fraction = text[20:].rstrip(b"Z") if text[19:20] == b"." else b""
    return seconds * 1_000_000_000 + int((fraction + b"000000000")[:9])


@dataclass
class Position:
    """Where forwarding of one stream of one container stands. See the module docstring."""

    container_id: str
    ts: int = 0
    n: int = 0
    size: int = 0


def _read_position(path: Path) -> Position | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return Position(str(data["container_id"]), int(data["ts"]), int(data["n"]),
                        int(data["size"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_position(path: Path, position: Position) -> None:
    """Atomic replace; no fsync: a crash of the agent keeps the page cache, and a crash of the
    host loses the raw file's tail as well, which the byte count then accounts for."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(position), separators=(",", ":")))
    tmp.replace(path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class LogForwarder:
    """Copies one stream of a container into a raw file. ``run`` blocks: call it in a thread."""

    def __init__(self, client: Callable[[], docker.DockerClient], container_id: str,
                 stream: Stream, raw: Path, state: Path) -> None:
        self.container_id = container_id
        self.stream = stream
        self._client = client
        self._raw = raw
        self._state = state
        self._lock = threading.Lock()
        self._current: Any = None          # the CancellableStream being read
        self._closed = False
        self.copied = 0                    # messages appended by this forwarder (for tests)

    @staticmethod
    def state_path(run_dir: Path, container_id: str, stream: Stream) -> Path:
        """The position file of one stream of one container (each container has its own, so
        that a stray container being stopped never moves the position of the real one)."""
        return run_dir / f"docker-{container_id[:12]}-{stream}.json"

    @staticmethod
    def begin(container_id: str, raw: Path, state: Path) -> None:
        """Record the starting point of a new container's stream (before it starts): nothing
        copied yet, the raw file as large as it is now. Blocking."""
        raw.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        size = raw.stat().st_size if raw.exists() else 0
        _write_position(state, Position(container_id, size=size))

    def close(self) -> None:
        """End a run in progress (from any thread); the position is saved as it stands."""
        with self._lock:
            self._closed = True
            current = self._current
        if current is not None:
            with contextlib.suppress(Exception):
                current.close()

    def run(self, *, follow: bool) -> Outcome:
        """Copy what Docker has after the saved position; with ``follow``, keep copying until
        the stream ends. Returns how it ended."""
        position = _read_position(self._state)
        fd = os.open(self._raw, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            size_now = os.fstat(fd).st_size
            if position is None or position.container_id != self.container_id:
                # No record: the container is older than this agent's knowledge of it.
                position = Position(self.container_id, size=size_now)
            return self._copy(fd, position, size_now, follow=follow)
        finally:
            os.close(fd)

    def _open_stream(self, position: Position, follow: bool) -> Any:
        since = (position.ts - _SINCE_MARGIN) / 1e9 if position.ts > _SINCE_MARGIN else None
        return self._client().api.logs(
            self.container_id, stdout=self.stream == "stdout", stderr=self.stream == "stderr",
            stream=True, follow=follow, timestamps=True, since=since)

    def _copy(self, fd: int, position: Position, size_now: int, *, follow: bool) -> Outcome:
        with self._lock:
            if self._closed:
                return "closed"
        try:
            stream = self._open_stream(position, follow)
        except docker.errors.NotFound:
            return "gone"
        except docker.errors.APIError as exc:
            log.warning("docker_logs_refused", container_id=self.container_id[:12],
                        status=exc.status_code)
            return "gone" if exc.status_code == 404 else "ended"
        except Exception as exc:
            log.info("docker_logs_unreachable", container_id=self.container_id[:12],
                     reason=describe_failure(exc))
            return "unreachable"
        with self._lock:
            self._current = stream
            if self._closed:
                stream.close()
                return "closed"
        mark = min(position.size, size_now)   # the raw size up to the current message
        skip_bytes = size_now - mark          # copied after the position was last saved
        skip_same = position.n
        last_save = time.monotonic()
        try:
            for frame in stream:
                space = frame.find(b" ")
                if space < 0:
                    continue
                ts = parse_timestamp(frame[:space])
                if ts < position.ts:
                    continue
                if ts == position.ts and skip_same > 0:
                    skip_same -= 1
                    continue
                skip_same = 0
                payload = frame[space + 1:]
                mark += len(payload)
                if skip_bytes >= len(payload):
                    skip_bytes -= len(payload)
                else:
                    _write_all(fd, payload[skip_bytes:])
                    skip_bytes = 0
                    self.copied += 1
                if ts == position.ts:
                    position.n += 1
                else:
                    position.ts, position.n = ts, 1
                position.size = mark
                now = time.monotonic()
                if now - last_save >= _SAVE_EVERY:
                    _write_position(self._state, position)
                    last_save = now
        except Exception as exc:  # a broken stream: the caller inspects the container
            log.info("docker_logs_interrupted", container_id=self.container_id[:12],
                     error_type=type(exc).__name__)
        finally:
            with contextlib.suppress(OSError):
                _write_position(self._state, position)
            with self._lock:
                self._current = None
                closed = self._closed
            with contextlib.suppress(Exception):
                stream.close()
        return "closed" if closed else "ended"
