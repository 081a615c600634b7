"""cgroup files: the agent's own memory limit, and the processes of a Docker container.

Both cgroup v2 (one unified tree) and v1 (one tree per controller) are read. Paths come
from ``/proc/self/cgroup``; when the agent runs inside a container its cgroup namespace
makes that path ``/`` and the files at the mount's root are its own. A limit is the
smallest one set on the agent's cgroup or any ancestor, as the kernel enforces it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CgroupMemory", "CgroupReader"]

_UNLIMITED_V1 = 1 << 60  # v1 reports "no limit" as a huge page-aligned number


@dataclass(frozen=True, slots=True)
class _MemoryFiles:
    """Where one cgroup version keeps a group's memory limit and usage."""

    limit: str
    usage: str
    inactive: str      # the memory.stat key of inactive file cache
    unlimited: float   # a limit at or above this means none


_V2 = _MemoryFiles("memory.max", "memory.current", "inactive_file", float("inf"))
_V1 = _MemoryFiles("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file",
                   _UNLIMITED_V1)


@dataclass(frozen=True, slots=True)
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


def _stat_value(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0


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
        v2, v1 = self._paths()
        if v1 is not None and (self._root / "memory").is_dir():
            found = self._memory(self._root / "memory", v1, _V1)
            if found is not None:
                return found
        if v2 is not None and (self._root / "cgroup.controllers").exists():
            return self._memory(self._root, v2, _V2)
        return None

    @staticmethod
    def _memory(root: Path, path: str, files: _MemoryFiles) -> CgroupMemory | None:
        """The lowest limit on the way from ``root`` down to ``path``, and the usage (less
        inactive file cache) of the deepest group that reports it."""
        limit, own = None, None
        for directory in _ancestors(root, path):
            value = _read_int(directory / files.limit)  # v2's "max" reads as None
            if value is not None and value < files.unlimited and (limit is None or value < limit):
                limit = value
            if own is None and (directory / files.usage).exists():
                own = directory
        if limit is None or own is None:
            return None
        usage = _read_int(own / files.usage) or 0
        inactive = _stat_value(own / "memory.stat", files.inactive)
        return CgroupMemory(limit=limit, used=max(0, usage - inactive))

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
