"""Toolchains: which ``runtime@version`` a deploy builds and runs with, and where it comes from.

``resolve("nodejs", "20")`` answers a ``Toolchain``: the exact version (``20.11.1``) and the
directory to put first on ``PATH``. A version is ``MAJOR``, ``MAJOR.MINOR`` or
``MAJOR.MINOR.PATCH`` and matches every exact version it is a prefix of; the newest match wins.
An empty version means the newest installed one.

Sources, searched in this order (on equal versions the earlier source wins):

1. the managed toolchains dir, ``<toolchains>/<runtime>/<exact version>/bin/<program>``;
2. the system ``PATH``: ``node`` (or ``nodejs``), ``python3.X``/``python3``, ``go``;
3. for ``nodejs`` only, when nothing installed matches: the npm registry, provisioned into the
   managed dir by ``NodeProvisioner`` (then it is installed, and reused by later deploys).

``static`` needs no toolchain, nor does ``docker`` (a Dockerfile build, ``agent.deploy.images``:
not a runtime of this module; ``validate_version`` refuses it). A version that
cannot be had is an ``InvalidRequest`` on the field ``version`` whose details list the versions
that can (``available``).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import structlog

from agent.deploy.errors import ToolchainError
from agent.deploy.logfile import LineSink
from agent.errors import InvalidRequest, ServiceUnavailable
from agent.records import record

__all__ = [
    "RUNTIMES",
    "Provisioner",
    "Toolchain",
    "ToolchainResolver",
    "newest_match",
    "parse_version",
    "validate_version",
    "version_matches",
]

log = structlog.get_logger("agent.deploy.toolchains")

RUNTIMES: tuple[str, ...] = ("nodejs", "python", "go", "static")
_VERSION = re.compile(r"^\d{1,4}(\.\d{1,4}){0,2}$")
_PROGRAMS = {"nodejs": "node", "python": "python3", "go": "go"}
_PROBE_TIMEOUT = 15.0

Source = Literal["managed", "system", "none", "dockerfile"]


@record
class Toolchain:
    """One installed runtime version. ``bin_dir`` goes first on ``PATH`` (None for static)."""

    runtime: str
    version: str
    executable: Path | None = None
    source: Source = "none"

    @property
    def bin_dir(self) -> Path | None:
        return self.executable.parent if self.executable is not None else None

    def to_dict(self) -> dict[str, str | None]:
        """The JSON shape stored in release.json."""
        return {"runtime": self.runtime, "version": self.version, "source": self.source,
                "executable": str(self.executable) if self.executable else None}


class Provisioner(Protocol):
    """Fetches toolchain versions that are not installed (``NodeProvisioner`` for nodejs)."""

    async def versions(self) -> list[str]:
        """Exact versions that can be provisioned, newest first."""
        ...

    async def provision(self, version: str, *, sink: LineSink | None = None) -> Toolchain:
        """Install the newest version matching ``version`` into the managed dir."""
        ...


def parse_version(text: str) -> tuple[int, ...]:
    """``"20.11.1"`` -> ``(20, 11, 1)``; a leading ``v``/``go`` is ignored."""
    text = text.strip().removeprefix("v").removeprefix("go")
    return tuple(int(part) for part in text.split(".")) if text else ()


def validate_version(runtime: str, version: str) -> str:
    """``version`` if well formed (``^\\d+(\\.\\d+){0,2}$`` or empty); else 400 on ``version``.

    Also checks that ``runtime`` is one the agent supports (400 on ``runtime`` otherwise).
    """
    if runtime not in RUNTIMES:
        raise InvalidRequest("Invalid deployment configuration", field="runtime",
                             issue=f"Unsupported runtime; supported: {', '.join(RUNTIMES)}")
    if version and not _VERSION.match(version):
        raise InvalidRequest("Invalid deployment configuration", field="version",
                             issue="Malformed version: use MAJOR, MAJOR.MINOR or MAJOR.MINOR.PATCH")
    return version


def version_matches(requested: str, exact: str) -> bool:
    """True when ``requested`` (``20``, ``20.11``, ``20.11.1``, or empty) covers ``exact``."""
    if not requested:
        return True
    want = parse_version(requested)
    return parse_version(exact)[: len(want)] == want


def newest_match(requested: str, versions: Sequence[str]) -> str | None:
    """The newest of ``versions`` matching ``requested``; None when none does."""
    matching = [v for v in versions if version_matches(requested, v)]
    return max(matching, key=parse_version) if matching else None


@dataclass
class _ProbeCache:
    found: list[Toolchain] = field(default_factory=list)
    at: float = float("-inf")


class ToolchainResolver:
    """Finds toolchains in the managed dir and on the system PATH, provisions what it can.

    ``search_path`` replaces the agent's ``PATH`` for the system search (tests). System probes
    (running ``node --version`` and friends) are cached for ``probe_ttl`` seconds.
    """

    def __init__(self, toolchains_dir: Path, *, provisioners: dict[str, Provisioner] | None = None,
                 search_path: str | None = None, probe_ttl: float = 60.0) -> None:
        self.toolchains_dir = toolchains_dir
        self._provisioners = dict(provisioners or {})
        self._search_path = search_path
        self._probe_ttl = probe_ttl
        self._probes: dict[str, _ProbeCache] = {}
        self._probe_lock = asyncio.Lock()

    async def installed(self, runtime: str) -> list[Toolchain]:
        """Every installed toolchain of ``runtime``, newest first, managed before system."""
        validate_version(runtime, "")
        if runtime == "static":
            return [Toolchain("static", "")]
        managed = await asyncio.to_thread(self._managed, runtime)
        system = await self._system(runtime)
        seen: set[str] = set()
        ordered: list[Toolchain] = []
        for tc in [*managed, *system]:
            if tc.version not in seen:
                seen.add(tc.version)
                ordered.append(tc)
        return sorted(ordered, key=lambda tc: parse_version(tc.version), reverse=True)

    async def available(self, runtime: str) -> list[str]:
        """Versions that can be had: installed ones, then provisionable ones; newest first."""
        versions = [tc.version for tc in await self.installed(runtime)]
        provisioner = self._provisioners.get(runtime)
        if provisioner is not None:
            try:
                versions += [v for v in await provisioner.versions() if v not in versions]
            except ToolchainError as exc:
                log.warning("toolchain_registry_unavailable", runtime=runtime, reason=exc.reason)
        return sorted(set(versions), key=parse_version, reverse=True)

    async def check(self, runtime: str, version: str) -> None:
        """Raise a 400 on ``version`` unless ``runtime@version`` is installed or provisionable.

        Nothing is downloaded; the registry's version list may be fetched (and cached). When
        the version is not installed and the registry cannot be read, the answer is a 503
        (``ServiceUnavailable``): the version may well exist, so it is not called invalid.
        """
        validate_version(runtime, version)
        if runtime == "static":
            return
        installed = [tc.version for tc in await self.installed(runtime)]
        if newest_match(version, installed):
            return
        provisioner = self._provisioners.get(runtime)
        if provisioner is None:
            raise _unavailable(runtime, version, installed)
        try:
            offered = await provisioner.versions()
        except ToolchainError as exc:
            raise ServiceUnavailable(
                f"Cannot check whether {runtime} {version} can be installed: {exc.reason}",
                details={"field": "version", "installed": installed}) from None
        if newest_match(version, offered) is None:
            raise _unavailable(runtime, version, await self.available(runtime))

    async def resolve(self, runtime: str, version: str, *,
                      sink: LineSink | None = None) -> Toolchain:
        """The newest installed toolchain matching ``version``, provisioning it if need be.

        Raises ``InvalidRequest`` (field ``version``) when it cannot be had, or a
        ``ToolchainError`` when provisioning fails.
        """
        validate_version(runtime, version)
        if runtime == "static":
            return Toolchain("static", "")
        installed = await self.installed(runtime)
        best = newest_match(version, [tc.version for tc in installed])
        if best is not None:
            return next(tc for tc in installed if tc.version == best)
        provisioner = self._provisioners.get(runtime)
        if provisioner is None or newest_match(version, await provisioner.versions()) is None:
            raise _unavailable(runtime, version, await self.available(runtime))
        return await provisioner.provision(version, sink=sink)

    def _managed(self, runtime: str) -> list[Toolchain]:
        base = self.toolchains_dir / runtime
        program = _PROGRAMS[runtime]
        found: list[Toolchain] = []
        try:
            entries = list(base.iterdir())
        except OSError:
            return found
        for entry in entries:
            exe = entry / "bin" / program
            if re.fullmatch(r"\d+\.\d+\.\d+", entry.name) and os.access(exe, os.X_OK):
                found.append(Toolchain(runtime, entry.name, exe, "managed"))
        return found

    async def _system(self, runtime: str) -> list[Toolchain]:
        async with self._probe_lock:
            cache = self._probes.setdefault(runtime, _ProbeCache())
            if time.monotonic() - cache.at > self._probe_ttl:
                cache.found = await self._probe(runtime)
                cache.at = time.monotonic()
            return list(cache.found)

    def _candidates(self, runtime: str) -> list[Path]:
        path = self._search_path if self._search_path is not None else os.environ.get("PATH", "")
        names = {"nodejs": ("node", "nodejs"), "go": ("go",)}.get(runtime, ())
        found: list[Path] = []
        for directory in filter(None, path.split(os.pathsep)):
            base = Path(directory)
            if runtime == "python":
                try:
                    pythons = sorted(p.name for p in base.iterdir()
                                     if re.fullmatch(r"python3(\.\d+)?", p.name))
                except OSError:
                    continue
                names = tuple(pythons)
            found += [base / n for n in names if os.access(base / n, os.X_OK)]
        return found

    async def _probe(self, runtime: str) -> list[Toolchain]:
        candidates = await asyncio.to_thread(self._candidates, runtime)
        probed = await asyncio.gather(*(_probe_one(runtime, c) for c in candidates))
        results: dict[str, Toolchain] = {}
        for toolchain in probed:  # in PATH order: the first of equal versions wins
            if toolchain is not None and toolchain.version not in results:
                results[toolchain.version] = toolchain
        return list(results.values())


_PROBE_ARGS = {
    "nodejs": ["-p", "process.version + '\\n' + process.execPath"],
    "python": ["-c", "import sys, platform; print(platform.python_version()); print(sys.executable)"],
    "go": ["env", "GOVERSION", "GOROOT"],
}


async def _probe_one(runtime: str, candidate: Path) -> Toolchain | None:
    """Run ``candidate`` to learn its exact version and real executable; None if it fails."""
    try:
        proc = await asyncio.create_subprocess_exec(
            str(candidate), *_PROBE_ARGS[runtime], stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    except OSError:
        return None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), _PROBE_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return None
    lines = out.decode(errors="replace").split()
    if proc.returncode != 0 or len(lines) < 2:
        return None
    version = lines[0].removeprefix("v").removeprefix("go")
    if not re.fullmatch(r"\d+\.\d+(\.\d+)?", version):
        return None
    if version.count(".") == 1:
        version += ".0"  # go1.21 names its first release "1.21"
    exe = Path(lines[1]) / "bin" / "go" if runtime == "go" else Path(lines[1])
    return Toolchain(runtime, version, exe, "system")


def _summary(versions: Sequence[str], parts: int, limit: int = 12) -> str:
    """The newest version of each series (the first ``parts`` numbers), newest first."""
    by_major: dict[str, str] = {}
    for version in versions:
        major = ".".join(version.split(".")[:parts])
        if major not in by_major or parse_version(version) > parse_version(by_major[major]):
            by_major[major] = version
    picked = sorted(by_major.values(), key=parse_version, reverse=True)
    text = ", ".join(picked[:limit])
    return text + (", ..." if len(picked) > limit else "")


def _unavailable(runtime: str, version: str, available: Sequence[str]) -> InvalidRequest:
    # Node.js releases a major at a time; Python and Go a minor at a time.
    parts = 1 if runtime == "nodejs" else 2
    versions = [v for v in available if v]
    if not versions:
        listing = "none"
    elif len(versions) <= 12:
        listing = ", ".join(versions)
    else:
        listing = _summary(versions, parts)
    return InvalidRequest(
        "Invalid deployment configuration", field="version",
        issue=f"Unsupported runtime version: {runtime} {version or '(any)'} is not available; "
              f"available: {listing}",
        details={"available": list(available)})
