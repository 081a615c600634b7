"""CPU and memory of containers from Docker's stats, read in the background and cached.

A one-shot stats call (``GET /containers/{id}/stats?stream=0&one-shot=1``) answers in a few
milliseconds when the engine's collector is idle, but waits for its next one-second tick
when other calls are in flight, so nothing that answers a user ever waits on it: a refresher
reads every running container each ``[docker] stats_interval`` seconds, all at once on the
engine's stats threads, and keeps the last two readings per container. Status calls
(``TreeStats``) and the metrics sampler (``ContainerUsageSource``) read that cache only.

What comes from where: CPU time, memory (usage minus inactive file cache, as ``docker
stats`` shows it) and tasks (Docker's PIDS column: threads) from the engine; the number of
processes and their open files from ``/proc`` when the container's cgroup is visible from the
agent (same host), else the task count and 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from agent.clock import Clock
from agent.docker.engine import DockerEngine
from agent.docker.sdk import docker
from agent.errors import RuntimeUnavailable
from agent.metrics.cgroup import CgroupReader
from agent.metrics.sources import ContainerUsageSource, ServiceUsage
from agent.records import record
from agent.supervisor.runtime import TreeStats
from agent.timers import sleep_interval

__all__ = ["DockerStats", "Reading", "reading_from_stats"]

log = structlog.get_logger("agent.docker.stats")


@record
class Reading:
    """One container's figures at one moment (``at``: the clock's monotonic time)."""

    at: float
    cpu_ns: int
    memory: int
    tasks: int
    processes: int
    open_files: int


def _memory(stats: dict[str, Any]) -> int:
    memory = stats.get("memory_stats") or {}
    usage = int(memory.get("usage") or 0)
    detail = memory.get("stats") or {}
    for key in ("total_inactive_file", "inactive_file"):  # cgroup v1, v2
        inactive = detail.get(key)
        if inactive is not None and int(inactive) < usage:
            return usage - int(inactive)
    return usage


def _open_files(pids: Iterable[int]) -> int:
    total = 0
    for pid in pids:
        path = f"/proc/{pid}/fd"
        try:
            size = os.stat(path).st_size  # noqa: PTH116 - Linux 6.2+ reports the count here
            total += size if size > 0 else len(os.listdir(path))  # noqa: PTH208
        except OSError:
            continue
    return total


def reading_from_stats(stats: dict[str, Any], at: float, pids: list[int] | None) -> Reading:
    """A ``Reading`` from the engine's stats JSON and the container's pids (None: unknown)."""
    cpu = ((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage") or 0
    tasks = int((stats.get("pids_stats") or {}).get("current") or 0)
    return Reading(at=at, cpu_ns=int(cpu), memory=_memory(stats), tasks=tasks,
                   processes=len(pids) if pids is not None else tasks,
                   open_files=_open_files(pids) if pids is not None else 0)


class DockerStats(ContainerUsageSource):
    """The cache of container readings and the task that refreshes it."""

    def __init__(self, engine: DockerEngine, clock: Clock, *, interval: float,
                 cgroups: CgroupReader | None = None) -> None:
        self._engine = engine
        self._clock = clock
        self._interval = interval
        self._cgroups = cgroups or CgroupReader()
        self._latest: dict[str, Reading] = {}
        self._previous: dict[str, Reading] = {}
        self._containers: Callable[[], Iterable[str]] = list
        self._task: asyncio.Task[None] | None = None
        self._pending: set[str] = set()
        self._firsts: set[asyncio.Task[None]] = set()
        self._watched = asyncio.Event()  # set by wake(): a container may be running now

    # -- readers (cheap, never wait) ---------------------------------------------------------

    def tree(self, container_id: str) -> TreeStats | None:
        """The latest reading as the supervisor's TreeStats; None before the first one."""
        reading = self._latest.get(container_id)
        if reading is None:
            return None
        return TreeStats(cpu_seconds=reading.cpu_ns / 1e9, memory_bytes=reading.memory,
                         processes=reading.processes, sampled_at=reading.at)

    def container_usage(self, container_id: str) -> ServiceUsage | None:
        """The sampler's figures (CPU as a rate between the last two readings); None until
        there are two. Safe from any thread: it only reads two dicts."""
        latest = self._latest.get(container_id)
        previous = self._previous.get(container_id)
        if latest is None or previous is None or latest.at <= previous.at:
            return None
        cpu = max(0, latest.cpu_ns - previous.cpu_ns) / 1e9 / (latest.at - previous.at) * 100
        return ServiceUsage(cpu_percent=round(cpu, 2), rss_bytes=latest.memory,
                            threads=latest.tasks, open_files=latest.open_files,
                            processes=latest.processes)

    # -- refreshing --------------------------------------------------------------------------

    def _read(self, client: docker.DockerClient, container_id: str) -> Reading:
        stats = client.api.stats(container_id, stream=False, one_shot=True)
        pids = self._cgroups.container_pids(container_id)
        return reading_from_stats(stats, self._clock.monotonic(), pids)

    async def refresh(self, container_ids: Iterable[str]) -> None:
        """Read the given containers now, all at once; failures leave their entries alone."""

        async def one(container_id: str) -> None:
            try:
                reading = await self._engine.call(lambda c: self._read(c, container_id),
                                                  pool="stats")
            except (RuntimeUnavailable, docker.errors.APIError):
                return
            latest = self._latest.get(container_id)
            if latest is not None and reading.at - latest.at >= 0.1:
                self._previous[container_id] = latest
            self._latest[container_id] = reading

        await asyncio.gather(*(one(cid) for cid in set(container_ids)))

    def want(self, container_id: str) -> None:
        """Read a container that has no reading yet soon (in the background)."""
        if container_id in self._latest or container_id in self._pending or self._task is None:
            return
        self._pending.add(container_id)

        async def first() -> None:
            try:
                await self.refresh([container_id])
            finally:
                self._pending.discard(container_id)

        task = asyncio.get_running_loop().create_task(first())
        self._firsts.add(task)
        task.add_done_callback(self._firsts.discard)

    def forget(self, container_id: str) -> None:
        self._latest.pop(container_id, None)
        self._previous.pop(container_id, None)

    def start(self, containers: Callable[[], Iterable[str]]) -> None:
        """Refresh ``containers()`` every interval (inside the running loop)."""
        self._containers = containers
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    def wake(self) -> None:
        """A container is watched now: refresh every interval again (without any, the
        refresh task sleeps without a timer, so an agent without containers never wakes
        for it)."""
        self._watched.set()

    async def _loop(self) -> None:
        while True:
            if not any(True for _ in self._containers()):
                self._watched.clear()
                await self._watched.wait()
            await sleep_interval(self._interval)
            ids = list(self._containers())
            if ids and self._engine.available is not False:
                try:
                    await self.refresh(ids)
                except Exception as exc:  # keep refreshing; a reading is never worth a crash
                    log.warning("docker_stats_failed", error_type=type(exc).__name__)

    async def close(self) -> None:
        for task in list(self._firsts):
            task.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
