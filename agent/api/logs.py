"""``GET /v1/services/{id}/logs``: tail and follow a service's logs.

Formats, chosen by ``format=`` or else by the Accept header:

- ``text`` (default, ``text/plain``): ``<timestamp> <stream> <text>`` per line, for curl;
- ``ndjson`` (``application/x-ndjson``): ``{"seq", "timestamp", "stream", "line"}`` per line;
- ``sse`` (``text/event-stream``): one ``log`` event per line, ``id:`` = seq, so a browser's
  EventSource resumes after a disconnect with ``Last-Event-ID`` (no line lost or repeated);
  a comment every 15 s keeps idle connections open.

Where to start: ``Last-Event-ID`` (the line after it), else ``tail`` lines back from the end
(default 100), else with only ``since``, every line since then. ``follow=true`` then keeps
the response open and streams new lines as they are captured, across rotations and restarts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Literal

from aiohttp import web
from pydantic import Field

from agent.api.middleware import prepare_stream
from agent.api.routing import EndpointTable
from agent.api.schemas import QueryModel
from agent.errors import InvalidRequest
from agent.keys import CLOCK_KEY, SUPERVISOR_KEY
from agent.logs import LogLine, LogManager, LogReader, parse_since, tail
from agent.logs.files import LogFiles
from agent.logs.follow import LogSource
from agent.logs.format import parse_line

__all__ = ["DEFAULT_TAIL", "Format", "choose_format", "respond_with_log", "routes"]

routes = EndpointTable("services")

Format = Literal["text", "ndjson", "sse"]
_CONTENT_TYPES = {"text": "text/plain", "ndjson": "application/x-ndjson",
                  "sse": "text/event-stream"}
DEFAULT_TAIL = 100
_IDLE = 15.0


class LogsQuery(QueryModel):
    tail: int | None = Field(default=None, ge=0, le=100_000,
                             description="Lines back from the end (default 100 unless `since`)")
    follow: bool = Field(default=False, description="Keep streaming new lines")
    stream: Literal["stdout", "stderr", "agent"] | None = Field(
        default=None, description="Only this stream (`agent`: the supervisor's own notes)")
    since: str | None = Field(default=None, max_length=64,
                              description="RFC 3339 time or a duration back from now (`15m`)")
    format: Format | None = Field(default=None, description="text | ndjson | sse (default: "
                                                            "from Accept, else text)")


def choose_format(request: web.Request, chosen: Format | None) -> Format:
    """The format asked for with ``format=``, else the one the Accept header prefers."""
    if chosen is not None:
        return chosen
    accept = request.headers.get("Accept", "")
    if "text/event-stream" in accept:
        return "sse"
    if "application/x-ndjson" in accept or "application/ndjson" in accept:
        return "ndjson"
    return "text"


def _render(lines: list[LogLine], fmt: Format) -> bytes:
    if fmt == "text":
        return b"".join(line.as_text() for line in lines)
    if fmt == "ndjson":
        return b"".join(line.as_json() + b"\n" for line in lines)
    return b"".join(b"id: %d\nevent: log\ndata: %s\n\n" % (line.seq, line.as_json())
                    for line in lines)


def _first_seq_since(files: LogFiles, since: bytes, end_seq: int) -> int:
    """The seq of the first line stamped at or after ``since`` (end_seq + 1 if none)."""
    pos = files.locate_time(since)
    try:
        with pos.path.open("rb") as f:
            f.seek(pos.offset)
            line = parse_line(f.readline())
    except FileNotFoundError:
        line = None
    return line.seq if line is not None else end_seq + 1


def _closing(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


@routes.get("/v1/services/{id}/logs", summary="Tail or follow a service's logs", access="viewer",
            query=LogsQuery, content_types=tuple(_CONTENT_TYPES.values()),
            description=__doc__ or "")
async def get_logs(request: web.Request, query: LogsQuery) -> web.StreamResponse:
    supervisor = request.app[SUPERVISOR_KEY]
    service = supervisor.get(request.match_info["id"])
    manager: LogManager = supervisor.logs()
    return await respond_with_log(
        request, source=manager, key=service.id, end_seq=lambda: manager.seq(service.id),
        tail_lines=query.tail, follow=query.follow, stream=query.stream, since=query.since,
        fmt=choose_format(request, query.format))


async def respond_with_log(request: web.Request, *, source: LogSource, key: str,
                           end_seq: Callable[[], int], tail_lines: int | None, follow: bool,
                           stream: str | None, since: str | None,
                           fmt: Format) -> web.StreamResponse:
    """Tail and/or follow the log ``key`` of ``source`` (stamped lines, see agent.logs) as the
    module docstring describes: the same parameters for service logs and deployment logs.
    ``end_seq`` gives the seq of the last line written."""
    files = source.files(key)
    since_stamp: bytes | None = None
    if since is not None:
        try:
            since_stamp = parse_since(since, request.app[CLOCK_KEY].time())
        except ValueError as exc:
            raise InvalidRequest("Invalid since", field="since", issue=str(exc)) from None
    last_event_id = request.headers.get("Last-Event-ID", "").strip()
    resume = int(last_event_id) + 1 if last_event_id.isdigit() else None

    response = web.StreamResponse(headers={"Content-Type": _CONTENT_TYPES[fmt] + (
        "; charset=utf-8" if fmt == "text" else ""), "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no"})
    await prepare_stream(request, response)
    try:
        if resume is not None:
            start = resume
        elif since_stamp is not None and tail_lines is None:
            start = await asyncio.to_thread(_first_seq_since, files, since_stamp, end_seq())
        else:
            last = end_seq()
            count = DEFAULT_TAIL if tail_lines is None else tail_lines
            lines = await asyncio.to_thread(tail, files, count, stream=stream, since=since_stamp)
            if lines:
                await response.write(_render(lines, fmt))
            start = max([last, *(line.seq for line in lines)]) + 1
            if not follow:
                return response
        reader = LogReader(source, key, start, stream=stream, follow=follow, idle=_IDLE)
        async for batch in reader.batches():
            if batch:
                await response.write(_render(batch, fmt))
            elif _closing(request):
                break
            elif fmt == "sse":
                await response.write(b": keep-alive\n\n")
    except ConnectionResetError:
        pass  # the client went away
    return response
