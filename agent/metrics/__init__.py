"""Host and per-service metrics: a sampler on a timer, in-memory history, Prometheus.

Nothing here imports aiohttp; the API modules read the sampler's cache.
"""

from agent.metrics.history import History, HistoryPlan, Series
from agent.metrics.prometheus import AgentMetrics, SnapshotCollector
from agent.metrics.psutil_reader import PsutilHostReader
from agent.metrics.readings import HostReader, HostReading
from agent.metrics.sampler import Sampler
from agent.metrics.snapshot import HostSample, ServiceSample, Snapshot
from agent.metrics.sources import (
    ContainerUsageSource,
    HealthContributor,
    HealthReason,
    NoServices,
    ProxyState,
    ProxyStateSource,
    ServiceProcess,
    ServiceSource,
    ServiceUsage,
)

__all__ = [
    "AgentMetrics",
    "ContainerUsageSource",
    "HealthContributor",
    "HealthReason",
    "History",
    "HistoryPlan",
    "HostReader",
    "HostReading",
    "HostSample",
    "NoServices",
    "ProxyState",
    "ProxyStateSource",
    "PsutilHostReader",
    "Sampler",
    "Series",
    "ServiceProcess",
    "ServiceSample",
    "ServiceSource",
    "ServiceUsage",
    "Snapshot",
    "SnapshotCollector",
]
