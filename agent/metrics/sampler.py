"""The sampler: reads the host and every service on a timer, keeps the latest snapshot
and the history. Requests only ever read what it cached.

``tick`` takes one sample: the list of services is read on the event loop (the supervisor
lives there), the /proc reads run on the sampler's own thread (which also builds the
history row), and the result is stored back on the loop, where listeners (the instance's
health check) are told. ``run`` calls ``tick`` every ``interval`` seconds (at multiples of
it, in one wake-up with the other periodic timers), skipping ticks rather than piling them
up when a sample runs late. A failed sample is logged and the previous snapshot kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import structlog

from agent.clock import Clock
from agent.metrics.compute import compute_host
from agent.metrics.history import History
from agent.metrics.processes import ProcessTreeSampler
from agent.metrics.readings import HostReader, HostReading
from agent.metrics.series import SERVICE_SERIES, RowBuilder, service_key
from agent.metrics.snapshot import HostSample, ServiceSample, Snapshot
from agent.metrics.sources import ContainerUsageSource, ServiceProcess, ServiceSource
from agent.timers import next_multiple, sleep_until

__all__ = ["SampleListener", "Sampler"]

log = structlog.get_logger("agent.metrics")

SampleListener = Callable[[Snapshot], Awaitable[None]]


class Sampler:
    """Owns the latest ``Snapshot`` and the ``History``. Use from the event loop."""

    def __init__(self, *, interval: float, clock: Clock, host_reader: HostReader,
                 processes: ProcessTreeSampler, services: ServiceSource,
                 history: History) -> None:
        self.interval = interval
        self.history = history
        self.latest: Snapshot | None = None
        self.failures = 0
        self._clock = clock
        self._reader = host_reader
        self._processes = processes
        self._services = services
        self._listeners: list[SampleListener] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics-sampler")
        self._previous: tuple[HostReading, float] | None = None
        self._service_ids: set[str] = set()
        self._rows = RowBuilder()
        self._seq = 0
        self._task: asyncio.Task[None] | None = None

    def set_service_source(self, source: ServiceSource) -> None:
        """Replace where services come from (the supervisor wires itself in here)."""
        self._services = source

    def set_container_usage(self, source: ContainerUsageSource | None) -> None:
        """Fill Docker services from ``source`` (Docker's stats) when it knows the container."""
        self._processes.set_container_usage(source)

    def current_services(self) -> tuple[ServiceProcess, ...]:
        """The services as the source reports them right now (not the last sample)."""
        return tuple(self._services.services())

    def add_listener(self, listener: SampleListener) -> None:
        """Call ``listener`` with every new snapshot, on the event loop."""
        self._listeners.append(listener)

    def _collect(self, services: Sequence[ServiceProcess]) -> tuple[
            HostSample, tuple[ServiceSample, ...], tuple[tuple[str, ...], list[float]], float]:
        """One sample and its history row; runs on the sampler's thread."""
        started = time.perf_counter()
        monotonic, wall = self._clock.monotonic(), self._clock.time()
        reading = self._reader.read()
        prev_reading, prev_mono = self._previous or (None, monotonic)
        host = compute_host(prev_reading, reading, elapsed=monotonic - prev_mono,
                            timestamp=wall)
        samples = self._processes.sample(services, monotonic=monotonic, wall=wall)
        self._previous = (reading, monotonic)
        row = self._rows.row(host, samples)
        return host, samples, row, time.perf_counter() - started

    async def tick(self) -> Snapshot | None:
        """Take one sample now; return it (None if it failed)."""
        services = tuple(self._services.services())
        loop = asyncio.get_running_loop()
        try:
            host, samples, row, duration = await loop.run_in_executor(
                self._executor, self._collect, services)
        except Exception as exc:
            self.failures += 1
            log.warning("metrics_sample_failed", error_type=type(exc).__name__)
            return None
        self._seq += 1
        snapshot = Snapshot(seq=self._seq, host=host, services=samples, duration=duration)
        self.latest = snapshot
        self._record(snapshot, row)
        for listener in self._listeners:
            try:
                await listener(snapshot)
            except Exception as exc:
                log.warning("metrics_listener_failed", error_type=type(exc).__name__)
        return snapshot

    def _record(self, snapshot: Snapshot, row: tuple[tuple[str, ...], list[float]]) -> None:
        ids = {s.service.service_id for s in snapshot.services}
        gone = self._service_ids - ids
        if gone:
            self.history.forget(service_key(sid, name) for sid in gone for name in SERVICE_SERIES)
        self._service_ids = ids
        self.history.append_row(snapshot.host.timestamp, *row)

    async def run(self) -> None:
        """Sample every ``interval`` seconds until cancelled, at multiples of the interval on
        the loop's clock (``agent.timers``: the wake-up is shared with the other
        periodic timers). A sample that runs late skips the ticks it missed."""
        loop = asyncio.get_running_loop()
        while True:
            await sleep_until(next_multiple(loop.time(), self.interval))
            await self.tick()

    def start(self) -> None:
        """Start the timer (``run`` as a task)."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="metrics-sampler")

    async def stop(self) -> None:
        """Stop the timer; ``tick`` still works (tests drive the sampler by hand this way)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def close(self) -> None:
        """Release the sampler's thread (waits for a sample in progress) and the files its
        readers keep open."""
        self._executor.shutdown(wait=True)
        self._processes.close()
        close_reader = getattr(self._reader, "close", None)
        if callable(close_reader):
            close_reader()
