"""The /proc parsers of the sampler, on text captured from real Linux hosts, and kept files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.metrics.procfs import (
    KeptFile,
    parse_cpu_times,
    parse_diskstats,
    parse_loadavg,
    parse_meminfo,
    parse_net_dev,
    parse_stat,
    read_file,
)
from agent.metrics.readings import IoCounters, NicCounters

TICKS = os.sysconf("SC_CLK_TCK")

# The build machine (kernel 6.18, 2 vCPUs), cut after the first lines that matter.
PROC_STAT = b"""cpu  1703084 0 437975 2647103 24226 0 88538 548 0 0
cpu0 742024 0 212111 1446185 7226 0 40734 262 0 0
cpu1 961060 0 225863 1200917 17000 0 47803 285 0 0
intr 52041116 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1 1 14 0 0
ctxt 192736543
btime 1795931526
processes 1320402
procs_running 5
procs_blocked 0
softirq 24511925 2 5431466 1 3055364 1 0 49 7913085 0 8111957
"""

# A KVM guest running guests of its own (guest and guest_nice are set), 1 core.
PROC_STAT_GUEST = b"""cpu  500 10 200 9000 100 0 20 5 300 40
cpu0 500 10 200 9000 100 0 20 5 300 40
intr 1 0
"""

MEMINFO = b"""MemTotal:       24684084 kB
MemFree:        22696056 kB
MemAvailable:   23968928 kB
Buffers:           15816 kB
Cached:           938228 kB
SwapCached:            0 kB
Active:           510608 kB
Inactive:         645916 kB
SReclaimable:      61232 kB
SwapTotal:       2097148 kB
SwapFree:        1572860 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
"""

# Kernel 5.5+ lines have 20 fields (loop0, vda and its partition vda1 from the build
# machine); a 4.18 host's disk has 18 (sda) and an older one 14 (sdb).
DISKSTATS = b"""   7       0 loop0 12 0 24 3 0 0 0 0 0 4 3 0 0 0 0 0 0
 254       0 vda 1756835 109064 45256690 2054531 3320809 2030617 104417712 1033124 0 519280 3311153 1651854 39 60337744 164166 797608 59331
 254       1 vda1 1756000 109000 45250000 2054000 3320000 2030000 104410000 1033000 0 519000 3311000 1651000 39 60337000 164000 797000 59000
   8       0 sda 100 5 800 10 200 3 1600 20 0 30 30 0 0 0 0
   8      16 sdb 7 0 56 1 9 0 72 2 0 3 3
"""  # noqa: E501 (real lines, kept whole)

NET_DEV = b"""Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 88384488750 240549233    0    0    0     0          0         0 88384488750 240549233    0    0    0     0       0          0
  eth0: 4488953465  116700    1    2    0     0          0         0  5710902   51173    3    4    0     0       0          0
docker0: 25034549  284178    0    0    0     0          0         0 28975383  288348    0  203    0     0       0          0
"""  # noqa: E501 (real lines, kept whole)

# A process whose name holds a space and parentheses ("(sd-pam)" style), 3 threads.
PID_STAT = (b"4242 (my (odd) app) S 4200 4242 4200 0 -1 4194560 2000 0 3 0 "
            b"150 25 0 0 20 0 3 0 2397280 313344000 9000 18446744073709551615 1 1 0 0 0 "
            b"0 0 4096 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n")


def test_cpu_times_are_per_core_busy_and_total_seconds() -> None:
    """Each cpuN line gives busy (all but idle and iowait) and total seconds; 'cpu' is skipped."""
    cores = parse_cpu_times(PROC_STAT)
    assert len(cores) == 2
    fields = [742024, 0, 212111, 1446185, 7226, 0, 40734, 262, 0, 0]
    total = sum(fields) / TICKS
    assert cores[0].total == pytest.approx(total)
    assert cores[0].busy == pytest.approx(total - (1446185 + 7226) / TICKS)


def test_guest_time_is_not_counted_twice() -> None:
    """Guest time is already in user and nice: it is taken out of the total, as psutil did."""
    (core,) = parse_cpu_times(PROC_STAT_GUEST)
    total = (500 + 10 + 200 + 9000 + 100 + 0 + 20 + 5) / TICKS
    assert core.total == pytest.approx(total)
    assert core.busy == pytest.approx(total - 9100 / TICKS)


def test_meminfo_used_is_total_less_available() -> None:
    """Memory figures in bytes; used = total - available; swap used = total - free."""
    m = parse_meminfo(MEMINFO)
    assert m.total == 24684084 * 1024 and m.available == 23968928 * 1024
    assert m.used == (24684084 - 23968928) * 1024
    assert (m.swap_total, m.swap_free) == (2097148 * 1024, 1572860 * 1024)
    assert m.swap_used == (2097148 - 1572860) * 1024


def test_meminfo_without_memavailable_estimates_it() -> None:
    """A kernel without MemAvailable: free + buffers + page cache (with reclaimable slab)."""
    text = b"\n".join(line for line in MEMINFO.split(b"\n")
                      if not line.startswith(b"MemAvailable:"))
    m = parse_meminfo(text)
    assert m.available == (22696056 + 15816 + 938228 + 61232) * 1024


def test_loadavg() -> None:
    """The three load averages; the running/total and last-pid fields are ignored."""
    assert parse_loadavg(b"1.61 1.19 1.18 3/164 26121\n") == (1.61, 1.19, 1.18)


def test_diskstats_counts_whole_disks_only() -> None:
    """Partitions (not in /sys/block) are left out; sectors are 512 bytes, whatever the format."""
    devices = frozenset({"loop0", "vda", "sda", "sdb"})
    io = parse_diskstats(DISKSTATS, devices)
    assert io == IoCounters(read_bytes=(24 + 45256690 + 800 + 56) * 512,
                            write_bytes=(0 + 104417712 + 1600 + 72) * 512,
                            read_count=12 + 1756835 + 100 + 7,
                            write_count=0 + 3320809 + 200 + 9)


def test_diskstats_old_partition_lines_have_seven_fields() -> None:
    """The 2.6-era short partition line (reads, sectors, writes, sectors) is understood."""
    io = parse_diskstats(b"   8    1 sda1 40 320 50 400\n", frozenset({"sda1"}))
    assert io == IoCounters(read_bytes=320 * 512, write_bytes=400 * 512, read_count=40,
                            write_count=50)


def test_diskstats_without_a_known_device_is_none() -> None:
    """No whole disk listed (a container without /sys/block): no disk I/O figures."""
    assert parse_diskstats(DISKSTATS, frozenset()) is None


def test_net_dev_counters_per_interface_without_loopback() -> None:
    """Every interface but lo, with the receive and transmit columns in their places."""
    nics = parse_net_dev(NET_DEV)
    assert set(nics) == {"eth0", "docker0"}
    assert nics["eth0"] == NicCounters(bytes_recv=4488953465, bytes_sent=5710902,
                                       packets_recv=116700, packets_sent=51173, errin=1,
                                       errout=3, dropin=2, dropout=4)
    assert nics["docker0"].dropout == 203


def test_stat_line_with_parentheses_in_the_name() -> None:
    """The fields after the last ')' are read: state, parent, CPU, threads, start, RSS."""
    line = parse_stat(PID_STAT)
    assert line is not None
    assert line.state == b"S" and line.ppid == 4200
    assert line.cpu_ticks == 150 + 25 and line.threads == 3
    assert line.start == 2397280 and line.rss_pages == 9000


def test_a_cut_stat_line_is_refused() -> None:
    """A truncated stat line gives None rather than wrong figures."""
    assert parse_stat(PID_STAT[:60]) is None


def test_real_stat_of_this_process() -> None:
    """This very process's stat line parses, with this process's parent."""
    data = read_file(f"/proc/{os.getpid()}/stat")
    assert data is not None
    line = parse_stat(data)
    assert line is not None and line.ppid == os.getppid() and line.threads >= 1


def test_kept_file_reads_fresh_contents_and_grows(tmp_path: Path) -> None:
    """A kept file is re-read from the start each time, longer than its buffer included."""
    path = tmp_path / "f"
    path.write_bytes(b"one")
    kept = KeptFile(str(path), size=4)
    try:
        assert kept.read() == b"one"
        with path.open("r+b") as f:  # same inode, new contents
            f.write(b"a much longer text than four bytes")
        assert kept.read() == b"a much longer text than four bytes"
    finally:
        kept.close()


def test_kept_file_that_vanishes_reads_none_then_reopens(tmp_path: Path) -> None:
    """A file that cannot be opened reads as None; once it exists it is read again."""
    path = tmp_path / "late"
    kept = KeptFile(str(path))
    assert kept.read() is None
    path.write_bytes(b"here")
    assert kept.read() == b"here"
    kept.close()


def test_kept_proc_file_follows_the_kernel() -> None:
    """A kept /proc file gives the kernel's current text on every read."""
    kept = KeptFile(f"/proc/{os.getpid()}/stat")
    try:
        first = parse_stat(kept.read() or b"")
        sum(range(3_000_000))  # use some CPU
        second = parse_stat(kept.read() or b"")
        assert first is not None and second is not None
        assert second.cpu_ticks > first.cpu_ticks
    finally:
        kept.close()
