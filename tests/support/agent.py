"""Helpers to build configs, wait on conditions, and run a real ``dployr-agent serve`` process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from agent.config import AgentConfig

T = TypeVar("T")

ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "admin-password-1"

# Cheap argon2 parameters: tests check behaviour, not hashing cost.
FAST_HASH_ENV = {
    "DPLOYR_AUTH__HASH_TIME_COST": "1",
    "DPLOYR_AUTH__HASH_MEMORY_KIB": "64",
    "DPLOYR_AUTH__HASH_PARALLELISM": "1",
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_config(state_dir: Path, **sections: dict[str, Any]) -> AgentConfig:
    """A config for tests: state in ``state_dir``, fast hashing, quiet access log.

    ``sections`` override keys, e.g. ``make_config(p, ratelimit={"unauthenticated_per_hour": 5})``.
    """
    data: dict[str, dict[str, Any]] = {
        "state": {"dir": str(state_dir)},
        "auth": {"hash_time_cost": 1, "hash_memory_kib": 64, "hash_parallelism": 1},
        "logging": {"access_log": False},
        # Probing node/python/go/docker costs four processes per app; tests that need it
        # turn it back on or inject a detector.
        "metrics": {"detect_runtimes": False},
        "proxy": {"listen": "127.0.0.1:0"},  # never the shared default 127.0.0.1:8080
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return AgentConfig.model_validate(data)


def wait_until(predicate: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.02,
               message: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


async def eventually(predicate: Callable[[], Awaitable[T]], *, timeout: float = 10.0,
                     interval: float = 0.02, message: str = "condition") -> T:
    """Async ``wait_until``: await ``predicate`` until truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(interval)


@dataclass
class LiveAgent:
    """A real ``dployr-agent serve`` subprocess on a free port."""

    state_dir: Path
    port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    config_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DPLOYR_")}
        env.update(FAST_HASH_ENV)
        env.update({
            "DPLOYR_STATE__DIR": str(self.state_dir),
            "DPLOYR_SERVER__LISTEN": f"127.0.0.1:{self.port}",
            "DPLOYR_ADMIN_EMAIL": ADMIN_EMAIL,
            "DPLOYR_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "DPLOYR_PROXY__LISTEN": "127.0.0.1:0",
        })
        env.update(self.extra_env)
        return env

    def start(self, *, wait: bool = True) -> LiveAgent:
        """Start the agent and (by default) wait until /v1/health answers."""
        self.log_path = self.state_dir.parent / f"agent-{self.port}.log"
        args = [sys.executable, "-m", "agent", "serve"]
        if self.config_path is not None:
            args += ["--config", str(self.config_path)]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(args, env=self.env(), stdout=log, stderr=log)
        if wait:
            wait_until(self.healthy, timeout=30, message="the agent to answer /v1/health")
        return self

    def healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"the agent exited with {self.process.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(f"{self.url}/v1/health", timeout=1) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def kill(self, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` and wait for the process to end; return its exit code."""
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill(signal.SIGTERM)

    def request(self, method: str, path: str, *, token: str | None = None,
                body: Any = None) -> tuple[int, dict[str, str], Any]:
        """A blocking JSON request: (status, headers, decoded body or text)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, headers, raw = resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as err:
            status, headers, raw = err.code, dict(err.headers), err.read()
        try:
            return status, headers, json.loads(raw) if raw else None
        except ValueError:
            return status, headers, raw.decode(errors="replace")

    def login(self, email: str = ADMIN_EMAIL, password: str = ADMIN_PASSWORD) -> str:
        status, _, body = self.request("POST", "/v1/auth/login",
                                       body={"email": email, "password": password})
        assert status == 200, body
        return str(body["access_token"])
