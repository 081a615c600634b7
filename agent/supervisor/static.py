"""``StaticRuntime``: the "run" of a static site is its directory, served by the proxy.

A ``runtime: "static"`` deployment has no process. Supervising it through the same unit and
state machine as apps keeps everything else uniform: a static service is ``running`` while
it has a release to serve (``start`` checks the directory exists), ``stopped`` after a stop
(the proxy answers 502 for it then), and a deploy switches it to another release exactly as
it switches an app. The handle names the directory; ``SupervisorView.target`` turns a serving
static service into ``StaticSite(cwd)``.

A run never ends by itself: ``wait`` resolves when ``stop`` is called. ``adopt`` after an
agent restart finds the run alive as long as its directory exists.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path

from agent.ids import new_id
from agent.supervisor.runtime import Adopted, ExitStatus, Handle, RunSpec, RuntimeFailure, TreeStats

__all__ = ["StaticRuntime"]


class StaticRuntime:
    """Runs nothing; serves a directory. Implements ``Runtime``."""

    kind = "static"

    def __init__(self) -> None:
        self._runs: dict[str, asyncio.Future[ExitStatus]] = {}

    def _future(self, handle: Handle) -> asyncio.Future[ExitStatus]:
        key = str(handle.data.get("run", ""))
        future = self._runs.get(key)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._runs[key] = future
        return future

    async def start(self, spec: RunSpec) -> Handle:
        """A run of the directory ``spec.cwd``; RuntimeFailure when it is not a directory."""
        root = spec.cwd
        if root is None or not await asyncio.to_thread(Path.is_dir, root):
            raise RuntimeFailure(f"the site directory {root} does not exist")
        handle = Handle(self.kind, {"root": str(root), "run": new_id("site")})
        self._future(handle)
        return handle

    async def adopt(self, handle: Handle, spec: RunSpec) -> Adopted:
        root = Path(str(handle.data.get("root", "")))
        if not await asyncio.to_thread(Path.is_dir, root):
            return Adopted(alive=False, status=ExitStatus(code=0))
        self._future(handle)
        return Adopted(alive=True)

    async def wait(self, handle: Handle) -> ExitStatus:
        return await asyncio.shield(self._future(handle))

    async def signal(self, handle: Handle, sig: int) -> bool:
        return not self._future(handle).done()

    async def stop(self, handle: Handle, sig: int, grace: float) -> ExitStatus:
        future = self._future(handle)
        if not future.done():
            future.set_result(ExitStatus(code=0))
        return future.result()

    async def stats(self, handles: Sequence[Handle]) -> Mapping[str, TreeStats]:
        return {}

    def release(self, handle: Handle) -> None:
        future = self._runs.pop(str(handle.data.get("run", "")), None)
        if future is not None and not future.done():
            future.cancel()
