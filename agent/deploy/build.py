"""Builds: ``build_cmd`` run by ``/bin/sh -c`` in the release's app dir, logged and time-limited.

The environment of a build (and later of the app, see ``RuntimeEnv``) is built from scratch,
never inherited from the agent, so the agent's own settings and secrets do not leak into apps:

* ``PATH``: the release's dirs (a Python venv's ``bin``), the toolchain's ``bin`` dir, then
  the agent's ``PATH``;
* ``HOME``, ``LANG``, ``USER``, ``LOGNAME``, ``TMPDIR`` passed through (``LANG`` defaults to
  ``C.UTF-8``), shared caches under ``<state>/cache`` (npm, pip, go) and quiet defaults
  (no npm audit/fund/update notices, no pip version check);
* the deployment's ``env`` on top (it may override anything but the toolchain's PATH order);
* ``DPLOYR_COMMIT`` and ``DPLOYR_RELEASE_ID`` describe the build.

Each run is its own session and process group: on timeout the group gets SIGTERM, then SIGKILL
after ``kill_grace`` seconds; when the command ends, whatever it left running in the group is
killed too, so a build never leaves an orphan. stdout and stderr go, merged and line by line,
to the deployment log as they come.

Python releases get a venv per release (``<release>/venv``, made with the resolved
interpreter). When ``build_cmd`` is empty the default build is: ``pip install -r
requirements.txt`` for Python when that file exists, ``npm install`` for Node.js when
``package.json`` exists, and nothing otherwise.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import field
from pathlib import Path
from typing import Any

import structlog

from agent.clock import Clock
from agent.deploy.errors import BuildFailed
from agent.deploy.logfile import DeployLog
from agent.deploy.procs import signal_group, spawn_grouped, terminate_group
from agent.deploy.toolchains import Toolchain
from agent.records import record

__all__ = ["BuildResult", "Builder", "RuntimeEnv", "default_build_cmd"]

log = structlog.get_logger("agent.deploy.build")

_PASSTHROUGH = ("HOME", "LANG", "USER", "LOGNAME", "TMPDIR")
_QUIET = {
    "npm_config_update_notifier": "false", "npm_config_fund": "false",
    "npm_config_audit": "false", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1",
}
_READ_CHUNK = 65536


@record
class RuntimeEnv:
    """What a release adds to a process environment: PATH dirs (first) and variables.

    Stored in release.json so a rollback starts the release exactly as it was built.
    """

    path_dirs: tuple[str, ...] = ()
    variables: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"path_dirs": list(self.path_dirs), "variables": dict(self.variables)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RuntimeEnv:
        return cls(tuple(data.get("path_dirs", ())), dict(data.get("variables", {})))

    def apply(self, base: Mapping[str, str], env: Mapping[str, str]) -> dict[str, str]:
        """``base``, then ``env`` on top, then this release's PATH dirs and variables."""
        merged = {**base, **env, **self.variables}
        merged["PATH"] = os.pathsep.join([*self.path_dirs, merged.get("PATH", "")]).rstrip(os.pathsep)
        return merged


@record
class BuildResult:
    """How a build ended. ``exit_code`` is None when it was killed for its time limit."""

    command: str
    exit_code: int | None
    duration: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def to_dict(self) -> dict[str, Any]:
        return {"command": self.command, "exit_code": self.exit_code,
                "duration": round(self.duration, 3), "timed_out": self.timed_out}


def default_build_cmd(runtime: str, app_dir: Path) -> str:
    """The build run when ``build_cmd`` is empty (see the module docstring)."""
    if runtime == "python" and (app_dir / "requirements.txt").is_file():
        return "pip install -r requirements.txt"
    if runtime == "nodejs" and (app_dir / "package.json").is_file():
        return "npm install"
    return ""


class Builder:
    """Prepares a release's runtime environment and runs its build command."""

    def __init__(self, *, clock: Clock, cache_dir: Path, timeout: float = 1800.0,
                 kill_grace: float = 5.0, base_path: str | None = None) -> None:
        self._clock = clock
        self._cache = cache_dir
        self._timeout = timeout
        self._grace = kill_grace
        self._base_path = base_path

    def base_env(self) -> dict[str, str]:
        """The environment every build and app starts from (before the deployment's env)."""
        env = {k: os.environ[k] for k in _PASSTHROUGH if k in os.environ}
        env.setdefault("LANG", "C.UTF-8")
        env.setdefault("HOME", str(self._cache / "home"))
        env["PATH"] = self._base_path or os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
        env.update(_QUIET)
        env.update({"npm_config_cache": str(self._cache / "npm"), "PIP_CACHE_DIR": str(self._cache / "pip"),
                    "GOCACHE": str(self._cache / "go-build"), "GOPATH": str(self._cache / "go"),
                    "GOFLAGS": "-modcacherw"})
        return env

    async def prepare(self, toolchain: Toolchain, release_dir: Path, deploy_log: DeployLog) -> RuntimeEnv:
        """The release's ``RuntimeEnv``; for Python, first create ``<release_dir>/venv``.

        Raises ``BuildFailed`` (with the exit code) when the venv cannot be created.
        """
        dirs = [str(toolchain.bin_dir)] if toolchain.bin_dir is not None else []
        if toolchain.runtime != "python" or toolchain.executable is None:
            return RuntimeEnv(tuple(dirs))
        venv = release_dir / "venv"
        deploy_log.write([f"creating a Python {toolchain.version} virtualenv in {venv}"])
        result = await self._execute([str(toolchain.executable), "-m", "venv", str(venv)],
                                     command="python -m venv", cwd=release_dir,
                                     env=self.base_env(), deploy_log=deploy_log, time_limit=300)
        if not result.ok:
            raise BuildFailed(f"Creating the Python virtualenv failed (exit code {result.exit_code}); "
                              "is the venv module installed (Debian: python3-venv)?",
                              exit_code=result.exit_code)
        return RuntimeEnv((str(venv / "bin"), *dirs), {"VIRTUAL_ENV": str(venv)})

    async def run(self, command: str, *, cwd: Path, runtime_env: RuntimeEnv,
                  env: Mapping[str, str], deploy_log: DeployLog,
                  time_limit: float | None = None) -> BuildResult:
        """Run ``command`` via ``/bin/sh -c`` in ``cwd``; an empty command succeeds at once."""
        if not command.strip():
            deploy_log.write(["no build command; nothing to build"])
            return BuildResult(command, 0, 0.0)
        full_env = runtime_env.apply(self.base_env(), env)
        deploy_log.write([f"$ {command}"])
        result = await self._execute(["/bin/sh", "-c", command], command=command, cwd=cwd,
                                     env=full_env, deploy_log=deploy_log,
                                     time_limit=time_limit if time_limit is not None else self._timeout)
        if result.timed_out:
            deploy_log.write([f"build timed out after {result.duration:.1f}s; its processes were killed"])
        else:
            deploy_log.write([f"build exited with code {result.exit_code} after {result.duration:.1f}s"])
        return result

    async def _execute(self, argv: Sequence[str], *, command: str, cwd: Path, env: Mapping[str, str],
                       deploy_log: DeployLog, time_limit: float) -> BuildResult:
        started = self._clock.monotonic()
        try:
            child = await spawn_grouped(argv, env=env, cwd=cwd)
        except OSError as exc:
            deploy_log.write([f"cannot run the build: {exc.strerror or type(exc).__name__}"])
            return BuildResult(command, 127, 0.0)
        pump = asyncio.create_task(_pump(child.output, deploy_log))
        timed_out = False
        try:
            try:
                async with asyncio.timeout(time_limit):
                    await child.process.wait()
            except TimeoutError:
                timed_out = True
                await terminate_group(child.process, self._grace)
        except asyncio.CancelledError:
            signal_group(child.pid, signal.SIGKILL)
            await asyncio.shield(child.process.wait())
            pump.cancel()
            child.close()
            raise
        signal_group(child.pid, signal.SIGKILL)  # leftovers: `cmd &` must not outlive the build
        try:
            await asyncio.wait_for(asyncio.shield(pump), 5.0)
        except TimeoutError:
            pump.cancel()  # a process that left the group still holds the pipe
        finally:
            child.close()
        duration = self._clock.monotonic() - started
        code = None if timed_out else child.process.returncode
        log.info("build_finished", program=argv[0], exit_code=code, timed_out=timed_out,
                 seconds=round(duration, 2))
        return BuildResult(command, code, duration, timed_out)


async def _pump(stream: asyncio.StreamReader, deploy_log: DeployLog) -> None:
    partial = b""
    while chunk := await stream.read(_READ_CHUNK):
        lines = (partial + chunk).split(b"\n")
        partial = lines.pop()
        if len(partial) > _READ_CHUNK:
            lines.append(partial)
            partial = b""
        if lines:
            deploy_log.write([ln.decode("utf-8", errors="replace") for ln in lines], "build")
    if partial:
        deploy_log.write([partial.decode("utf-8", errors="replace")], "build")
