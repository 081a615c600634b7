"""Small, fast readers of ``/proc`` (Linux): process identity, sessions, resource use.

A process is identified by ``(pid, start_ticks)``: the start time in clock ticks since boot
from ``/proc/<pid>/stat``. A pid can be reused by an unrelated process; a pid with the same
start time cannot, within one boot (``boot_id`` tells boots apart).

Every function here does blocking file reads: call the scanning ones from a thread.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from agent.records import record

__all__ = [
    "CLK_TCK",
    "PAGE_SIZE",
    "ProcStat",
    "boot_id",
    "iter_processes",
    "read_cmdline",
    "read_stat",
    "session_members",
]

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_PROC = "/proc"


@record
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` the supervisor needs."""

    pid: int
    state: str          # R, S, D, Z, T, ...
    ppid: int
    pgrp: int
    session: int
    utime: int          # clock ticks
    stime: int
    start_ticks: int    # clock ticks after boot
    rss_pages: int

    @property
    def zombie(self) -> bool:
        """Exited but not yet reaped (or dead): it no longer runs."""
        return self.state in ("Z", "X", "x")

    @property
    def cpu_seconds(self) -> float:
        return (self.utime + self.stime) / CLK_TCK

    @property
    def rss_bytes(self) -> int:
        return self.rss_pages * PAGE_SIZE


@cache
def boot_id() -> str:
    """This boot's random id: it changes on every reboot."""
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _parse(pid: int, raw: bytes) -> ProcStat | None:
    # The command name is in parentheses and may itself contain spaces and ')'.
    end = raw.rfind(b")")
    if end < 0:
        return None
    fields = raw[end + 2:].split()
    if len(fields) < 22:
        return None
    return ProcStat(pid=pid, state=fields[0].decode(), ppid=int(fields[1]), pgrp=int(fields[2]),
                    session=int(fields[3]), utime=int(fields[11]), stime=int(fields[12]),
                    start_ticks=int(fields[19]), rss_pages=int(fields[21]))


def read_stat(pid: int) -> ProcStat | None:
    """The process's stat, or None when there is no process ``pid``."""
    try:
        with open(f"{_PROC}/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return _parse(pid, raw)


def iter_processes() -> Iterator[ProcStat]:
    """Every process visible now (those that vanish while scanning are skipped)."""
    with os.scandir(_PROC) as entries:
        pids = [int(entry.name) for entry in entries if entry.name.isdigit()]
    for pid in pids:
        stat = read_stat(pid)
        if stat is not None:
            yield stat


def read_cmdline(pid: int) -> list[str]:
    """The process's argv, or [] when it is gone or unreadable."""
    try:
        with open(f"{_PROC}/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]]


def session_members(sid: int, leader_start: int, *,
                    processes: list[ProcStat] | None = None) -> list[ProcStat]:
    """Live processes of the session whose leader was ``(sid, leader_start)``.

    The session id of a dead leader stays reserved while any member lives, so members found
    here belong to that session. A process that now has the pid ``sid`` is a different
    process (the leader is dead or is excluded), as is anything started before the leader
    or after a process that reused the pid.
    """
    procs = processes if processes is not None else list(iter_processes())
    reused_at = next((p.start_ticks for p in procs
                      if p.pid == sid and p.start_ticks != leader_start), None)
    members = []
    for proc in procs:
        if proc.session != sid or proc.zombie or proc.start_ticks < leader_start:
            continue
        if reused_at is not None and proc.start_ticks >= reused_at:
            continue
        members.append(proc)
    return members
