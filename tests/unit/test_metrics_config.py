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


def test_example_config_documents_every_metrics_key_with_its_default() -> None:
    """config.example.toml lists each [metrics] key, commented out, with the real default."""
    import tomllib
    from pathlib import Path

    text = (Path(__file__).parents[2] / "config.example.toml").read_text()
    section = text.split("[metrics]", 1)[1].split("\n[", 1)[0]
    lines = [line[2:] for line in section.splitlines() if line.startswith("# ") and " = " in line]
    documented = tomllib.loads("\n".join(lines))
    defaults = AgentConfig().metrics.model_dump(mode="json")
    assert set(documented) == set(defaults)
    assert {k: (list(v) if isinstance(v, tuple) else v) for k, v in documented.items()} == defaults
