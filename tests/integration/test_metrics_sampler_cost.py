"""What the cheaper sampler keeps: psutil's host figures, fresh process figures, trees
across re-parenting, and measurement without kept files."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

from agent.metrics.processes import ProcessTreeSampler, scan_processes
from agent.metrics.psutil_reader import PsutilHostReader
from agent.metrics.sources import ServiceProcess
from tests.support.agent import wait_until


def test_host_reading_matches_psutil_on_this_machine() -> None:
    """The /proc reader gives psutil's memory, swap, CPU count, interfaces and disk counters."""
    reader = PsutilHostReader()
    try:
        reading = reader.read()
    finally:
        reader.close()
    vm, swap = psutil.virtual_memory(), psutil.swap_memory()
    assert reading.memory.total == vm.total
    assert abs(reading.memory.available - vm.available) < 256 << 20  # moments apart
    assert reading.memory.swap_total == swap.total
    assert len(reading.cpu) == len(psutil.cpu_times(percpu=True))
    nics = {name for name in psutil.net_io_counters(pernic=True) if name != "lo"}
    assert set(reading.nics) == nics
    disk = psutil.disk_io_counters()
    if disk is not None:  # counters only grow: psutil, read after, has at least as much
        assert reading.disk_io is not None
        assert 0 <= disk.read_bytes - reading.disk_io.read_bytes < 1 << 30
        assert 0 <= disk.write_count - reading.disk_io.write_count < 1_000_000
    assert abs(reading.process_count - len(psutil.pids())) < 50
    assert abs(reading.load[0] - os.getloadavg()[0]) < 1.0


def _opener() -> subprocess.Popen[bytes]:
    """A child that opens 20 more files and allocates 32 MiB when a line arrives."""
    code = textwrap.dedent("""
        import sys, time
        print("waiting", flush=True)
        sys.stdin.readline()
        files = [open("/dev/null") for _ in range(20)]
        data = bytearray(b"\\x01") * (32 * 1024 * 1024)
        print("ready", flush=True)
        time.sleep(600)
    """)
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, start_new_session=True)


def test_idle_figures_are_reused_and_changes_show_within_the_bound() -> None:
    """An idle service's sample is the same object; RSS shows at once, open files within
    ``files_every`` samples."""
    child = _opener()
    try:
        assert child.stdin is not None and child.stdout is not None
        assert child.stdout.readline() == b"waiting\n"  # started, now blocked on stdin
        sampler = ProcessTreeSampler(files_every=3)
        service = ServiceProcess("svc_open", "open", "process", "running", child.pid)
        first = sampler.sample([service], monotonic=0.0, wall=time.time())[0]
        second = sampler.sample([service], monotonic=1.0, wall=time.time())[0]
        assert first.usage is not None
        assert second is first  # nothing changed: no new objects
        child.stdin.write(b"go\n")
        child.stdin.flush()
        assert child.stdout.readline() == b"ready\n"
        grown = sampler.sample([service], monotonic=2.0, wall=time.time())[0]
        assert grown.usage is not None
        assert grown.usage.rss_bytes >= first.usage.rss_bytes + (30 << 20)
        files = [sampler.sample([service], monotonic=3.0 + i, wall=time.time())[0]
                 for i in range(3)]
        assert any(s.usage is not None and s.usage.open_files >= first.usage.open_files + 20
                   for s in files)
    finally:
        child.kill()
        child.wait()
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()


def test_without_kept_files_the_figures_are_the_same() -> None:
    """With no stat file kept open (descriptor budget 0) a service is measured all the same."""
    child = subprocess.Popen(["sleep", "600"])
    try:
        # Once it sleeps its figures stay put (while it is still loading, two reads a moment
        # apart can differ in memory and open files).
        wait_until(lambda: psutil.Process(child.pid).status() == psutil.STATUS_SLEEPING,
                   message="the child to sleep")
        service = ServiceProcess("svc_s", "s", "process", "running", child.pid)
        kept = ProcessTreeSampler()
        opened = ProcessTreeSampler(max_open_files=0)
        one = kept.sample([service], monotonic=0.0, wall=time.time())[0]
        other = opened.sample([service], monotonic=0.0, wall=time.time())[0]
        assert one.usage is not None and one.usage == other.usage
        fds = len(os.listdir("/proc/self/fd"))
        opened.sample([service], monotonic=1.0, wall=time.time())
        assert len(os.listdir("/proc/self/fd")) == fds
        kept.close()
        opened.close()
    finally:
        child.kill()
        child.wait()


def test_a_rescan_sees_a_process_whose_parent_exited(tmp_path: Path) -> None:
    """A scan reusing the previous table reads again an orphan (its parent is gone)."""
    marker = tmp_path / "pid"
    shell = subprocess.Popen(["sh", "-c", f"sleep 600 & echo $! > {marker}; read x"],
                             stdin=subprocess.PIPE, start_new_session=True)
    try:
        pid = int(wait_until(lambda: marker.exists() and marker.read_text().strip(),
                             message="the background sleep"))
        first = scan_processes()
        assert first[pid].ppid == shell.pid
        assert shell.stdin is not None
        shell.stdin.write(b"\n")
        shell.stdin.close()
        shell.wait()
        wait_until(lambda: psutil.Process(pid).ppid() != shell.pid, message="re-parenting")
        again = scan_processes(Path("/proc"), first)
        assert again[pid].ppid == psutil.Process(pid).ppid()
        assert shell.pid not in again or again[shell.pid].start != first[shell.pid].start
    finally:
        with_pid = marker.read_text().strip() if marker.exists() else ""
        if with_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(with_pid), 9)
        if shell.poll() is None:
            shell.kill()
            shell.wait()
