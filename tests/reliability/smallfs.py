"""A small filesystem for disk-full tests: a size-limited tmpfs, mounted and always unmounted."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

__all__ = ["fill", "mountable", "small_tmpfs"]


def mountable() -> tuple[bool, str]:
    """Whether this process may mount a tmpfs (root, and mount(8) present)."""
    if os.geteuid() != 0:
        return False, "mounting a tmpfs needs root"
    if not any(Path(d, "mount").exists() for d in ("/usr/bin", "/bin", "/usr/sbin")):
        return False, "no mount(8)"
    return True, ""


@contextlib.contextmanager
def small_tmpfs(path: Path, size_mb: int) -> Iterator[Path]:
    """Mount a ``size_mb`` MiB tmpfs on ``path`` for the duration of the block."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs",
                    str(path)], check=True)
    try:
        yield path
    finally:
        # Lazy: a process the test started may still hold a file there.
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Write a file in ``directory`` until the filesystem is full; return the file."""
    filler = directory / "filler"
    chunk = b"\0" * (1 << 20)
    with filler.open("wb", buffering=0) as out:
        for size in (1 << 20, 1 << 12, 1):
            piece = chunk[:size]
            while True:
                try:
                    out.write(piece)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return filler
