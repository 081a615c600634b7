"""Helpers for the instance and metrics tests: apps with injected sources, real children."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from aiohttp.test_utils import TestClient
from pydantic import BaseModel

from agent.app import AdminSeed, create_app
from agent.clock import Clock
from agent.instance import InstanceService, RuntimeDetector, RuntimeInfo
from agent.keys import INSTANCE_KEY, SAMPLER_KEY
from agent.metrics import HostReader, Sampler, ServiceSource
from tests.conftest import bearer, login
from tests.support.agent import ADMIN_EMAIL, ADMIN_PASSWORD, make_config

M = TypeVar("M", bound=BaseModel)

MiB = 1 << 20


async def fake_runtimes() -> Sequence[RuntimeInfo]:
    """A runtime detector with fixed answers."""
    return [RuntimeInfo("node", True, "20.11.1"),
            RuntimeInfo("docker", False, None, "the Docker engine is not reachable")]


def sampler_of(client: TestClient) -> Sampler:
    return client.server.app[SAMPLER_KEY]


def instance_of(client: TestClient) -> InstanceService:
    return client.server.app[INSTANCE_KEY]


def assert_shape(model: type[M], body: Any) -> M:
    """``body`` has exactly the model's fields, each of the documented type (strict)."""
    parsed = model.model_validate_json(json.dumps(body), strict=True)
    assert parsed.model_dump(mode="json") == body
    return parsed


def allocating_child(mib: int, *, grandchild_mib: int = 0) -> subprocess.Popen[bytes]:
    """A real Python child holding ``mib`` MiB of touched memory (and optionally a grandchild
    holding ``grandchild_mib``), in its own session so the whole tree can be killed."""
    grandchild = textwrap.dedent(f"""
        import time
        data = bytearray(b"\\x01") * ({grandchild_mib} * 1024 * 1024)
        time.sleep(600)
    """)
    code = textwrap.dedent(f"""
        import subprocess, sys, time
        data = bytearray(b"\\x01") * ({mib} * 1024 * 1024)
        if {grandchild_mib}:
            subprocess.Popen([sys.executable, "-c", {grandchild!r}])
        time.sleep(600)
    """)
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child's whole process group and reap the child."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


async def metrics_client(aiohttp_client: Any, state_dir: Path, *, clock: Clock | None = None,
                         services: ServiceSource | None = None,
                         reader: HostReader | None = None,
                         detector: RuntimeDetector | None = fake_runtimes,
                         **sections: dict[str, Any]) -> TestClient:
    """A test client for an agent with the given service source, host reader and clock."""
    config = make_config(state_dir, **sections)
    app = create_app(config, clock=clock, admin=AdminSeed(ADMIN_EMAIL, ADMIN_PASSWORD),
                     service_source=services, host_reader=reader, runtime_detector=detector)
    client: TestClient = await aiohttp_client(app)
    return client


async def viewer_headers(client: TestClient) -> dict[str, str]:
    """Headers of a freshly created viewer."""
    admin = bearer((await login(client))["access_token"])
    resp = await client.post("/v1/users", headers=admin, json={
        "email": "viewer@example.com", "password": "viewer-password", "role": "viewer"})
    assert resp.status == 201, await resp.text()
    return bearer((await login(client, "viewer@example.com", "viewer-password"))["access_token"])
