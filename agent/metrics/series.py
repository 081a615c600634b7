"""Names of the history series and how each is read from a snapshot.

Host series are named after the JSON field they follow (``cpu_percent``,
``memory_used_bytes``, ``disk_percent:/var``...); a service's series are
``cpu_percent``, ``rss_bytes``, ``threads``, ``open_files`` and ``processes`` under
the key ``service:<service id>:<name>`` in the store.
"""

from __future__ import annotations

from functools import lru_cache

from agent.metrics.snapshot import HostSample, ServiceSample

__all__ = ["SERVICE_SERIES", "host_series", "service_key", "service_keys", "service_series"]

SERVICE_SERIES = ("cpu_percent", "rss_bytes", "threads", "open_files", "processes")


def host_series(host: HostSample) -> dict[str, float]:
    """The host's values to keep in history (per-core CPU is left out to bound memory)."""
    values = {
        "cpu_percent": host.cpu.percent,
        "load_1m": host.cpu.load_1m,
        "load_5m": host.cpu.load_5m,
        "load_15m": host.cpu.load_15m,
        "memory_used_bytes": float(host.memory.used),
        "memory_percent": host.memory.percent,
        "swap_used_bytes": float(host.swap.used),
        "disk_read_bytes_per_second": host.disk_io.read_bytes_per_second,
        "disk_write_bytes_per_second": host.disk_io.write_bytes_per_second,
        "network_rx_bytes_per_second": host.network.rx_bytes_per_second,
        "network_tx_bytes_per_second": host.network.tx_bytes_per_second,
        "process_count": float(host.process_count),
    }
    for disk in host.disks:
        values[f"disk_percent:{disk.mountpoint}"] = disk.percent
    return values


def service_key(service_id: str, name: str) -> str:
    """The store key of one service series."""
    return f"service:{service_id}:{name}"


@lru_cache(maxsize=8192)
def service_keys(service_id: str) -> tuple[str, ...]:
    """The store keys of a service's series, in ``SERVICE_SERIES`` order."""
    return tuple(service_key(service_id, name) for name in SERVICE_SERIES)


def service_series(sample: ServiceSample) -> dict[str, float]:
    """A service's values to keep (none while it is not measured: a gap in history)."""
    usage = sample.usage
    if usage is None:
        return {}
    cpu, rss, threads, files, processes = service_keys(sample.service.service_id)
    return {cpu: usage.cpu_percent, rss: float(usage.rss_bytes), threads: float(usage.threads),
            files: float(usage.open_files), processes: float(usage.processes)}
