"""A supervisor over a real store, real log capture and a fake runtime, for unit tests of the
service state machine (``tests/unit/test_service_unit.py``, ``test_switch.py``)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.clock import SystemClock
from agent.config import ServicesConfig
from agent.deployments import DeploymentService, LocalDeployment
from agent.env import EnvService
from agent.events import EventBus, Subscription
from agent.logs import LogManager
from agent.store import Database
from agent.supervisor.manager import Supervisor
from agent.supervisor.policy import RestartPolicy
from agent.supervisor.runtime import Runtime
from agent.supervisor.static import StaticRuntime
from agent.testing import FakeRuntime
from tests.support.agent import eventually

FAST = RestartPolicy(initial_delay=0.01, max_delay=0.05, jitter=0, max_restarts=3)


@dataclass
class World:
    tmp: Path
    db: Database
    logs: LogManager
    env: EnvService
    runtime: FakeRuntime
    config: ServicesConfig
    sup: Supervisor
    deployments: DeploymentService
    events: Subscription

    async def create(self, name: str = "app", **kw: Any) -> str:
        kw.setdefault("restart", FAST)
        dep = await self.deployments.create_local(LocalDeployment(
            name=name, path=str(self.tmp), run_cmd="run", **kw))
        assert dep.service_id is not None
        return dep.service_id

    def state(self, sid: str) -> str:
        return self.sup.get(sid).state.value

    async def until(self, sid: str, state: str, timeout: float = 5.0) -> None:
        async def check() -> bool:
            return self.state(sid) == state
        await eventually(check, timeout=timeout, message=f"state {state}")

    def drain_events(self) -> list[str]:
        names = []
        while not self.events._queue.empty():
            names.append(self.events._queue.get_nowait().type)
        return names

    def pid(self, sid: str) -> int:
        pid = self.sup.get(sid).pid
        assert pid is not None
        return pid

    async def reopen(self) -> None:
        """A new supervisor on the same store and runtime: an agent restart."""
        await self.sup.close()
        self.sup = Supervisor(self.db, SystemClock(), self.config, apps_dir=self.tmp / "apps",
                              logs=self.logs, env=self.env, runtimes=_runtimes(self.runtime),
                              base_env={"PATH": "/bin"}, rng=random.Random(1))
        await self.sup.open()


def _runtimes(runtime: FakeRuntime) -> dict[str, Runtime]:
    return {"process": runtime, "static": StaticRuntime()}


@asynccontextmanager
async def open_world(tmp_path: Path, runtime: FakeRuntime) -> AsyncIterator[World]:
    """A World whose services run on ``runtime`` (and static sites on a StaticRuntime)."""
    clock = SystemClock()
    db = Database(tmp_path / "agent.db", bus=EventBus(), clock=clock)
    await db.open()
    logs = LogManager(max_bytes=1 << 20, max_files=3, clock=clock)
    await logs.open()
    env = EnvService(db, clock, max_bytes=1000, max_vars=10)
    config = ServicesConfig(allowed_local_roots=(tmp_path,), startup_seconds=0.05)
    sup = Supervisor(db, clock, config, apps_dir=tmp_path / "apps", logs=logs, env=env,
                     runtimes=_runtimes(runtime), base_env={"PATH": "/bin"},
                     rng=random.Random(1))
    await sup.open()
    deployments = DeploymentService(db, clock, config, sup, env)
    w = World(tmp_path, db, logs, env, runtime, config, sup, deployments, db.bus.subscribe())
    try:
        yield w
    finally:
        await w.sup.close()
        await logs.close()
        await db.close()
