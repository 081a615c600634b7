"""``DockerEngine``: the one Docker client of the agent, its threads, and whether it answers.

The client is created lazily, on the first call, so the agent starts (and everything but
Docker works) on a host where Docker is not installed or not running. Every SDK call runs in
a thread of the engine's own pools, never on the event loop:

- ``call(fn)`` runs ``fn(client)`` on the API pool (a few threads: creates, starts, kills,
  inspects);
- ``call(fn, pool="stats")`` on the stats pool (one-shot stats may wait a second each on the
  engine; they never delay a start or a stop), ``pool="build"`` for image builds;
- log streams run on threads of their own (they block for as long as they last).

A failure to reach the engine (socket missing, connection refused or reset, permission
denied, no answer in time) is the one thing translated here: it marks the engine
*unavailable* and raises ``agent.errors.RuntimeUnavailable`` (503 ``runtime_unavailable``)
with a message that says what to check. Any other error of the engine (``docker.errors``:
no such container, conflict...) reaches the caller as it is. A monitor task pings the engine
(``ping_interval`` while it answers, ``retry_interval`` while it does not); listeners hear
every change between available and unavailable, so a runtime can re-sync when it comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import math
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

import structlog

from agent.clock import Clock
from agent.config import DockerConfig
from agent.docker.sdk import docker, requests
from agent.errors import RuntimeUnavailable
from agent.timers import sleep_interval

__all__ = ["DockerEngine", "EngineDown", "describe_failure"]

log = structlog.get_logger("agent.docker")
T = TypeVar("T")

_PING_TIMEOUT = 3.0     # seconds a ping may take before the engine counts as not answering
_FRESH = 0.5            # seconds a successful call vouches for the engine (no ping needed)
_UNWANTED_INTERVAL = 30.0  # seconds between looks while no service uses Docker
_API_THREADS = 8
_BUILD_THREADS = 4
_POOL_SIZE = 512        # idle HTTP connections kept (log streams hold one each while open)
_DEFAULT_HOST = "unix:///var/run/docker.sock"


def _close_failed_unix_connects() -> None:
    """docker-py 7 leaves the socket of a failed unix connect to the garbage collector (a
    ResourceWarning each time dockerd is down); close it instead. Idempotent."""
    cls: Any = docker.transport.unixconn.UnixHTTPConnection
    if getattr(cls.connect, "dployr_closes_on_failure", False):
        return

    def connect(self: Any) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_socket)
        except BaseException:
            sock.close()
            raise
        self.sock = sock

    connect.dployr_closes_on_failure = True  # type: ignore[attr-defined]
    cls.connect = connect


class EngineDown(Exception):
    """Raised in a worker thread: the engine could not be reached. ``str()`` says why."""


_ERRNO_HINTS = {
    errno.ENOENT: "no such socket (is Docker installed and dockerd running?)",
    errno.ECONNREFUSED: "connection refused (is dockerd running?)",
    errno.EACCES: "permission denied (is the agent's user in the docker group?)",
    errno.EPERM: "permission denied (is the agent's user in the docker group?)",
    errno.ECONNRESET: "connection reset by the engine",
    errno.EPIPE: "connection closed by the engine",
}


def describe_failure(exc: BaseException) -> str:
    """Why a connection to the engine failed, in words an operator can act on."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, requests.Timeout | TimeoutError):
            return "the engine did not answer in time"
        if isinstance(current, OSError) and current.errno in _ERRNO_HINTS:
            return _ERRNO_HINTS[current.errno]
        stack.extend(arg for arg in current.args if isinstance(arg, BaseException))
        for linked in (current.__cause__, current.__context__,
                       getattr(current, "reason", None)):
            if isinstance(linked, BaseException):
                stack.append(linked)
    return "the engine cannot be reached"


def _is_connection_failure(exc: BaseException) -> bool:
    if isinstance(exc, requests.ConnectionError | requests.Timeout | ConnectionError):
        return True
    if isinstance(exc, FileNotFoundError | PermissionError):
        return True
    # The SDK wraps a failed version negotiation in a bare DockerException.
    return (type(exc) is docker.errors.DockerException
            and "Error while fetching server API version" in str(exc))


class DockerEngine:
    """The agent's Docker client, thread pools and availability. See the module docstring."""

    def __init__(self, config: DockerConfig, *, clock: Clock) -> None:
        self._config = config
        self._clock = clock
        self._client: docker.DockerClient | None = None
        self._client_lock = threading.Lock()
        self._api_pool = ThreadPoolExecutor(_API_THREADS, thread_name_prefix="docker-api")
        self._stats_pool = ThreadPoolExecutor(config.stats_concurrency,
                                              thread_name_prefix="docker-stats")
        self._build_pool = ThreadPoolExecutor(_BUILD_THREADS, thread_name_prefix="docker-build")
        self._available: bool | None = None   # None: not asked yet
        self._reason = "the Docker engine has not been contacted yet"
        self._listeners: list[Callable[[bool], None]] = []
        self._monitor: asyncio.Task[None] | None = None
        self._wanted: Callable[[], bool] = lambda: False
        self._closed = False
        self._last_ok = -1e9    # monotonic time of the last call that reached the engine
        self._pings: set[asyncio.Task[bool]] = set()

    # -- state -------------------------------------------------------------------------------

    @property
    def available(self) -> bool | None:
        """True when the last contact succeeded, False when it failed, None before any."""
        return self._available

    @property
    def address(self) -> str:
        """Where the engine is expected (for messages)."""
        return self._config.host or self._env_host() or _DEFAULT_HOST

    @staticmethod
    def _env_host() -> str:
        return str(docker.utils.kwargs_from_env().get("base_url") or "")

    @property
    def message(self) -> str:
        """Why the engine is unavailable, as shown to API clients and in the instance status."""
        return f"The Docker engine at {self.address} is not available: {self._reason}"

    def unavailable(self) -> RuntimeUnavailable:
        """The 503 to raise while the engine is unavailable."""
        return RuntimeUnavailable(self.message, details={"runtime": "docker",
                                                          "reason": self._reason})

    def add_listener(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(available)`` on the loop at each change of availability."""
        self._listeners.append(listener)

    def set_wanted(self, wanted: Callable[[], bool]) -> None:
        """The monitor pings only while ``wanted()`` (e.g. while Docker services exist)."""
        self._wanted = wanted

    def _set(self, available: bool, reason: str | None = None) -> None:
        if reason is not None:
            self._reason = reason
        if self._available is available:
            return
        previous, self._available = self._available, available
        if available:
            log.info("docker_available", host=self.address)
        else:
            log.warning("docker_unavailable", host=self.address, reason=self._reason)
        if previous is None and available:
            return  # the first contact is not a recovery
        for listener in list(self._listeners):
            try:
                listener(available)
            except Exception as exc:  # one listener's failure must not hide the change
                log.error("docker_listener_failed", error_type=type(exc).__name__)

    def report_failure(self, reason: str) -> None:
        """A stream or thread lost the engine: check now instead of at the next ping."""
        if self._available is not False and self._monitor is not None and not self._closed:
            task = asyncio.get_running_loop().create_task(self.ping())
            self._pings.add(task)
            task.add_done_callback(self._pings.discard)
        log.debug("docker_stream_lost", reason=reason)

    # -- the client and calls ----------------------------------------------------------------

    def _connect_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(docker.utils.kwargs_from_env())
        if self._config.host:
            kwargs["base_url"] = self._config.host
        kwargs.setdefault("base_url", _DEFAULT_HOST)
        return kwargs

    def client(self) -> docker.DockerClient:
        """The shared client (created on first use). Call only from a worker thread."""
        with self._client_lock:
            if self._client is None:
                _close_failed_unix_connects()
                self._client = docker.DockerClient(
                    version=self._config.api_version, timeout=math.ceil(self._config.timeout),
                    max_pool_size=_POOL_SIZE, **self._connect_kwargs())
            return self._client

    def new_api_client(self, *, timeout: float | None = None) -> docker.APIClient:
        """A client of its own (for a build that must be cancellable). Worker thread only."""
        _close_failed_unix_connects()
        return docker.APIClient(version=self._config.api_version,
                                timeout=math.ceil(timeout or self._config.timeout),
                                **self._connect_kwargs())

    def _invoke(self, fn: Callable[[docker.DockerClient], T]) -> T:
        try:
            return fn(self.client())
        except Exception as exc:
            if _is_connection_failure(exc):
                raise EngineDown(describe_failure(exc)) from None
            raise

    async def call(self, fn: Callable[[docker.DockerClient], T], *,
                   pool: Literal["api", "stats", "build"] = "api") -> T:
        """``fn(client)`` in a worker thread. Raises RuntimeUnavailable when the engine cannot
        be reached (and marks it unavailable); other engine errors pass through."""
        if self._closed:
            raise self.unavailable()
        executor = {"api": self._api_pool, "stats": self._stats_pool,
                    "build": self._build_pool}[pool]
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                executor, self._invoke, fn)
        except EngineDown as exc:
            self._set(False, str(exc))
            raise self.unavailable() from None
        self._last_ok = self._clock.monotonic()
        self._set(True)
        return result

    async def ping(self) -> bool:
        """Ask the engine whether it answers (bounded by a short timeout); update the state."""

        def _ping(client: docker.DockerClient) -> bool:
            api = client.api
            resp = api.get(f"{api.base_url}/_ping", timeout=_PING_TIMEOUT)
            return bool(resp.status_code == 200)

        try:
            ok = await self.call(_ping)
        except RuntimeUnavailable:
            return False
        except Exception as exc:  # a proxy in the way, a broken engine: not usable either
            self._set(False, f"unexpected answer ({type(exc).__name__})")
            return False
        if not ok:
            self._set(False, "the engine answered its ping with an error")
        return ok

    async def ensure(self) -> None:
        """Raise RuntimeUnavailable unless the engine answers: it did within the last
        ``_FRESH`` seconds, or it answers a ping now (about a millisecond on a local socket).
        Called before every command on a Docker service."""
        if self._available and self._clock.monotonic() - self._last_ok < _FRESH:
            return
        if not await self.ping():
            raise self.unavailable()

    # -- lifetime ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the monitor (inside the running loop)."""
        if self._monitor is None:
            self._monitor = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            interval = (self._config.retry_interval if self._available is False
                        else self._config.ping_interval)
            if not self._wanted():
                # No Docker service: only look now and then whether one came (a command on
                # a Docker service pings first anyway when the last answer is stale).
                interval = max(interval, _UNWANTED_INTERVAL)
            await sleep_interval(interval)
            if self._wanted():
                await self.ping()

    async def close(self) -> None:
        """Stop the monitor, wait for calls in flight, close the client."""
        self._closed = True
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        self._api_pool.shutdown(wait=True, cancel_futures=True)
        self._stats_pool.shutdown(wait=True, cancel_futures=True)
        self._build_pool.shutdown(wait=False, cancel_futures=True)
        with self._client_lock:
            if self._client is not None:
                with contextlib.suppress(Exception):
                    self._client.close()
                self._client = None
