"""Names of the history series and how each is read from a snapshot.

Host series are named after the JSON field they follow (``cpu_percent``,
``memory_used_bytes``, ``disk_percent:/var``...); a service's series are
``cpu_percent``, ``rss_bytes``, ``threads``, ``open_files`` and ``processes`` under
the key ``service:<service id>:<name>`` in the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from agent.metrics.snapshot import HostSample, ServiceSample

__all__ = ["SERVICE_SERIES", "RowBuilder", "host_series", "service_key", "service_keys",
           "service_series"]

SERVICE_SERIES = ("cpu_percent", "rss_bytes", "threads", "open_files", "processes")


_HOST_SERIES = ("cpu_percent", "load_1m", "load_5m", "load_15m", "memory_used_bytes",
                "memory_percent", "swap_used_bytes", "disk_read_bytes_per_second",
                "disk_write_bytes_per_second", "network_rx_bytes_per_second",
                "network_tx_bytes_per_second", "process_count")


def _host_values(host: HostSample) -> list[float]:
    """The values of ``_HOST_SERIES``, in that order."""
    return [host.cpu.percent, host.cpu.load_1m, host.cpu.load_5m, host.cpu.load_15m,
            float(host.memory.used), host.memory.percent, float(host.swap.used),
            host.disk_io.read_bytes_per_second, host.disk_io.write_bytes_per_second,
            host.network.rx_bytes_per_second, host.network.tx_bytes_per_second,
            float(host.process_count)]


def host_series(host: HostSample) -> dict[str, float]:
    """The host's values to keep in history (per-core CPU is left out to bound memory)."""
    values = dict(zip(_HOST_SERIES, _host_values(host), strict=True))
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


class RowBuilder:
    """Turns each snapshot into one history row: the series names and their values, in the
    order of ``host_series`` then each measured service's ``SERVICE_SERIES``.

    The names tuple is built again only when the disks or the measured services change, so
    ``History.append_row`` recognises it by identity. Not thread-safe: the sampler's thread
    uses it.
    """

    def __init__(self) -> None:
        self._key: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        self._names: tuple[str, ...] = ()
        self._unique = True

    def row(self, host: HostSample, samples: Sequence[ServiceSample]
            ) -> tuple[tuple[str, ...], list[float]]:
        """The names and values of ``host`` and ``samples`` (unmeasured services have none)."""
        measured = [s for s in samples if s.usage is not None]
        key = (tuple(d.mountpoint for d in host.disks),
               tuple(s.service.service_id for s in measured))
        if key != self._key:
            names = [*_HOST_SERIES, *(f"disk_percent:{m}" for m in key[0])]
            for service_id in key[1]:
                names.extend(service_keys(service_id))
            self._key, self._names = key, tuple(names)
            self._unique = len(set(names)) == len(names)
        if not self._unique:  # two disks on one mountpoint, or a service listed twice
            values = host_series(host)
            for sample in measured:
                values.update(service_series(sample))
            return tuple(values), list(values.values())
        row = _host_values(host)
        row.extend([d.percent for d in host.disks])
        for sample in measured:
            usage = sample.usage
            assert usage is not None
            row.extend((usage.cpu_percent, float(usage.rss_bytes), float(usage.threads),
                        float(usage.open_files), float(usage.processes)))
        return self._names, row
