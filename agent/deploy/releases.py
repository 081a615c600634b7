"""Releases: one immutable directory per successful build, kept for instant rollback.

Layout under ``<state>/apps/<service>/``::

    releases/<release_id>/app/           the checked-out (and built) app; the working dir
    releases/<release_id>/venv/          Python releases only
    releases/<release_id>/release.json   commit, branch, remote (no credentials), toolchain,
                                         runtime env, env snapshot, build result, run_cmd, port,
                                         created_at; written last, atomically, 0400
    pointers.json                        {"current": id, "previous": id}, atomically replaced

A directory without ``release.json`` is a draft (a deploy in progress, or one that died); it is
never listed, and pruning removes it. Once finalized a release is made read-only: every write
bit is removed from its files and directories (root ignores mode bits, so an agent running as
root gets immutability by convention plus this guard; apps run as other users cannot write).
Apps must keep their data outside the release directory.

``prune`` keeps the newest ``keep`` releases and, whatever their age, the current and the
previous one and any the caller protects. Release ids are time-sortable, so newest = largest id.
All filesystem work runs in threads.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import field
from pathlib import Path
from typing import Any

import structlog

from agent.clock import Clock
from agent.deploy.build import BuildResult, RuntimeEnv
from agent.deploy.toolchains import Toolchain
from agent.errors import InvalidRequest, NotFound
from agent.ids import new_id
from agent.records import record

__all__ = ["Release", "ReleaseDraft", "ReleaseStore", "make_read_only"]

log = structlog.get_logger("agent.deploy.releases")

RELEASE_FILE = "release.json"
POINTERS_FILE = "pointers.json"
_SERVICE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_RELEASE_ID = re.compile(r"^rel_[0-9a-z]{22}$")


@record
class ReleaseDraft:
    """A release being made: clone into ``app_dir``, build there, then ``finalize``."""

    id: str
    service: str
    path: Path

    @property
    def app_dir(self) -> Path:
        return self.path / "app"


@record
class Release:
    """A finalized, immutable release and everything needed to start it again."""

    id: str
    service: str
    path: Path
    commit: str
    branch: str
    remote: str
    toolchain: Mapping[str, Any]
    runtime_env: RuntimeEnv
    env: Mapping[str, str]
    build: Mapping[str, Any]
    run_cmd: str
    port: int | None
    created_at: float
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def app_dir(self) -> Path:
        return self.path / "app"

    def to_dict(self) -> dict[str, Any]:
        """The content of release.json."""
        return {"id": self.id, "service": self.service, "commit": self.commit,
                "branch": self.branch, "remote": self.remote, "toolchain": dict(self.toolchain),
                "runtime_env": self.runtime_env.to_dict(), "env": dict(self.env),
                "build": dict(self.build), "run_cmd": self.run_cmd, "port": self.port,
                "created_at": self.created_at, "extra": dict(self.extra)}

    @classmethod
    def from_dict(cls, path: Path, data: Mapping[str, Any]) -> Release:
        return cls(id=data["id"], service=data["service"], path=path, commit=data["commit"],
                   branch=data["branch"], remote=data["remote"], toolchain=data["toolchain"],
                   runtime_env=RuntimeEnv.from_dict(data.get("runtime_env", {})),
                   env=data.get("env", {}), build=data.get("build", {}),
                   run_cmd=data.get("run_cmd", ""), port=data.get("port"),
                   created_at=data["created_at"], extra=data.get("extra", {}))


def make_read_only(root: Path) -> None:
    """Remove every write bit under ``root`` (files first, then their directories). Blocking."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in [*filenames, *dirnames]:
            path = Path(dirpath, name)
            st = path.lstat()
            if not stat.S_ISLNK(st.st_mode):
                path.chmod(stat.S_IMODE(st.st_mode) & ~0o222)
    root.chmod(stat.S_IMODE(root.lstat().st_mode) & ~0o222)


def _remove_tree(root: Path) -> None:
    """Delete ``root`` even though it is read-only. Blocking."""
    if not root.exists():
        return
    for dirpath, _dirnames, _filenames in os.walk(root):
        directory = Path(dirpath)
        st = directory.lstat()
        if not stat.S_ISLNK(st.st_mode):
            directory.chmod(stat.S_IMODE(st.st_mode) | 0o700)
    shutil.rmtree(root)


def _write_json_atomic(path: Path, data: Mapping[str, Any], mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).chmod(mode)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class ReleaseStore:
    """Release directories of every service under ``apps_dir``. Keeps ``keep`` per service."""

    def __init__(self, apps_dir: Path, *, clock: Clock, keep: int = 5) -> None:
        self.apps_dir = apps_dir
        self.keep = keep
        self._clock = clock

    def service_dir(self, service: str) -> Path:
        """``<apps>/<service>``; the name must be a DNS label (it becomes a path)."""
        if not _SERVICE.match(service):
            raise InvalidRequest("Invalid service name", field="name",
                                 issue="Must be a DNS label: a-z, 0-9 and '-', at most 63 characters")
        return self.apps_dir / service

    def _releases_dir(self, service: str) -> Path:
        return self.service_dir(service) / "releases"

    async def create(self, service: str) -> ReleaseDraft:
        """A new, empty draft directory with a fresh time-sortable id."""
        release_id = new_id("rel")
        path = self._releases_dir(service) / release_id

        def _mkdir() -> None:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            path.mkdir(mode=0o700)

        await asyncio.to_thread(_mkdir)
        return ReleaseDraft(release_id, service, path)

    async def finalize(self, draft: ReleaseDraft, *, commit: str, branch: str, remote: str,
                       toolchain: Toolchain, runtime_env: RuntimeEnv, env: Mapping[str, str],
                       build: BuildResult, run_cmd: str, port: int | None,
                       extra: Mapping[str, Any] | None = None) -> Release:
        """Write release.json and make the release read-only. ``remote`` must hold no secret."""
        release = Release(id=draft.id, service=draft.service, path=draft.path, commit=commit,
                          branch=branch, remote=remote, toolchain=toolchain.to_dict(),
                          runtime_env=runtime_env, env=dict(env), build=build.to_dict(),
                          run_cmd=run_cmd, port=port, created_at=self._clock.time(),
                          extra=dict(extra or {}))

        def _finalize() -> None:
            _write_json_atomic(draft.path / RELEASE_FILE, release.to_dict(), 0o400)
            make_read_only(draft.path)

        await asyncio.to_thread(_finalize)
        log.info("release_created", service=draft.service, release_id=draft.id, commit=commit)
        return release

    async def discard(self, draft: ReleaseDraft) -> None:
        """Delete a draft (a failed deploy leaves nothing behind but its log)."""
        await asyncio.to_thread(_remove_tree, draft.path)

    async def list(self, service: str) -> list[Release]:
        """Finalized releases of ``service``, newest first."""
        return await asyncio.to_thread(self._list, service)

    def _list(self, service: str) -> builtins.list[Release]:
        base = self._releases_dir(service)
        releases: list[Release] = []
        try:
            entries = sorted(base.iterdir(), reverse=True)
        except FileNotFoundError:
            return releases
        for entry in entries:
            if not _RELEASE_ID.match(entry.name):
                continue
            try:
                data = json.loads((entry / RELEASE_FILE).read_text(encoding="utf-8"))
                releases.append(Release.from_dict(entry, data))
            except (OSError, ValueError, KeyError):
                continue  # a draft, or a release whose record is damaged: not usable
        return releases

    async def get(self, service: str, release_id: str) -> Release:
        """The finalized release; NotFound otherwise."""
        if _RELEASE_ID.match(release_id):
            for release in await self.list(service):
                if release.id == release_id:
                    return release
        raise NotFound(f"No release '{release_id}' for service '{service}'")

    def pointers(self, service: str) -> tuple[str | None, str | None]:
        """(current, previous) release ids of ``service``, as last set by ``mark_current``."""
        try:
            data = json.loads((self.service_dir(service) / POINTERS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None, None
        return data.get("current"), data.get("previous")

    async def mark_current(self, service: str, release_id: str) -> tuple[str, str | None]:
        """Record ``release_id`` as running; the one before it becomes previous. Durable."""
        current, previous = self.pointers(service)
        if current != release_id:
            previous = current
        data = {"current": release_id, "previous": previous}
        path = self.service_dir(service) / POINTERS_FILE
        await asyncio.to_thread(_write_json_atomic, path, data, 0o600)
        return release_id, previous

    async def prune(self, service: str, *, protect: Iterable[str] = ()) -> builtins.list[str]:
        """Remove all but the newest ``keep`` releases (never current, previous or ``protect``)
        and every draft not in ``protect``; return the removed ids.

        Call it only while no other deploy of ``service`` is in flight (the deploy queue runs
        one per service at a time), or protect that deploy's draft.
        """
        keep_ids = {i for i in (*self.pointers(service), *protect) if i}
        releases = await self.list(service)
        keep_ids.update(r.id for r in releases[: self.keep])
        finalized = {r.id for r in releases}
        base = self._releases_dir(service)

        def _prune() -> list[str]:
            removed: list[str] = []
            try:
                entries = list(base.iterdir())
            except FileNotFoundError:
                return removed
            for entry in entries:
                if not _RELEASE_ID.match(entry.name) or entry.name in keep_ids:
                    continue
                if entry.name in finalized or not (entry / RELEASE_FILE).exists():
                    try:
                        _remove_tree(entry)
                    except OSError as exc:  # e.g. something still writes there: next prune
                        log.warning("release_not_removed", service=service, release=entry.name,
                                    error=exc.strerror or type(exc).__name__)
                        continue
                    removed.append(entry.name)
            return sorted(removed)

        removed = await asyncio.to_thread(_prune)
        if removed:
            log.info("releases_pruned", service=service, removed=len(removed))
        return removed

    async def remove_service(self, service: str) -> None:
        """Delete every release and pointer of ``service`` (the deployment was deleted)."""
        await asyncio.to_thread(_remove_tree, self.service_dir(service))
