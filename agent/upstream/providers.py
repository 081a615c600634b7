"""What the periodic ``update`` message reports, behind replaceable callables.

``UpstreamProviders`` holds three async callables: instance status, services and a metrics
summary. The defaults report what the agent itself knows (uptime, version, host metrics from
psutil, no services); whoever owns the supervisor or the metrics sampler replaces them before
the app starts::

    link = app[UPSTREAM_KEY]
    link.providers = dataclasses.replace(link.providers, services=supervisor.summaries)

A provider that raises or takes longer than ``PROVIDER_TIMEOUT`` is reported as
``{"error": "..."}`` for that part; it never stops the link.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil

from agent import __version__
from agent.clock import Clock
from agent.records import record

__all__ = ["PROVIDER_TIMEOUT", "UpstreamProviders", "collect", "default_providers"]

PROVIDER_TIMEOUT = 10.0

StatusProvider = Callable[[], Awaitable[dict[str, Any]]]
ServicesProvider = Callable[[], Awaitable[list[dict[str, Any]]]]
MetricsProvider = Callable[[], Awaitable[dict[str, Any]]]


@record
class UpstreamProviders:
    """The three parts of an ``update``."""

    status: StatusProvider
    services: ServicesProvider
    metrics: MetricsProvider


def _host_metrics(state_dir: Path) -> dict[str, Any]:
    memory = psutil.virtual_memory()
    disk = psutil.disk_usage(str(state_dir))
    load1, load5, load15 = os.getloadavg()
    return {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "cpu_count": psutil.cpu_count() or 0,
        "load_average": [round(load1, 2), round(load5, 2), round(load15, 2)],
        "memory_total_bytes": memory.total,
        "memory_used_percent": memory.percent,
        "disk_total_bytes": disk.total,
        "disk_used_percent": disk.percent,
    }


def default_providers(clock: Clock, started_at: float, state_dir: Path) -> UpstreamProviders:
    """Providers that need nothing but the agent itself; ``started_at`` is monotonic."""

    async def status() -> dict[str, Any]:
        return {"state": "running", "version": __version__,
                "uptime_seconds": round(clock.monotonic() - started_at, 3)}

    async def services() -> list[dict[str, Any]]:
        return []

    async def metrics() -> dict[str, Any]:
        # psutil reads /proc: off the event loop.
        return await asyncio.to_thread(_host_metrics, state_dir)

    return UpstreamProviders(status=status, services=services, metrics=metrics)


async def collect(providers: UpstreamProviders) -> dict[str, Any]:
    """The three parts, gathered concurrently; a failing part becomes ``{"error": ...}``."""

    async def guarded(name: str, provider: Callable[[], Awaitable[Any]]) -> Any:
        try:
            async with asyncio.timeout(PROVIDER_TIMEOUT):
                return await provider()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return {"error": f"{name} unavailable ({type(exc).__name__})"}

    status, services, metrics = await asyncio.gather(
        guarded("status", providers.status), guarded("services", providers.services),
        guarded("metrics", providers.metrics))
    return {"status": status, "services": services, "metrics": metrics}
