"""Which app runtimes this instance has, and their versions.

The default detector asks ``node``, ``python3``, ``go`` and ``docker`` (the engine's version,
so a stopped daemon shows as unavailable) for their versions, all at once, with asyncio
subprocesses and a timeout each: the event loop never waits on them. It runs once, in the
background, when the agent starts. Tests and other parts may inject their own detector.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence

from agent.records import record

__all__ = ["PROBES", "RuntimeDetector", "RuntimeInfo", "detect_runtimes", "probe"]

_VERSION = re.compile(r"(\d+\.\d+(?:\.\d+)?)")


@record
class RuntimeInfo:
    """One runtime: whether it can be used here, its version, and why not if it cannot."""

    name: str
    available: bool
    version: str | None = None
    detail: str | None = None


RuntimeDetector = Callable[[], Awaitable[Sequence[RuntimeInfo]]]

PROBES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("node", ("node", "--version")),
    ("python", ("python3", "--version")),
    ("go", ("go", "version")),
    ("docker", ("docker", "version", "--format", "{{.Server.Version}}")),
)


async def probe(name: str, argv: Sequence[str], limit: float = 5.0) -> RuntimeInfo:
    """Run ``argv`` and read a version number from what it prints."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
    except FileNotFoundError:
        return RuntimeInfo(name, False, detail=f"'{argv[0]}' is not installed (not on PATH)")
    except OSError as exc:
        return RuntimeInfo(name, False, detail=f"'{argv[0]}' cannot run ({exc.strerror})")
    try:
        async with asyncio.timeout(limit):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return RuntimeInfo(name, False, detail=f"'{argv[0]}' did not answer in {limit:g}s")
    if proc.returncode != 0:
        reason = ("the Docker engine is not reachable" if name == "docker"
                  else f"'{' '.join(argv)}' exited with status {proc.returncode}")
        return RuntimeInfo(name, False, detail=reason)
    match = _VERSION.search((out + err).decode(errors="replace"))
    if match is None:
        return RuntimeInfo(name, True, detail="version not recognised")
    return RuntimeInfo(name, True, version=match[1])


async def detect_runtimes() -> list[RuntimeInfo]:
    """Every runtime in ``PROBES``, probed concurrently."""
    return list(await asyncio.gather(*(probe(name, argv) for name, argv in PROBES)))
