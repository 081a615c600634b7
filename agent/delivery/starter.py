"""``SupervisorStarter``: the pipeline's ``ReleaseStarter``, implemented with the supervisor.

A release is started by replacing the service's run (``Supervisor.replace``: beside the old
run on a fresh ``PORT``, health-gated, then switched). After the switch and before the old run
is stopped, the proxy is refreshed (Caddy must be told; the built-in proxy looks the target up
per request) and the release is recorded as current. A failure becomes ``StartFailed`` with
the supervisor's reason; the last lines the app wrote to stderr go to the deployment log (stream ``app``).

What runs: ``run_cmd`` by ``/bin/sh`` in the release's ``app/`` directory, with the
release's PATH dirs and variables (toolchain, venv) and the deployment's env. A static site
(``runtime: "static"``) runs nothing: its root is the release's ``dist/`` directory when the
release has one (the usual output of a build), else the release's ``app/`` directory. A
Docker release (``runtime: "docker"``) runs a container of the image id it recorded, with
``run_cmd`` (by ``/bin/sh -c``) when given, else the image's own CMD; the switch is the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent.deploy.errors import StartFailed
from agent.deploy.images import image_of
from agent.deploy.pipeline import StartRequest
from agent.deploy.releases import Release, ReleaseStore
from agent.errors import NotFound
from agent.supervisor.manager import Supervisor
from agent.supervisor.switch import Replacement, SwitchFailed

__all__ = ["STATIC_OUTPUT_DIR", "SupervisorStarter", "site_root"]

STATIC_OUTPUT_DIR = "dist"


def site_root(release: Release) -> Path:
    """The directory a static release serves (blocking: a stat)."""
    output = release.app_dir / STATIC_OUTPUT_DIR
    return output if output.is_dir() else release.app_dir


class SupervisorStarter:
    """Starts releases through ``Supervisor.replace``. Implements ``ReleaseStarter``."""

    def __init__(self, supervisor: Supervisor, releases: ReleaseStore, *, start_timeout: float,
                 refresh: Callable[[str], Awaitable[None]]) -> None:
        self._supervisor = supervisor
        self._releases = releases
        self._start_timeout = start_timeout
        self._refresh = refresh

    async def start(self, request: StartRequest) -> None:
        try:
            service = self._supervisor.get(request.service)
        except NotFound:
            raise StartFailed("The service no longer exists (the deployment was deleted)") from None
        release = request.release
        static = service.runtime == "static"
        image = image_of(release)
        if (service.runtime == "docker") != (image is not None):
            raise StartFailed(f"Release {release.id} was not built for this service's runtime "
                              f"({service.runtime}); deploy again")

        async def on_switch() -> None:
            await self._refresh(service.id)
            await self._releases.mark_current(request.service, release.id)

        replacement = Replacement(
            release_id=release.id,
            cwd=await asyncio.to_thread(site_root, release) if static else release.app_dir,
            command=None if static else request.run_cmd or None, env=dict(request.env),
            run_env=request.runtime_env.to_dict(), start_timeout=self._start_timeout,
            restore_env=request.rollback, on_switch=on_switch, image=image)
        try:
            result = await self._supervisor.replace(service.id, replacement)
        except SwitchFailed as exc:
            if exc.output:
                request.log.write(exc.output, "app")
            raise StartFailed(exc.reason, exit_code=exc.exit_code) from None
        except NotFound:
            raise StartFailed("The service no longer exists (the deployment was deleted)") from None
        if static:
            request.log.write([f"serving {replacement.cwd}"])
        elif image is not None:
            request.log.write([f"a container of image {image[:19]} passed its health check on "
                               f"127.0.0.1:{result.listen_port} and took the traffic"])
        else:
            request.log.write([f"pid {result.pid} passed its health check on port "
                               f"{result.listen_port} and took the traffic"])
        if result.replaced_pid is not None:
            request.log.write([f"stopped the previous run (pid {result.replaced_pid}, "
                               f"release {result.previous_release_id})"])
