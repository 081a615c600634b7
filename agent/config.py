"""The agent's configuration: one frozen pydantic model.

Sources, later ones winning:

1. the embedded defaults below (enough to run with no file at all);
2. a TOML file (``dployr-agent serve --config PATH``);
3. environment variables ``DPLOYR_<SECTION>__<KEY>``, e.g. ``DPLOYR_SERVER__LISTEN=127.0.0.1:7999``.
   The value is read according to the key's type: text and paths are taken as they are;
   other values are read as a TOML value when they parse as one (``60``, ``true``,
   ``["/srv"]``, ``{ region = "eu" }``), and a list may also be given comma-separated
   (``10.0.0.0/8,192.168.0.0/16``). Pydantic then coerces and validates as for the file.

Every model forbids unknown keys, so a misspelled key stops the start with a ``ConfigError``
naming it. Nothing here reads the environment at import time: ``load_config`` is the only entry.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "AgentConfig",
    "ConfigError",
    "DeployConfig",
    "DockerConfig",
    "ProxyConfig",
    "RuntimeConfig",
    "load_config",
    "parse_duration",
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


def _listen_address(value: str) -> str:
    parse_listen(value)
    return value


def _networks(value: tuple[str, ...]) -> tuple[str, ...]:
    for item in value:
        ipaddress.ip_network(item, strict=False)
    return value


#: ``host:port`` (see ``parse_listen``); a list of IP networks (``10.0.0.0/8``, ``::1``).
ListenAddress = Annotated[str, AfterValidator(_listen_address)]
Networks = Annotated[tuple[str, ...], AfterValidator(_networks)]


class ServerConfig(_Section):
    """The API listener."""

    listen: ListenAddress = "127.0.0.1:7879"
    trusted_proxies: Networks = ()
    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=64 * 1_048_576)
    shutdown_timeout: float = Field(default=10.0, gt=0, le=300)
    keepalive_timeout: float = Field(default=75.0, gt=0, le=3600)
    header_timeout: float = Field(default=10.0, gt=0, le=3600)
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"


class StateConfig(_Section):
    """Where the agent keeps its database, secrets and app files."""

    dir: Path = Path(".dployr-state")


class AuthConfig(_Section):
    """Login, tokens and password hashing."""

    access_token_ttl: int = Field(default=3600, ge=60, le=86_400)
    refresh_token_ttl: int = Field(default=30 * 86_400, ge=300, le=365 * 86_400)
    login_attempts_per_account: int = Field(default=10, ge=1, le=10_000)
    login_window_seconds: int = Field(default=900, ge=1, le=86_400)
    password_min_length: int = Field(default=8, ge=8, le=1024)
    hash_time_cost: int = Field(default=3, ge=1, le=20)
    hash_memory_kib: int = Field(default=65_536, ge=8, le=4_194_304)
    hash_parallelism: int = Field(default=2, ge=1, le=64)
    hash_concurrency: int = Field(default=2, ge=1, le=64)


class RateLimitConfig(_Section):
    """Requests allowed per hour, per principal (authenticated) or client address."""

    enabled: bool = True
    authenticated_per_hour: int = Field(default=1000, ge=1, le=10_000_000)
    unauthenticated_per_hour: int = Field(default=60, ge=1, le=10_000_000)
    burst: int = Field(default=0, ge=0, le=10_000_000)
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
    startup_seconds: float = Field(default=1.0, ge=0, le=600)
    wait_timeout: float = Field(default=60.0, gt=0, le=3600)
    env_value_max_bytes: int = Field(default=32_768, ge=1, le=1_048_576)
    env_max_vars: int = Field(default=500, ge=1, le=10_000)
    stats_max_age: float = Field(default=1.0, ge=0, le=3600)


GitScheme = Literal["https", "ssh", "http", "git", "file"]


class DeployConfig(_Section):
    """The deploy pipeline: git sources, toolchains, builds and releases."""

    allowed_schemes: tuple[GitScheme, ...] = ("https", "ssh")
    clone_timeout: float = Field(default=300.0, gt=0, le=86_400)
    build_timeout: float = Field(default=1800.0, gt=0, le=86_400)
    keep_releases: int = Field(default=5, ge=1, le=1000)
    npm_registry: str = "https://registry.npmjs.org"
    provision_nodejs: bool = True
    toolchains_dir: str = ""
    max_concurrent_deploys: int = Field(default=2, ge=1, le=64)
    git_submodules: bool = False
    start_timeout: float = Field(default=60.0, gt=0, le=3600)

    @field_validator("npm_registry")
    @classmethod
    def _check_registry(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

class RuntimeConfig(_Section):
    """Which runtime runs apps that do not name one."""

    default: Literal["process", "docker"] = "process"


_DOCKER_SIZE = re.compile(r"[1-9][0-9]{0,9}[kmg]", re.ASCII)


class DockerConfig(_Section):
    """The Docker engine: where it is, how containers log and are measured."""

    host: str = ""
    api_version: str = Field(default="1.41", pattern=r"^1\.[0-9]{2}$")
    timeout: float = Field(default=60.0, gt=0, le=3600)
    ping_interval: float = Field(default=5.0, gt=0, le=3600)
    retry_interval: float = Field(default=1.0, gt=0, le=3600)
    log_max_size: str = "10m"
    log_max_file: int = Field(default=3, ge=1, le=100)
    init: bool = True
    stats_interval: float = Field(default=5.0, ge=0.5, le=3600)
    stats_concurrency: int = Field(default=32, ge=1, le=1024)
    pull_timeout: float = Field(default=600.0, gt=0, le=86_400)

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        if value and not value.startswith(("unix://", "tcp://", "ssh://", "npipe://")):
            raise ValueError("expected unix://, tcp:// or ssh:// (or empty for DOCKER_HOST)")
        return value

    @field_validator("log_max_size")
    @classmethod
    def _check_size(cls, value: str) -> str:
        if not _DOCKER_SIZE.fullmatch(value):
            raise ValueError("expected a size such as 512k, 10m or 1g")
        return value


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_DURATION = re.compile(r"[1-9][0-9]{0,6}[smhd]", re.ASCII)


def parse_duration(value: str) -> int:
    """Seconds in a duration such as ``30s``, ``5m``, ``1h`` or ``1d``; ValueError otherwise."""
    if not _DURATION.fullmatch(value):
        raise ValueError("expected a duration such as 30s, 5m, 1h or 1d")
    return int(value[:-1]) * _DURATION_UNITS[value[-1]]


class MetricsConfig(_Section):
    """The host and service metrics sampler, its history, and ``GET /metrics``."""

    interval: float = Field(default=5.0, ge=0.5, le=300)
    recent: str = "15m"
    history: str = "24h"
    history_resolution: str = "1m"
    token: str = ""
    allow: Networks = ("127.0.0.1/32", "::1/128")
    disk_degraded_percent: float = Field(default=90.0, gt=0, le=100)
    detect_runtimes: bool = True

    @field_validator("recent", "history", "history_resolution")
    @classmethod
    def _check_duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("token")
    @classmethod
    def _check_token(cls, value: str) -> str:
        if value and len(value) < 16:
            raise ValueError("a metrics token needs at least 16 characters")
        return value

    @model_validator(mode="after")
    def _check_sizes(self) -> MetricsConfig:
        recent, history = parse_duration(self.recent), parse_duration(self.history)
        resolution = parse_duration(self.history_resolution)
        if resolution < self.interval:
            raise ValueError("history_resolution must be at least the interval")
        if recent > history:
            raise ValueError("recent must not exceed history")
        if recent / self.interval > 20_000 or history / resolution > 20_000:
            raise ValueError("at most 20000 points per series: shorten recent/history "
                             "or lengthen interval/history_resolution")
        return self

class WebhooksConfig(_Section):
    """Outgoing webhooks: which targets are allowed, delivery limits and the retry schedule.

    Attempt ``n`` (n >= 2) waits ``min(retry_max_delay, retry_base_delay * 3 ** (n - 2))``
    seconds after attempt ``n - 1``, +-20 % jitter; with the defaults 14 attempts span about
    69 hours (see docs/api.md).
    """

    allow_private_targets: bool = False
    require_https: bool = False
    timeout: float = Field(default=15.0, gt=0, le=300)
    max_response_bytes: int = Field(default=65_536, ge=0, le=16 * 1_048_576)
    max_attempts: int = Field(default=14, ge=1, le=100)
    retry_base_delay: float = Field(default=10.0, gt=0, le=86_400)
    retry_max_delay: float = Field(default=43_200.0, gt=0, le=7 * 86_400)
    concurrency: int = Field(default=16, ge=1, le=1000)
    per_hook_concurrency: int = Field(default=2, ge=1, le=100)
    retention_days: int = Field(default=30, ge=1, le=3650)


class UpstreamConfig(_Section):
    """The outbound WebSocket link to a control plane; enabled when ``url`` is set."""

    url: str = ""
    token: SecretStr = SecretStr("")
    ca_file: Path | None = None
    heartbeat: float = Field(default=30.0, gt=0, le=3600)
    update_interval: float = Field(default=30.0, gt=0, le=86_400)
    reconnect_min_delay: float = Field(default=1.0, gt=0, le=3600)
    reconnect_max_delay: float = Field(default=60.0, gt=0, le=86_400)
    task_concurrency: int = Field(default=8, ge=1, le=1000)
    task_timeout: float = Field(default=300.0, gt=0, le=86_400)
    max_task_response_bytes: int = Field(default=1_048_576, ge=1024, le=64 * 1_048_576)
    task_retention_days: int = Field(default=7, ge=1, le=3650)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if value and not value.startswith(("ws://", "wss://")):
            raise ValueError("must start with ws:// or wss://")
        return value

    @field_validator("ca_file", mode="before")
    @classmethod
    def _empty_ca_file(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def enabled(self) -> bool:
        """Whether the link runs at all."""
        return bool(self.url)


class ProxyConfig(_Section):
    """Proxy routes: which reverse proxy serves them and how it reaches the apps."""

    backend: Literal["builtin", "caddy"] = "builtin"
    listen: ListenAddress = "127.0.0.1:8080"
    trusted_proxies: Networks = ()
    connect_timeout: float = Field(default=5.0, gt=0, le=300)
    read_timeout: float = Field(default=60.0, gt=0, le=86_400)
    max_connections_per_upstream: int = Field(default=256, ge=0, le=100_000)
    upstream_keepalive_timeout: float = Field(default=30.0, gt=0, le=3600)
    websocket_max_message_bytes: int = Field(default=16 * 1_048_576, ge=1024, le=1 << 30)
    caddy_admin: str = "http://127.0.0.1:2019"
    caddy_listen: tuple[str, ...] = ("127.0.0.1:8080",)
    caddy_server_name: str = Field(default="dployr", pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    caddy_poll_interval: float = Field(default=5.0, gt=0, le=3600)
    caddy_reload_settle: float = Field(default=0.5, ge=0, le=60)
    https: bool = False
    acme_email: str = Field(default="", max_length=254)
    acme_staging: bool = False

    @field_validator("caddy_listen")
    @classmethod
    def _check_caddy_listen(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one address is needed")
        for item in value:
            parse_listen(item)
        return value

    @field_validator("caddy_admin")
    @classmethod
    def _check_admin(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        if scheme not in ("http", "https") or not sep or not rest.strip("/"):
            raise ValueError("expected an http URL, for example http://127.0.0.1:2019")
        return value.rstrip("/")

    @field_validator("acme_email")
    @classmethod
    def _check_email(cls, value: str) -> str:
        if value and ("@" not in value or any(c.isspace() for c in value)):
            raise ValueError("expected an email address")
        return value


class AgentConfig(_Section):
    """The whole configuration. Frozen: it never changes while the agent runs."""

    server: ServerConfig = ServerConfig()
    state: StateConfig = StateConfig()
    auth: AuthConfig = AuthConfig()
    ratelimit: RateLimitConfig = RateLimitConfig()
    logging: LoggingConfig = LoggingConfig()
    instance: InstanceConfig = InstanceConfig()
    services: ServicesConfig = ServicesConfig()
    deploy: DeployConfig = DeployConfig()
    metrics: MetricsConfig = MetricsConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    proxy: ProxyConfig = ProxyConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    docker: DockerConfig = DockerConfig()


def _env_overrides(environ: Mapping[str, str]) -> tuple[dict[str, dict[str, Any]],
                                                       dict[tuple[str, str], str]]:
    """The overrides found in ``environ``, and which variable set each (section, key)."""
    overrides: dict[str, dict[str, Any]] = {}
    sources: dict[tuple[str, str], str] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].partition("__")
        section, key = section.lower(), key.lower()
        overrides.setdefault(section, {})[key] = _parse_env_value(raw, _annotation(section, key))
        sources[(section, key)] = name
    return overrides, sources


def _annotation(section: str, key: str) -> Any:
    """The declared type of ``section.key``, or None for a key that does not exist."""
    field = AgentConfig.model_fields.get(section)
    model = field.annotation if field is not None else None
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None
    entry = model.model_fields.get(key)
    return entry.annotation if entry is not None else None


def _parse_env_value(raw: str, annotation: Any) -> Any:
    if annotation in (str, Path) or get_origin(annotation) is Literal:
        # "123" or "true" stays text where text is expected; a TOML string ("x") is unquoted.
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
            try:
                quoted = tomllib.loads(f"v = {raw}")["v"]
            except tomllib.TOMLDecodeError:
                return raw
            return quoted if isinstance(quoted, str) else raw
        return raw
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    if get_origin(annotation) is tuple and isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def _merge(base: dict[str, Any], overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    merged = dict(base)
    for section, values in overrides.items():
        current = merged.get(section)
        merged[section] = {**current, **values} if isinstance(current, dict) else values
    return merged


def _describe(error: ValidationError, sources: Mapping[tuple[str, str], str]) -> str:
    first = error.errors(include_url=False, include_input=False)[0]
    loc = tuple(str(part) for part in first["loc"])
    key = ".".join(loc) or "(top level)"
    if len(loc) >= 2:
        origin = sources.get((loc[0], loc[1]))
    else:  # a whole section, e.g. an unknown one: name any variable that set it
        origin = next((name for (section, _), name in sources.items() if loc and section == loc[0]),
                      None)
    where = f" (set by {origin})" if origin else ""
    if first["type"] == "extra_forbidden":
        return f"unknown key '{key}'{where}"
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"bad value for '{key}'{where}: {message}"


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
    overrides, sources = _env_overrides(environ)
    data = _merge(data, overrides)
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        source = f" in {path}" if path is not None else ""
        raise ConfigError(f"config error{source}: {_describe(exc, sources)}") from None
