"""``build_image``: a directory's Dockerfile built into an image, logged, time-limited.

The building block of ``source: "remote"`` with ``runtime: "docker"``: the pipeline clones the
repository, then calls ``build_image(engine, checkout, f"dployr/{name}:{commit_sha}", log)``
and runs the returned image id as a release.

It uses the SDK's low-level build API (``APIClient.build``: the context is tarred in the
worker thread, ``.dockerignore`` honoured, intermediate containers always removed) on a client
of its own, so that the time limit can cut the build short: the limit closes the build's
connection, which makes the engine cancel the build. Every line of the engine's output goes
to ``log`` as it comes (``Step 2/4 : RUN ...``, the commands' output, errors). The image is
labelled ``dployr.managed=true``. Failures raise ``agent.deploy.errors.BuildFailed`` with a
reason a user can act on; an engine that does not answer raises RuntimeUnavailable.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import structlog

from agent.deploy.errors import BuildFailed
from agent.deploy.logfile import LineSink
from agent.docker.engine import DockerEngine, EngineDown, describe_failure
from agent.docker.sdk import docker, requests

__all__ = ["build_image"]

log = structlog.get_logger("agent.docker.build")

_LINE_WAIT = 30.0   # seconds a log line may take to be written before the build gives up on it


class _Build:
    """One build run in a worker thread; ``cancel`` (any thread) cuts its connection."""

    def __init__(self, engine: DockerEngine, context_dir: Path, tag: str,
                 labels: Mapping[str, str], limit: float) -> None:
        self._engine = engine
        self._context = context_dir
        self._tag = tag
        self._labels = dict(labels)
        self._limit = limit
        self._lock = threading.Lock()
        self._response: requests.Response | None = None
        self._cancelled = False

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                docker.types.daemon.CancellableStream(iter(()), response).close()

    def _capture(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        with self._lock:
            self._response = response

    def run(self, emit: Any) -> str:
        """Build; call ``emit(line)`` for each line; return the image id. Worker thread."""
        try:
            api = self._engine.new_api_client(timeout=self._limit + 30)
        except Exception as exc:
            raise EngineDown(describe_failure(exc)) from None
        api.hooks["response"].append(self._capture)
        try:
            try:
                stream: Iterator[dict[str, Any]] = api.build(
                    path=str(self._context), tag=self._tag, rm=True, forcerm=True, pull=False,
                    decode=True, labels=self._labels)
            except docker.errors.APIError as exc:
                raise BuildFailed(f"the engine refused the build: {exc.explanation}") from None
            except (requests.ConnectionError, FileNotFoundError, PermissionError) as exc:
                raise EngineDown(describe_failure(exc)) from None
            except TypeError as exc:  # e.g. no Dockerfile in the context
                raise BuildFailed(str(exc)) from None
            image_id, error = self._follow(stream, emit)
            if error is not None:
                raise BuildFailed(error)
            if image_id is None:
                image_id = str(api.inspect_image(self._tag)["Id"])  # type: ignore[no-untyped-call]
            return image_id
        finally:
            api.close()

    def _follow(self, stream: Iterator[dict[str, Any]], emit: Any) -> tuple[str | None, str | None]:
        image_id: str | None = None
        error: str | None = None
        try:
            for chunk in stream:
                if "stream" in chunk:
                    for line in str(chunk["stream"]).splitlines():
                        if line.strip():
                            emit(line)
                elif "error" in chunk:
                    error = str(chunk["error"]).strip()
                    emit(f"error: {error}")
                elif "status" in chunk:
                    emit(str(chunk["status"]))
                aux = chunk.get("aux")
                if isinstance(aux, dict) and aux.get("ID"):
                    image_id = str(aux["ID"])
        except Exception as exc:
            with self._lock:
                cancelled = self._cancelled
            if cancelled:
                raise BuildFailed("the build was cut short") from None
            raise BuildFailed(f"the build's connection to the engine broke: "
                              f"{describe_failure(exc)}") from None
        return image_id, error


async def build_image(engine: DockerEngine, context_dir: Path, tag: str, log_line: LineSink, *,
                      limit: float, labels: Mapping[str, str] | None = None) -> str:
    """Build ``context_dir/Dockerfile`` as ``tag`` (at most ``limit`` seconds); return the
    image id. Raises BuildFailed (failed step, no Dockerfile, time limit) or
    RuntimeUnavailable (no engine)."""
    if not (context_dir / "Dockerfile").is_file():
        raise BuildFailed("no Dockerfile at the root of the repository")
    loop = asyncio.get_running_loop()
    build = _Build(engine, context_dir, tag, {"dployr.managed": "true", **(labels or {})},
                   limit)

    async def write(line: str) -> None:
        await log_line(line)

    def emit(line: str) -> None:
        future = asyncio.run_coroutine_threadsafe(write(line), loop)
        with contextlib.suppress(Exception):
            future.result(timeout=_LINE_WAIT)

    task = asyncio.ensure_future(engine.call(lambda _client: build.run(emit), pool="build"))
    try:
        return await asyncio.wait_for(asyncio.shield(task), limit)
    except asyncio.CancelledError:  # the deploy was cancelled (deleted, agent stopping)
        build.cancel()
        raise
    except TimeoutError:
        build.cancel()
        with contextlib.suppress(Exception):
            await task
        log.info("docker_build_timeout", tag=tag, limit=limit)
        raise BuildFailed(f"the build took longer than {limit:g}s") from None
