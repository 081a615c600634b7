"""The [metrics] configuration section: defaults and the values it refuses."""

from __future__ import annotations

import pytest

from agent.config import AgentConfig, ConfigError, load_config


def test_defaults() -> None:
    """Five-second samples, 15 minutes at full resolution, a day at one minute, loopback."""
    metrics = AgentConfig().metrics
    assert metrics.interval == 5.0
    assert (metrics.recent, metrics.history, metrics.history_resolution) == ("15m", "24h", "1m")
    assert metrics.allow == ("127.0.0.1/32", "::1/128") and metrics.token == ""
    assert metrics.disk_degraded_percent == 90.0 and metrics.detect_runtimes


@pytest.mark.parametrize(("key", "value", "says"), [
    ("INTERVAL", "0.1", "metrics.interval"),
    ("HISTORY", '"1 day"', "metrics.history"),
    ("TOKEN", '"short"', "metrics.token"),
    ("ALLOW", '["not-a-network"]', "metrics.allow"),
    ("HISTORY_RESOLUTION", '"1s"', "history_resolution must be at least the interval"),
    ("RECENT", '"2d"', "recent must not exceed history"),
])
def test_bad_values_stop_the_start(key: str, value: str, says: str) -> None:
    """Each bad value is a ConfigError naming the key or the rule."""
    with pytest.raises(ConfigError) as caught:
        load_config(environ={f"DPLOYR_METRICS__{key}": value})
    assert says in str(caught.value)


def test_points_per_series_are_bounded() -> None:
    """A configuration that would keep more than 20000 points per series is refused."""
    with pytest.raises(ConfigError) as caught:
        load_config(environ={"DPLOYR_METRICS__INTERVAL": "1", "DPLOYR_METRICS__RECENT": '"1d"'})
    assert "20000" in str(caught.value)
