"""The Runtime Protocol: how the supervisor runs, watches, stops and adopts an app.

Two runtimes implement it: ``ProcessRuntime`` (agent/supervisor/process.py, a process tree in
its own session) and the Docker runtime (a container). The supervisor knows nothing else about
them. The contract every runtime keeps:

- ``start(spec)`` launches the app so that it **outlives the agent** (no pipe to the agent, own
  session or a container) and returns a ``Handle`` that is persisted as JSON.
- The app's stdout and stderr end up appended to the two raw files ``spec.logs`` names (the
  process runtime opens them O_APPEND for the app; a container runtime forwards its log stream
  there). The agent's log capture reads those files; the runtime never reads them.
- ``adopt(handle)`` is called on an agent start for every persisted handle: it returns
  ``Adopted(alive=True)`` when the same app is still running (never a different process that
  reused the pid: the start time is compared), otherwise ``alive=False`` with the exit status if
  it can still be learned.
- ``wait(handle)`` resolves when the app ended (started or adopted handles only).
- ``stop(handle, signal, grace)`` sends ``signal`` to the whole app (process group or
  container), waits up to ``grace`` seconds, then kills everything left (SIGKILL); it returns
  when nothing of the app runs any more.
- ``stats(handles)`` reports CPU and memory of each app's whole tree; it may do blocking work
  in a thread but never on the event loop.
"""

from __future__ import annotations

import functools
import json
import os
import signal as _signal
from collections.abc import Mapping, Sequence
from dataclasses import field
from pathlib import Path
from typing import Any, Protocol

from agent.records import record

__all__ = [
    "STOP_SIGNALS",
    "Adopted",
    "ExitStatus",
    "Handle",
    "LogPaths",
    "RunSpec",
    "Runtime",
    "RuntimeFailure",
    "TreeStats",
    "signal_name",
    "signal_number",
]

#: Signals a service may be stopped with (the process runtime's wrapper traps exactly these).
STOP_SIGNALS: tuple[str, ...] = ("SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2")


class RuntimeFailure(Exception):
    """The runtime could not do what was asked (e.g. the command cannot be spawned).

    The message is safe to show to users: it never contains env values.
    """


def signal_name(number: int) -> str:
    """``9 -> "SIGKILL"``; unknown numbers as ``"SIG<n>"``."""
    try:
        return _signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


def signal_number(name: str) -> int:
    """``"SIGTERM" -> 15``; raises ValueError for an unknown name."""
    try:
        return int(_signal.Signals[name])
    except KeyError:
        raise ValueError(f"unknown signal {name}") from None


@record
class LogPaths:
    """The two raw files the app's output is appended to (read by the log capture)."""

    stdout: Path
    stderr: Path


@record
class RunSpec:
    """Everything a runtime needs to start one run of an app."""

    service_id: str
    name: str
    command: str | None          # a shell command (run through /bin/sh -c), or None for an image
    cwd: Path | None
    env: Mapping[str, str]
    logs: LogPaths
    run_dir: Path                # private files of the runtime for this service (status files)
    stop_signal: int = int(_signal.SIGTERM)
    image: str | None = None
    kind: str = "app"            # "app" or "build": a build is a separate, waited-for run
    limits: Mapping[str, Any] = field(default_factory=dict)
    run_name: str = ""           # tells apart two runs alive at once (a switch): default `kind`
    port: int | None = None      # the app's declared port (a container's port)
    listen_port: int | None = None  # the port the run is reached at on this host (= PORT)
    deployment_id: str | None = None

    @property
    def name_of_run(self) -> str:
        """The name of this run among the service's runs (its status file, its container)."""
        return self.run_name or self.kind


@record(slots=False)  # not slotted: the JSON is cached in the instance's __dict__
class Handle:
    """A persisted reference to a running app. ``data`` is runtime-specific JSON (and is
    not changed after the handle is made: its JSON is computed once)."""

    runtime: str                 # "process" | "docker"
    data: Mapping[str, Any]

    @property
    def pid(self) -> int | None:
        """The main process id, when the runtime has one."""
        pid = self.data.get("pid")
        return int(pid) if pid is not None else None

    def to_json(self) -> str:
        """The handle as canonical JSON: what is stored, and a key that identifies the run."""
        return self._json

    @functools.cached_property
    def _json(self) -> str:
        return json.dumps({"runtime": self.runtime, **self.data}, separators=(",", ":"),
                          sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Handle:
        data = dict(json.loads(text))
        return cls(runtime=str(data.pop("runtime")), data=data)


@record
class ExitStatus:
    """How a run ended: an exit code, or the signal that killed it, or unknown."""

    code: int | None = None
    signal: int | None = None

    @property
    def known(self) -> bool:
        return self.code is not None or self.signal is not None

    @property
    def success(self) -> bool:
        return self.code == 0

    @classmethod
    def from_shell(cls, status: int) -> ExitStatus:
        """Decode a shell's ``$?``: above 128 means killed by signal ``status - 128``."""
        if 128 < status < 128 + 65:
            return cls(signal=status - 128)
        return cls(code=status)

    @classmethod
    def from_wait(cls, status: int) -> ExitStatus:
        """Decode an ``os.waitpid`` status word."""
        if os.WIFSIGNALED(status):
            return cls(signal=os.WTERMSIG(status))
        return cls.from_shell(os.WEXITSTATUS(status))

    def describe(self) -> str:
        """``"exit code 3"``, ``"signal SIGKILL"`` or ``"unknown"``."""
        if self.signal is not None:
            return f"signal {signal_name(self.signal)}"
        if self.code is not None:
            return f"exit code {self.code}"
        return "unknown"


@record
class Adopted:
    """The result of adopting a persisted handle after an agent restart."""

    alive: bool
    status: ExitStatus = ExitStatus()


@record
class TreeStats:
    """Resources of an app's whole process tree (or container)."""

    cpu_seconds: float
    memory_bytes: int
    processes: int
    #: When the figures were read (the clock's monotonic time), for a runtime that answers
    #: from a cache; None means "now".
    sampled_at: float | None = None


class Runtime(Protocol):
    """Runs apps so that they outlive the agent. See the module docstring for the contract."""

    kind: str

    async def start(self, spec: RunSpec) -> Handle:
        """Launch one run; raises RuntimeFailure when it cannot be launched."""
        ...

    async def adopt(self, handle: Handle, spec: RunSpec) -> Adopted:
        """Take over a handle persisted by an earlier agent process."""
        ...

    async def wait(self, handle: Handle) -> ExitStatus:
        """Wait for the run to end and return how it ended."""
        ...

    async def signal(self, handle: Handle, sig: int) -> bool:
        """Send ``sig`` to the whole app; False when it no longer runs."""
        ...

    async def stop(self, handle: Handle, sig: int, grace: float) -> ExitStatus:
        """Signal, wait ``grace`` seconds, kill what is left; return how the run ended."""
        ...

    async def stats(self, handles: Sequence[Handle]) -> Mapping[str, TreeStats]:
        """Resource use per handle, keyed by ``Handle.to_json()``; absent when not running."""
        ...

    def release(self, handle: Handle) -> None:
        """Stop watching the handle (agent shutdown); the app keeps running."""
        ...
