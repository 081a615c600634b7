"""Configuration: defaults, the TOML file, environment overrides, one-line errors, the example."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from agent.config import AgentConfig, ConfigError, load_config, parse_listen

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config.example.toml"
_KEY_LINE = re.compile(r"^# ([a-z_][a-z0-9_]*) = (.*)$")
_SECTION_LINE = re.compile(r"^\[([a-z_][a-z0-9_]*)\]$")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_need_nothing() -> None:
    """With no file and no environment the embedded defaults serve on loopback port 7879."""
    config = load_config(None, environ={})
    assert config == AgentConfig()
    assert config.server.listen == "127.0.0.1:7879"
    assert config.auth.access_token_ttl == 3600
    assert config.ratelimit.authenticated_per_hour == 1000
    assert config.ratelimit.unauthenticated_per_hour == 60
    assert config.state.dir == Path(".dployr-state")


def test_toml_file_values_are_used(tmp_path: Path) -> None:
    """Keys in the TOML file replace the defaults; unmentioned keys keep them."""
    path = _write(tmp_path, '[server]\nlisten = "127.0.0.1:9000"\n[ratelimit]\n'
                            'authenticated_per_hour = 5\n[instance]\nlabels = { tier = "prod" }\n')
    config = load_config(path, environ={})
    assert config.server.listen == "127.0.0.1:9000"
    assert config.ratelimit.authenticated_per_hour == 5
    assert config.ratelimit.unauthenticated_per_hour == 60
    assert config.instance.labels == {"tier": "prod"}


def test_environment_overrides_file_and_coerces_types(tmp_path: Path) -> None:
    """DPLOYR_<SECTION>__<KEY> wins over the file, and values take the key's type."""
    path = _write(tmp_path, '[server]\nlisten = "127.0.0.1:9000"\n')
    env = {
        "DPLOYR_SERVER__LISTEN": "127.0.0.1:7999",
        "DPLOYR_STATE__DIR": "/srv/dployr-state",
        "DPLOYR_RATELIMIT__AUTHENTICATED_PER_HOUR": "250",
        "DPLOYR_RATELIMIT__ENABLED": "false",
        "DPLOYR_SERVER__SHUTDOWN_TIMEOUT": "2.5",
        "DPLOYR_SERVER__TRUSTED_PROXIES": '["10.0.0.0/8", "192.168.1.1"]',
        "DPLOYR_INSTANCE__NAME": "123",  # text stays text even when it looks like a number
        "DPLOYR_INSTANCE__LABELS": '{ region = "eu-west" }',
        "DPLOYR_LOGGING__LEVEL": "debug",
        "DPLOYR_ADMIN_EMAIL": "not-a-config-key@example.com",  # no "__": not a config key
    }
    config = load_config(path, environ=env)
    assert config.server.listen == "127.0.0.1:7999"
    assert config.state.dir == Path("/srv/dployr-state")
    assert config.ratelimit.authenticated_per_hour == 250
    assert config.ratelimit.enabled is False
    assert config.server.shutdown_timeout == 2.5
    assert config.server.trusted_proxies == ("10.0.0.0/8", "192.168.1.1")
    assert config.instance.name == "123"
    assert config.instance.labels == {"region": "eu-west"}
    assert config.logging.level == "debug"


def test_environment_list_may_be_comma_separated() -> None:
    """A list key accepts a comma-separated value from the environment."""
    config = load_config(None, environ={"DPLOYR_SERVER__TRUSTED_PROXIES": "10.0.0.0/8, ::1"})
    assert config.server.trusted_proxies == ("10.0.0.0/8", "::1")


def test_config_is_frozen() -> None:
    """The configuration cannot be changed once loaded."""
    config = AgentConfig()
    with pytest.raises(ValueError, match="frozen"):
        config.server.listen = "0.0.0.0:1"  # type: ignore[misc]


@pytest.mark.parametrize(("text", "env", "expected"), [
    ('[server]\nlistn = "127.0.0.1:1"\n', {}, "unknown key 'server.listn'"),
    ('[sever]\nlisten = "127.0.0.1:1"\n', {}, "unknown key 'sever'"),
    ('[server]\nlisten = "nowhere"\n', {}, "bad value for 'server.listen'"),
    ('[auth]\naccess_token_ttl = "soon"\n', {}, "bad value for 'auth.access_token_ttl'"),
    ("[auth]\naccess_token_ttl = 1\n", {}, "bad value for 'auth.access_token_ttl'"),
    ('[server]\ntrusted_proxies = ["not-a-net"]\n', {}, "bad value for 'server.trusted_proxies'"),
    ("", {"DPLOYR_SERVER__LISTN": "x"}, "unknown key 'server.listn' (set by DPLOYR_SERVER__LISTN)"),
    ("", {"DPLOYR_RATELIMIT__ENABLED": "maybe"},
     "bad value for 'ratelimit.enabled' (set by DPLOYR_RATELIMIT__ENABLED)"),
    ("", {"DPLOYR_LOGGING__LEVEL": "loud"}, "bad value for 'logging.level'"),
    ('[server]\nevent_loop = "trio"\n', {}, "bad value for 'server.event_loop'"),
    ("", {"DPLOYR_SEVER__LISTEN": "x"}, "unknown key 'sever' (set by DPLOYR_SEVER__LISTEN)"),
    ("server = [", {}, "is not valid TOML"),
])
def test_bad_config_is_one_line_naming_the_key(tmp_path: Path, text: str, env: dict[str, str],
                                                expected: str) -> None:
    """An unknown key or a bad value raises ConfigError with one line that names it."""
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text), environ=env)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_missing_file_is_reported(tmp_path: Path) -> None:
    """A config path that does not exist is a one-line ConfigError."""
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml", environ={})


@pytest.mark.parametrize(("value", "expected"), [
    ("127.0.0.1:7879", ("127.0.0.1", 7879)),
    ("[::1]:80", ("::1", 80)),
    (":8080", ("0.0.0.0", 8080)),
])
def test_parse_listen(value: str, expected: tuple[str, int]) -> None:
    """host:port and [v6]:port split into host and port."""
    assert parse_listen(value) == expected


def _example_keys() -> tuple[str, dict[str, dict[str, str]], list[str]]:
    """The example uncommented, its documented keys per section, and its problems."""
    text = EXAMPLE.read_text(encoding="utf-8")
    out: list[str] = []
    documented: dict[str, dict[str, str]] = {}
    problems: list[str] = []
    section = ""
    previous = ""
    for line in text.splitlines():
        if match := _SECTION_LINE.match(line):
            section = match[1]
            documented.setdefault(section, {})
            out.append(line)
        elif match := _KEY_LINE.match(line):
            documented.setdefault(section, {})[match[1]] = match[2]
            if not previous.startswith("# "):
                problems.append(f"{section}.{match[1]} has no comment line above it")
            out.append(f"{match[1]} = {match[2]}")
        else:
            out.append(line)
        previous = line
    return "\n".join(out) + "\n", documented, problems


def test_example_config_documents_every_key_with_its_default(tmp_path: Path) -> None:
    """config.example.toml, uncommented, loads to exactly the defaults and names every key."""
    uncommented, documented, problems = _example_keys()
    assert problems == []
    tomllib.loads(uncommented)  # valid TOML once uncommented
    assert load_config(_write(tmp_path, uncommented), environ={}) == AgentConfig()

    expected: dict[str, set[str]] = {}
    for name, field in AgentConfig.model_fields.items():
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        expected[name] = set(model.model_fields)
    found = {name: set(keys) for name, keys in documented.items()}
    missing = {f"{s}.{k}" for s, keys in expected.items() for k in keys - found.get(s, set())}
    extra = {f"{s}.{k}" for s, keys in found.items() for k in keys - expected.get(s, set())}
    assert missing == set(), f"keys not documented in config.example.toml: {sorted(missing)}"
    assert extra == set(), f"keys in config.example.toml that do not exist: {sorted(extra)}"
