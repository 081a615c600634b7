"""cgroup files: the agent's own memory limit, and the processes of a Docker container.

Both cgroup v2 (one unified tree) and v1 (one tree per controller) are read. Paths come
from ``/proc/self/cgroup``; when the agent runs inside a container its cgroup namespace
makes that path ``/`` and the files at the mount's root are its own. A limit is the
smallest one set on the agent's cgroup or any ancestor, as the kernel enforces it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from agent.metrics.procfs import KeptFile
from agent.records import record

__all__ = ["CgroupMemory", "CgroupMemoryWatch", "CgroupReader"]

_UNLIMITED_V1 = 1 << 60  # v1 reports "no limit" as a huge page-aligned number


@record
class _MemoryFiles:
    """Where one cgroup version keeps a group's memory limit and usage."""

    limit: str
    usage: str
    inactive: str      # the memory.stat key of inactive file cache
    unlimited: float   # a limit at or above this means none


_V2 = _MemoryFiles("memory.max", "memory.current", "inactive_file", float("inf"))
_V1 = _MemoryFiles("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file",
                   _UNLIMITED_V1)


@record
class CgroupMemory:
    """The effective memory limit and the memory in use in the agent's cgroup, in bytes.

    ``used`` excludes inactive page cache, as ``docker stats`` does.
    """

    limit: int
    used: int


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (OSError, ValueError):
        return None
    return int(text) if text.isdigit() else None


def _int_of(data: bytes | None) -> int | None:
    text = data.strip() if data is not None else b""
    return int(text) if text.isdigit() else None


def _stat_value_of(data: bytes | None, key: str) -> int:
    wanted = key.encode()
    for line in (data or b"").split(b"\n"):
        name, _, value = line.partition(b" ")
        if name == wanted and value.strip().isdigit():
            return int(value)
    return 0


def _stat_value(path: Path, key: str) -> int:
    try:
        return _stat_value_of(path.read_bytes(), key)
    except OSError:
        return 0


class CgroupMemoryWatch:
    """The usage of one cgroup with a memory limit, re-read cheaply on every sample.

    Made by ``CgroupReader.watch_memory`` once the limit and the files are found; reads two
    files kept open (see ``agent.metrics.procfs.KeptFile``). The limit is the one found
    then: the owner looks again from time to time.
    """

    def __init__(self, limit: int, usage: Path, stat: Path, inactive_key: str) -> None:
        self.limit = limit
        self._usage = KeptFile(str(usage), 64)
        self._stat = KeptFile(str(stat))
        self._inactive_key = inactive_key

    def read(self) -> CgroupMemory:
        """The limit and the memory in use now (less inactive file cache)."""
        usage = _int_of(self._usage.read()) or 0
        inactive = _stat_value_of(self._stat.read(), self._inactive_key)
        return CgroupMemory(limit=self.limit, used=max(0, usage - inactive))

    def close(self) -> None:
        self._usage.close()
        self._stat.close()


def _ancestors(root: Path, cgroup_path: str) -> Iterator[Path]:
    """``root/cgroup_path`` and each parent up to ``root``, deepest first."""
    parts = [p for p in cgroup_path.strip("/").split("/") if p]
    for depth in range(len(parts), -1, -1):
        yield root.joinpath(*parts[:depth])


class CgroupReader:
    """Reads cgroup files under ``root`` (``/sys/fs/cgroup``; a temp dir in tests)."""

    def __init__(self, root: Path = Path("/sys/fs/cgroup"),
                 self_cgroup: Path = Path("/proc/self/cgroup")) -> None:
        self._root = root
        self._self_cgroup = self_cgroup

    def _paths(self) -> tuple[str | None, str | None]:
        """The agent's (v2 unified path, v1 memory-controller path)."""
        v2 = v1 = None
        try:
            lines = self._self_cgroup.read_text().splitlines()
        except OSError:
            return None, None
        for line in lines:
            parts = line.split(":", 2)
            if len(parts) != 3:
                continue
            _, controllers, path = parts
            if controllers == "":
                v2 = path
            elif "memory" in controllers.split(","):
                v1 = path
        return v2, v1

    def memory(self) -> CgroupMemory | None:
        """The agent's cgroup memory limit and usage, or None when no limit is set."""
        found = self._find()
        if found is None:
            return None
        limit, own, files = found
        usage = _read_int(own / files.usage) or 0
        inactive = _stat_value(own / "memory.stat", files.inactive)
        return CgroupMemory(limit=limit, used=max(0, usage - inactive))

    def watch_memory(self) -> CgroupMemoryWatch | None:
        """What ``memory`` finds, as a watch that re-reads only the usage (None: no limit)."""
        found = self._find()
        if found is None:
            return None
        limit, own, files = found
        return CgroupMemoryWatch(limit, own / files.usage, own / "memory.stat", files.inactive)

    def _find(self) -> tuple[int, Path, _MemoryFiles] | None:
        v2, v1 = self._paths()
        if v1 is not None and (self._root / "memory").is_dir():
            found = self._limit(self._root / "memory", v1, _V1)
            if found is not None:
                return found
        if v2 is not None and (self._root / "cgroup.controllers").exists():
            return self._limit(self._root, v2, _V2)
        return None

    @staticmethod
    def _limit(root: Path, path: str, files: _MemoryFiles
               ) -> tuple[int, Path, _MemoryFiles] | None:
        """The lowest limit on the way from ``root`` down to ``path``, and the deepest group
        that reports its usage."""
        limit, own = None, None
        for directory in _ancestors(root, path):
            value = _read_int(directory / files.limit)  # v2's "max" reads as None
            if value is not None and value < files.unlimited and (limit is None or value < limit):
                limit = value
            if own is None and (directory / files.usage).exists():
                own = directory
        if limit is None or own is None:
            return None
        return limit, own, files

    def container_pids(self, container_id: str) -> list[int] | None:
        """Every pid in a Docker container's cgroup (host pid namespace), or None if not found.

        Covers the cgroupfs and systemd drivers on v1 and v2.
        """
        candidates = (
            f"system.slice/docker-{container_id}.scope",
            f"docker/{container_id}",
        )
        for controller in ("", "pids", "memory", "systemd", "unified"):
            base = self._root / controller if controller else self._root
            for rel in candidates:
                procs = base / rel / "cgroup.procs"
                try:
                    text = procs.read_text()
                except OSError:
                    continue
                return [int(line) for line in text.split() if line.isdigit()]
        return None
