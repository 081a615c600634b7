"""``DockerRuntime``: apps as containers, behind the same Runtime Protocol as processes.

Each run is a new container (so env and limits changes apply on restart, as for processes),
created from the service's image with:

- labels ``dployr.managed=true``, ``dployr.instance=<instance id>``, ``dployr.service=<id>``,
  ``dployr.service.name`` and ``dployr.deployment``: how a restarted agent re-finds its
  containers (``discover``) and never touches another agent's;
- the app's port published on ``127.0.0.1:<listen port>`` only (the port the supervisor
  allocated; the proxy and health checks reach the app there), mapped to the container port:
  the deployment's ``port``, else the image's single EXPOSEd port, else the listen port itself;
- env: the service's env vars and ``PORT`` = the container port (nothing of the agent's own
  environment);
- the json-file log driver with ``[docker] log_max_size``/``log_max_file``, and a
  ``LogForwarder`` per stream copying the output into the raw files of the Runtime contract;
- ``memory`` (and the same swap limit: no swap) and ``cpus`` from the deployment's limits;
- restart policy ``no``: **the agent restarts**, with its own policy (backoff, max_restarts,
  ``crashed`` with the exit code and the stderr tail), exactly as for processes. A Docker
  restart policy would restart behind the agent's back and make its states lie.

Waiting for the end of a run: the log streams end when the container stops (after its last
line), so when both have ended the runtime inspects the container. Stopped: it copies what
is left (a non-following read from the saved positions), reports the exit code (OOM kills as
SIGKILL) and removes the container. Still running: the streams broke (the engine went
away); the watch waits, and when the engine answers again every such watch is settled the
same way (the ``resync``): re-adopted with its log streams resumed, or ended.

Stop: the stop signal through ``kill``, the grace period, then SIGKILL. An agent stop or
crash never stops a container; on start ``adopt`` takes each recorded container back (same
id and start time) without touching it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal as _signal
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from agent.config import DockerConfig
from agent.docker.containers import (
    container_port,
    create_container,
    exit_status,
    scan_containers,
    start_container,
)
from agent.docker.engine import DockerEngine, EngineDown
from agent.docker.images import ImageMissing, resolve_image
from agent.docker.logs import LogForwarder, Outcome, Stream
from agent.docker.sdk import docker
from agent.docker.stats import DockerStats
from agent.errors import RuntimeUnavailable
from agent.supervisor.runtime import (
    Adopted,
    ExitStatus,
    Handle,
    LogPaths,
    RunSpec,
    RuntimeFailure,
    TreeStats,
)

__all__ = ["DockerRuntime"]

log = structlog.get_logger("agent.supervisor.docker")

_KILL_WAIT = 10.0        # seconds to wait for a container after SIGKILL
_RESTREAM_DELAY = 1.0    # seconds before following again a stream that ended early
_RETRY_DELAY = 5.0       # seconds before looking again at a container the engine erred on
_ENDED_KEPT = 1024
_IMAGES_KEPT = 256
_STREAMS: tuple[Stream, ...] = ("stdout", "stderr")


@dataclass(eq=False)
class _Watch:
    container_id: str
    logs: LogPaths
    run_dir: Path
    exited: asyncio.Future[ExitStatus]
    forwarders: list[LogForwarder] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    streaming: int = 0           # forwarders following now
    abandoned: bool = False      # a stop failed for want of the engine: kill it when back
    settling: asyncio.Task[None] | None = None
    restreams: int = 0


class DockerRuntime:
    """Runs apps as containers. Implements ``Runtime``; see the module docstring."""

    kind = "docker"
    host_env = False   # containers get the service's env vars only, not the agent's PATH/HOME

    def __init__(self, engine: DockerEngine, config: DockerConfig, *,
                 instance_id: Callable[[], Awaitable[str]], stats: DockerStats) -> None:
        self.engine = engine
        self.stats_cache = stats
        self._config = config
        self._instance_id = instance_id
        self._watches: dict[str, _Watch] = {}
        self._ended: dict[str, ExitStatus] = {}
        self._failed_starts: set[str] = set()
        self._resync_listeners: list[Callable[[set[str]], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._images: dict[str, dict[str, Any]] = {}
        self._timers: list[asyncio.TimerHandle] = []
        engine.add_listener(self._on_availability)

    # -- lifetime and availability -----------------------------------------------------------

    async def open(self) -> None:
        """Start watching the engine and reading stats (inside the running loop)."""
        self._loop = asyncio.get_running_loop()
        self.engine.start()
        self.stats_cache.start(self._running_ids)

    async def close(self) -> None:
        """Release every watch (containers keep running), then wait for the log threads."""
        threads = [t for w in self._watches.values() for t in w.threads]
        for cid in list(self._watches):
            self._release(cid)
        for timer in self._timers:
            timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await self.stats_cache.close()

        def join() -> None:
            for thread in threads:
                thread.join(timeout=5)

        await asyncio.to_thread(join)

    async def ensure_available(self) -> None:
        """Raise RuntimeUnavailable (503) unless the engine answers now."""
        await self.engine.ensure()

    def add_resync_listener(self, listener: Callable[[set[str]], None]) -> None:
        """``listener(service_ids)`` after the engine came back: the services whose start
        failed while it was away (the caller starts them again)."""
        self._resync_listeners.append(listener)

    def _running_ids(self) -> list[str]:
        return [cid for cid, w in self._watches.items() if not w.exited.done()]

    def _on_availability(self, available: bool) -> None:
        if available and self._loop is not None:
            self._spawn(self._resync())

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _resync(self) -> None:
        """The engine answers again: settle every watch whose streams were lost, then tell
        the listeners which starts failed meanwhile."""
        log.info("docker_resync", watched=len(self._watches))
        for watch in list(self._watches.values()):
            self._kick(watch)
        failed, self._failed_starts = self._failed_starts, set()
        for listener in self._resync_listeners:
            listener(failed)

    # -- starting ----------------------------------------------------------------------------

    async def start(self, spec: RunSpec) -> Handle:
        """Create and start the run's container; returns once it runs (or already ended)."""
        if spec.kind != "app":
            raise RuntimeFailure("a Docker service runs its image; it has no build step")
        if not spec.image:
            raise RuntimeFailure("the service has no image to run")
        listen_port = spec.listen_port or int(spec.env.get("PORT", "0"))
        if not listen_port:
            raise RuntimeFailure("no port was allocated for the container")
        try:
            instance = await self._instance_id()
            image = await self._image(spec.image)
            cport = container_port(spec, image, listen_port)
            cid = await self.engine.call(lambda c: create_container(
                c, self._config, spec, instance=instance, container_port=cport,
                listen_port=listen_port))
            await asyncio.to_thread(self._begin_logs, cid, spec)
            info = await self.engine.call(lambda c: start_container(c, cid))
        except RuntimeUnavailable as exc:
            self._failed_starts.add(spec.service_id)
            raise RuntimeFailure(exc.message) from None
        except docker.errors.APIError as exc:
            raise RuntimeFailure(f"the Docker engine refused: {exc.explanation or exc}") \
                from None
        handle = Handle(self.kind, {"container_id": cid, "name": info["Name"].lstrip("/"),
                                    "started_at": info["State"]["StartedAt"],
                                    "pid": int(info["State"].get("Pid") or 0) or None})
        watch = self._watch(cid, spec)
        self._follow(watch)
        self.stats_cache.want(cid)
        log.debug("container_started", service_id=spec.service_id, container_id=cid[:12],
                  port=f"127.0.0.1:{listen_port}->{cport}")
        return handle

    async def _image(self, ref: str) -> dict[str, Any]:
        """The image's inspect; pulled first when it is not on this host. Inspects of image
        ids (what releases run) are kept: an id always names the same image."""
        cached = self._images.get(ref)
        if cached is not None:
            return cached
        try:
            image = await resolve_image(self.engine, ref, limit=self._config.pull_timeout)
        except ImageMissing as exc:
            raise RuntimeFailure(str(exc)) from None
        if ref.startswith("sha256:"):
            if len(self._images) >= _IMAGES_KEPT:
                self._images.pop(next(iter(self._images)))
            self._images[ref] = {"Id": image.get("Id"), "Config": image.get("Config") or {}}
        return image

    @staticmethod
    def _begin_logs(cid: str, spec: RunSpec) -> None:
        for stream, raw in zip(_STREAMS, (spec.logs.stdout, spec.logs.stderr), strict=True):
            LogForwarder.begin(cid, raw, LogForwarder.state_path(spec.run_dir, cid, stream))

    # -- watching ----------------------------------------------------------------------------

    def _watch(self, cid: str, spec: RunSpec) -> _Watch:
        loop = asyncio.get_running_loop()
        watch = _Watch(container_id=cid, logs=spec.logs, run_dir=spec.run_dir,
                       exited=loop.create_future())
        self._watches[cid] = watch
        self.stats_cache.wake()
        return watch

    def _forwarders(self, watch: _Watch) -> list[LogForwarder]:
        raws = (watch.logs.stdout, watch.logs.stderr)
        return [LogForwarder(self.engine.client, watch.container_id, stream, raw,
                             LogForwarder.state_path(watch.run_dir, watch.container_id, stream))
                for stream, raw in zip(_STREAMS, raws, strict=True)]

    def _follow(self, watch: _Watch) -> None:
        """Follow both streams, each in a thread of its own, from their saved positions."""
        loop = asyncio.get_running_loop()
        watch.forwarders = self._forwarders(watch)
        watch.threads = []
        for forwarder in watch.forwarders:
            thread = threading.Thread(
                target=self._forward, args=(loop, watch, forwarder), daemon=True,
                name=f"docker-logs-{watch.container_id[:12]}-{forwarder.stream}")
            watch.streaming += 1
            watch.threads.append(thread)
            thread.start()

    def _forward(self, loop: asyncio.AbstractEventLoop, watch: _Watch,
                 forwarder: LogForwarder) -> None:
        try:
            outcome: Outcome = forwarder.run(follow=True)
        except OSError as exc:
            log.error("docker_logs_write_failed", container_id=watch.container_id[:12],
                      error=exc.strerror)
            outcome = "ended"
        with contextlib.suppress(RuntimeError):  # the loop is gone: the agent is stopping
            loop.call_soon_threadsafe(self._stream_ended, watch, outcome)

    def _stream_ended(self, watch: _Watch, outcome: Outcome) -> None:
        watch.streaming -= 1
        if outcome == "closed":
            return
        if outcome == "unreachable":
            self.engine.report_failure("log stream")
        self._kick(watch)

    def _kick(self, watch: _Watch) -> None:
        """Settle the watch if nothing follows it any more."""
        if (watch.streaming == 0 and watch.settling is None and not watch.exited.done()
                and self._watches.get(watch.container_id) is watch):
            watch.settling = self._spawn(self._settle(watch))

    async def _settle(self, watch: _Watch) -> None:
        """The streams ended: follow again if the container runs, else finish the run."""
        cid = watch.container_id
        try:
            try:
                state = await self.engine.call(
                    lambda c: dict(c.api.inspect_container(cid)["State"]))
            except RuntimeUnavailable:
                return  # the resync settles it when the engine answers again
            except docker.errors.NotFound:
                self._finish(watch, ExitStatus())
                return
            except docker.errors.APIError as exc:
                self._retry_later(watch, exc)
                return
            if state.get("Running"):
                if watch.abandoned:
                    with contextlib.suppress(RuntimeUnavailable):
                        await self._kill(cid, int(_signal.SIGKILL))
                if watch.restreams:
                    await asyncio.sleep(_RESTREAM_DELAY)
                watch.restreams += 1
                if self._watches.get(cid) is watch:
                    self._follow(watch)
                return
            try:
                await self.engine.call(lambda c: self._drain(watch))
            except RuntimeUnavailable:
                return
            if state.get("OOMKilled"):
                log.warning("container_oom_killed", container_id=cid[:12])
            # Removed before the run counts as ended, so that nothing of it is left then.
            with contextlib.suppress(RuntimeUnavailable, docker.errors.APIError):
                await self.engine.call(lambda c: c.api.remove_container(cid, v=True, force=True))
            self._finish(watch, exit_status(state))
        finally:
            watch.settling = None

    def _retry_later(self, watch: _Watch, exc: docker.errors.APIError) -> None:
        """The engine answered with an error of its own: look at the container again later."""
        log.warning("container_inspect_failed", container_id=watch.container_id[:12],
                    status=exc.status_code)
        if self._loop is not None:
            self._timers.append(self._loop.call_later(_RETRY_DELAY, self._kick, watch))

    def _drain(self, watch: _Watch) -> None:
        """Copy what is left of a stopped container's output (from the saved positions).
        Worker thread."""
        for forwarder in self._forwarders(watch):
            if forwarder.run(follow=False) == "unreachable":
                raise EngineDown("the engine went away while its logs were read")

    def _finish(self, watch: _Watch, status: ExitStatus) -> None:
        cid = watch.container_id
        if self._watches.get(cid) is watch:
            del self._watches[cid]
        self._ended[cid] = status
        while len(self._ended) > _ENDED_KEPT:
            self._ended.pop(next(iter(self._ended)))
        self.stats_cache.forget(cid)
        for stream in _STREAMS:
            with contextlib.suppress(OSError):
                LogForwarder.state_path(watch.run_dir, cid, stream).unlink(missing_ok=True)
        if not watch.exited.done():
            watch.exited.set_result(status)

    # -- adopting ----------------------------------------------------------------------------

    async def adopt(self, handle: Handle, spec: RunSpec) -> Adopted:
        """Take back a container recorded by an earlier agent: follow its logs from where
        they were left; if it ended meanwhile, copy the rest and report how it ended."""
        cid = str(handle.data["container_id"])
        known = self._watches.get(cid)
        if known is not None:
            return Adopted(alive=not known.exited.done())
        watch = self._watch(cid, spec)
        try:
            state = await self.engine.call(lambda c: dict(c.api.inspect_container(cid)["State"]))
        except RuntimeUnavailable:
            # Unknown until the engine answers: keep it as running; the resync settles it.
            log.info("container_adopt_deferred", service_id=spec.service_id,
                     container_id=cid[:12])
            return Adopted(alive=True)
        except docker.errors.NotFound:
            self._finish(watch, ExitStatus())
            return Adopted(alive=False)
        except docker.errors.APIError as exc:
            self._retry_later(watch, exc)  # unknown yet: kept as running, looked at again
            return Adopted(alive=True)
        if state.get("Running"):
            if state.get("StartedAt") != handle.data.get("started_at"):
                log.warning("container_restarted_outside_agent", container_id=cid[:12])
            self._follow(watch)
            self.stats_cache.want(cid)
            return Adopted(alive=True)
        watch.settling = self._spawn(self._settle(watch))
        await asyncio.shield(watch.settling)
        if not watch.exited.done():
            return Adopted(alive=True)  # the engine went away meanwhile: the resync settles it
        return Adopted(alive=False, status=watch.exited.result())

    async def discover(self, specs: Sequence[RunSpec]) -> dict[str, list[Handle]]:
        """Running containers of this instance per service (strays are killed by the caller);
        containers of services that no longer exist are removed here."""
        wanted = {spec.service_id for spec in specs}
        try:
            instance = await self._instance_id()
            found = await self.engine.call(lambda c: scan_containers(c, instance, wanted))
        except (RuntimeUnavailable, docker.errors.APIError) as exc:
            log.warning("container_scan_failed", error_type=type(exc).__name__)
            return {}
        result: dict[str, list[Handle]] = {}
        for service_id, info in found:
            result.setdefault(service_id, []).append(Handle(self.kind, {
                "container_id": info["Id"], "name": info["Name"].lstrip("/"),
                "started_at": info["State"]["StartedAt"],
                "pid": int(info["State"].get("Pid") or 0) or None}))
        return result

    # -- waiting, signals, stop --------------------------------------------------------------

    async def wait(self, handle: Handle) -> ExitStatus:
        """How the run ended; waits for it."""
        cid = str(handle.data.get("container_id", ""))
        watch = self._watches.get(cid)
        if watch is None:
            return self._ended.get(cid, ExitStatus())
        return await asyncio.shield(watch.exited)

    async def _kill(self, cid: str, sig: int) -> bool:
        """Send ``sig``; False when the container no longer runs. RuntimeUnavailable passes."""
        try:
            await self.engine.call(lambda c: c.api.kill(cid, signal=sig))
        except docker.errors.APIError:
            return False  # 404 gone, 409 not running
        return True

    async def signal(self, handle: Handle, sig: int) -> bool:
        """Send ``sig`` to the container's main process."""
        watch = self._watches.get(str(handle.data.get("container_id", "")))
        if watch is None or watch.exited.done():
            return False
        try:
            return await self._kill(watch.container_id, sig)
        except RuntimeUnavailable:
            return False

    async def stop(self, handle: Handle, sig: int, grace: float) -> ExitStatus:
        """``sig``, up to ``grace`` seconds, then SIGKILL; returns once the run has ended."""
        cid = str(handle.data.get("container_id", ""))
        watch = self._watches.get(cid)
        if watch is None:
            if cid in self._ended:
                return self._ended[cid]
            with contextlib.suppress(RuntimeUnavailable, docker.errors.APIError):
                await self.engine.call(lambda c: c.api.remove_container(cid, force=True, v=True))
            return ExitStatus()
        try:
            if not watch.exited.done():
                await self._kill(cid, sig)
                self._kick(watch)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(watch.exited), grace)
            if not watch.exited.done():
                await self._kill(cid, int(_signal.SIGKILL))
                self._kick(watch)
        except RuntimeUnavailable as exc:
            watch.abandoned = True  # killed by the resync when the engine answers again
            raise RuntimeFailure(exc.message) from None
        try:
            return await asyncio.wait_for(asyncio.shield(watch.exited), _KILL_WAIT)
        except TimeoutError:
            raise RuntimeFailure("the container did not end after SIGKILL") from None

    # -- resources ---------------------------------------------------------------------------

    async def stats(self, handles: Sequence[Handle]) -> Mapping[str, TreeStats]:
        """Figures of each running container from the stats cache (never waits on Docker)."""
        result: dict[str, TreeStats] = {}
        for handle in handles:
            cid = str(handle.data.get("container_id", ""))
            if cid not in self._watches:
                continue
            tree = self.stats_cache.tree(cid)
            if tree is None:
                self.stats_cache.want(cid)
            else:
                result[handle.to_json()] = tree
        return result

    def release(self, handle: Handle) -> None:
        """Stop following the container (agent shutdown); it keeps running."""
        self._release(str(handle.data.get("container_id", "")))

    def _release(self, cid: str) -> None:
        watch = self._watches.pop(cid, None)
        if watch is None:
            return
        for forwarder in watch.forwarders:
            forwarder.close()
        if watch.settling is not None:
            watch.settling.cancel()
        if not watch.exited.done():
            watch.exited.cancel()
