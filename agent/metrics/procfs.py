"""Reading and parsing the ``/proc`` files the sampler reads on every tick.

The sampler reads the same few files every second for the whole life of the agent, so the
files are opened once and re-read with ``os.pread`` at offset 0 (one system call instead of
the open, fstat, ioctl, read, read and close of ``open(path).read()``): the kernel builds a
fresh text on each read from the start of a ``/proc`` file. On this project's 2-core build
machine a system call right after the sampler's thread wakes costs 10 to 100 times what the
same call costs in a tight loop, so the number of calls is what the sampler's CPU figure
follows (see docs/benchmarks.md).

The parsers take the bytes of one file and return plain values; they know nothing of
where the bytes come from (tests feed them real text captured from a Linux host).
"""

from __future__ import annotations

import os
from typing import NamedTuple

from agent.metrics.readings import CpuTimes, IoCounters, MemoryReading, NicCounters

__all__ = [
    "KeptFile",
    "StatLine",
    "count_processes",
    "parse_cpu_times",
    "parse_diskstats",
    "parse_loadavg",
    "parse_meminfo",
    "parse_net_dev",
    "parse_stat",
    "read_file",
]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_SECTOR = 512  # /proc/diskstats counts 512-byte sectors whatever the device's block size


def read_file(path: str, size: int = 4096) -> bytes | None:
    """The whole file (three calls: open, read, close), or None if it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        while True:
            chunk = os.read(fd, size)
            if not chunk:
                break
            chunks.append(chunk)
            if len(chunk) < size:
                break
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


class KeptFile:
    """A file kept open and re-read whole with ``os.pread``: one call per read.

    The buffer grows to the file's size on the first read that fills it, so later reads
    take one call. A read that fails closes the file; the next read reopens it. Not
    thread-safe: each sampler owns its files.
    """

    __slots__ = ("_fd", "_size", "path")

    def __init__(self, path: str, size: int = 4096) -> None:
        self.path = path
        self._fd = -1
        self._size = size

    def read(self) -> bytes | None:
        """The file's current contents, or None when it cannot be opened or read."""
        if self._fd < 0:
            try:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None
        try:
            data = os.pread(self._fd, self._size, 0)
            while len(data) >= self._size:  # the file outgrew the buffer: read it again whole
                self._size *= 2
                data = os.pread(self._fd, self._size, 0)
        except OSError:
            self.close()
            return None
        return data

    def close(self) -> None:
        if self._fd >= 0:
            try:
                os.close(self._fd)
            finally:
                self._fd = -1


# -- host files ----------------------------------------------------------------------------------

def parse_cpu_times(data: bytes) -> tuple[CpuTimes, ...]:
    """Per-core busy and total seconds from ``/proc/stat`` (the ``cpuN`` lines).

    As ``psutil.cpu_times(percpu=True)`` read by the previous reader: total is the sum of
    the fields less guest time (already counted in user and nice), idle is idle + iowait.
    """
    cores: list[CpuTimes] = []
    for line in data.split(b"\n"):
        if not line.startswith(b"cpu"):
            if cores:
                break  # the cpu lines come first, one block
            continue
        if line[3:4] == b" ":
            continue  # the "cpu" line sums all cores
        fields = [int(x) for x in line.split()[1:11]]
        fields += [0] * (10 - len(fields))
        _, _, _, idle, iowait, _, _, _, guest, guest_nice = fields
        total = (sum(fields) - guest - guest_nice) / _CLOCK_TICKS
        cores.append(CpuTimes(busy=max(0.0, total - (idle + iowait) / _CLOCK_TICKS),
                              total=total))
    return tuple(cores)


def parse_loadavg(data: bytes) -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages from ``/proc/loadavg``."""
    one, five, fifteen = data.split(None, 3)[:3]
    return float(one), float(five), float(fifteen)


_MEMINFO_KEYS = frozenset({b"MemTotal:", b"MemFree:", b"MemAvailable:", b"Buffers:",
                           b"Cached:", b"SReclaimable:", b"SwapTotal:", b"SwapFree:"})


def parse_meminfo(data: bytes) -> MemoryReading:
    """``/proc/meminfo`` in bytes. ``used`` is total less available (psutil 6+ and ``free``);
    without a usable ``MemAvailable`` (kernels before 3.14) available is free + buffers +
    page cache."""
    found: dict[bytes, int] = {}
    for line in data.split(b"\n"):
        key, _, rest = line.partition(b" ")
        if key in _MEMINFO_KEYS:
            found[key] = int(rest.split()[0]) * 1024
    total = found.get(b"MemTotal:", 0)
    free = found.get(b"MemFree:", 0)
    available = found.get(b"MemAvailable:", 0)
    if available <= 0:
        available = (free + found.get(b"Buffers:", 0) + found.get(b"Cached:", 0)
                     + found.get(b"SReclaimable:", 0))
    if available > total:
        available = free
    swap_total = found.get(b"SwapTotal:", 0)
    swap_free = found.get(b"SwapFree:", 0)
    return MemoryReading(total=total, available=available, used=max(0, total - available),
                         swap_total=swap_total, swap_used=max(0, swap_total - swap_free),
                         swap_free=swap_free)


def parse_diskstats(data: bytes, devices: frozenset[str]) -> IoCounters | None:
    """Summed counters of the whole devices named in ``devices`` (the entries of
    ``/sys/block``: partitions are left out, their I/O is in their disk's line), or None
    when no line matches. Bytes are 512-byte sectors, as the kernel counts them."""
    reads = writes = read_sectors = write_sectors = 0
    seen = False
    for line in data.split(b"\n"):
        fields = line.split()
        count = len(fields)
        # The layouts psutil reads: 14, 18 or 20 fields (major minor name reads merged
        # sectors ms writes merged sectors ...); 15 on 2.6 kernels (one more leading
        # field); 7 for partitions on kernels before 2.6.25.
        if count == 14 or count >= 18:
            name, values = fields[2], fields[3:10]
        elif count == 15:
            name, values = fields[3], [fields[2], *fields[4:10]]
        elif count == 7:
            name = fields[2]
            values = [fields[3], b"0", fields[4], b"0", fields[5], b"0", fields[6]]
        else:
            continue
        if name.decode(errors="replace").replace("/", "!") not in devices:
            continue
        seen = True
        reads += int(values[0])
        read_sectors += int(values[2])
        writes += int(values[4])
        write_sectors += int(values[6])
    if not seen:
        return None
    return IoCounters(read_bytes=read_sectors * _SECTOR, write_bytes=write_sectors * _SECTOR,
                      read_count=reads, write_count=writes)


def parse_net_dev(data: bytes) -> dict[str, NicCounters]:
    """Counters of every interface in ``/proc/net/dev`` but loopback."""
    nics: dict[str, NicCounters] = {}
    for line in data.split(b"\n")[2:]:
        colon = line.rfind(b":")
        if colon <= 0:
            continue
        name = line[:colon].strip().decode(errors="replace")
        if name == "lo":
            continue
        f = line[colon + 1:].split()
        if len(f) < 12:
            continue
        nics[name] = NicCounters(bytes_recv=int(f[0]), bytes_sent=int(f[8]),
                                 packets_recv=int(f[1]), packets_sent=int(f[9]),
                                 errin=int(f[2]), errout=int(f[10]), dropin=int(f[3]),
                                 dropout=int(f[11]))
    return nics


def count_processes(proc_root: str = "/proc") -> int:
    """How many processes exist now (the numeric entries of ``/proc``)."""
    with os.scandir(proc_root) as entries:
        return sum(1 for entry in entries if entry.name.isdigit())


# -- process files -------------------------------------------------------------------------------

class StatLine(NamedTuple):
    """What ``/proc/<pid>/stat`` says of one process (times in clock ticks)."""

    state: bytes
    ppid: int
    cpu_ticks: int  # user + system
    threads: int
    start: int
    rss_pages: int


def parse_stat(data: bytes) -> StatLine | None:
    """The fields the sampler uses from one ``/proc/<pid>/stat`` line, or None if the line
    is cut short. The command name is in parentheses and may hold spaces or ``)``."""
    fields = data[data.rfind(b")") + 2:].split(None, 22)
    if len(fields) < 22:
        return None
    return StatLine(state=fields[0], ppid=int(fields[1]),
                    cpu_ticks=int(fields[11]) + int(fields[12]), threads=int(fields[17]),
                    start=int(fields[19]), rss_pages=int(fields[21]))
