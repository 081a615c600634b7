"""The agent's configuration: one frozen pydantic model.

Sources, later ones winning:

1. the embedded defaults below (enough to run with no file at all);
2. a TOML file (``dployr-agent serve --config PATH``);
3. environment variables ``DPLOYR_<SECTION>__<KEY>``, e.g. ``DPLOYR_SERVER__LISTEN=127.0.0.1:7999``.
   A value is read as a TOML value when it parses as one (``60``, ``true``, ``["/srv"]``),
   otherwise as a plain string.

Every model forbids unknown keys, so a misspelled key stops the start with a ``ConfigError``
naming it. Nothing here reads the environment at import time: ``load_config`` is the only entry.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "AgentConfig",
    "ConfigError",
    "load_config",
    "parse_listen",
]

ENV_PREFIX = "DPLOYR_"


class ConfigError(Exception):
    """The configuration cannot be used; the message is one line naming the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6) into its parts; raise ValueError if malformed."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError("expected host:port, for example 127.0.0.1:7879")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError("port must be between 0 and 65535")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 - ":80" means every address, as in nginx
    return host, port


class ServerConfig(_Section):
    """The API listener."""

    listen: str = "127.0.0.1:7879"
    trusted_proxies: tuple[str, ...] = ()
    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=64 * 1_048_576)
    shutdown_timeout: float = Field(default=10.0, gt=0, le=300)
    keepalive_timeout: float = Field(default=75.0, gt=0, le=3600)

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            ipaddress.ip_network(item, strict=False)
        return value


class StateConfig(_Section):
    """Where the agent keeps its database, secrets and app files."""

    dir: Path = Path(".dployr-state")


class AuthConfig(_Section):
    """Login, tokens and password hashing."""

    access_token_ttl: int = Field(default=3600, ge=60, le=86_400)
    refresh_token_ttl: int = Field(default=30 * 86_400, ge=300, le=365 * 86_400)
    login_attempts_per_account: int = Field(default=10, ge=1, le=10_000)
    login_window_seconds: int = Field(default=900, ge=1, le=86_400)
    password_min_length: int = Field(default=8, ge=1, le=1024)
    hash_time_cost: int = Field(default=3, ge=1, le=20)
    hash_memory_kib: int = Field(default=65_536, ge=8, le=4_194_304)
    hash_parallelism: int = Field(default=2, ge=1, le=64)
    hash_concurrency: int = Field(default=2, ge=1, le=64)


class RateLimitConfig(_Section):
    """Requests allowed per hour, per principal (authenticated) or client address."""

    enabled: bool = True
    authenticated_per_hour: int = Field(default=1000, ge=1, le=10_000_000)
    unauthenticated_per_hour: int = Field(default=60, ge=1, le=10_000_000)
    max_tracked_clients: int = Field(default=100_000, ge=100, le=10_000_000)


class LoggingConfig(_Section):
    """The agent's own log, on stderr."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"
    access_log: bool = True


class InstanceConfig(_Section):
    """How this instance describes itself."""

    name: str = ""
    labels: dict[str, str] = Field(default_factory=dict)


class ServicesConfig(_Section):
    """Supervised apps: where they may come from and how their logs are kept."""

    allowed_local_roots: tuple[Path, ...] = ()
    log_max_bytes: int = Field(default=10 * 1_048_576, ge=4096, le=1 << 40)
    log_max_files: int = Field(default=5, ge=1, le=1000)
    build_timeout: float = Field(default=600.0, gt=0, le=86_400)
    startup_seconds: float = Field(default=1.0, ge=0, le=600)
    wait_timeout: float = Field(default=60.0, gt=0, le=3600)
    env_value_max_bytes: int = Field(default=32_768, ge=1, le=1_048_576)
    env_max_vars: int = Field(default=500, ge=1, le=10_000)
    stats_max_age: float = Field(default=1.0, ge=0, le=3600)


class AgentConfig(_Section):
    """The whole configuration. Frozen: it never changes while the agent runs."""

    server: ServerConfig = ServerConfig()
    state: StateConfig = StateConfig()
    auth: AuthConfig = AuthConfig()
    ratelimit: RateLimitConfig = RateLimitConfig()
    logging: LoggingConfig = LoggingConfig()
    instance: InstanceConfig = InstanceConfig()
    services: ServicesConfig = ServicesConfig()


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    overrides: dict[str, dict[str, Any]] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].partition("__")
        overrides.setdefault(section.lower(), {})[key.lower()] = _parse_env_value(raw)
    return overrides


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _merge(base: dict[str, Any], overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    merged = dict(base)
    for section, values in overrides.items():
        current = merged.get(section)
        merged[section] = {**current, **values} if isinstance(current, dict) else values
    return merged


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    return f"bad value for '{key}': {first['msg']}"


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Build the configuration from defaults, an optional TOML file and the environment.

    Raises ConfigError with a one-line message naming the offending key or file.
    """
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    data = _merge(data, _env_overrides(environ))
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        source = f" in {path}" if path is not None else ""
        raise ConfigError(f"config error{source}: {_describe(exc)}") from None
