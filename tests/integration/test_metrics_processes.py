"""The process-tree sampler on real processes: rescans, exits, and CPU across samples."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import psutil
import pytest

from agent.metrics import processes
from agent.metrics.processes import ProcessTreeSampler, scan_processes
from agent.metrics.sources import ServiceProcess
from tests.support.agent import wait_until


def _spawner() -> subprocess.Popen[bytes]:
    """A shell that starts a sleeping child when a line arrives on its stdin."""
    return subprocess.Popen(["sh", "-c", "read line; sleep 600 & wait"], stdin=subprocess.PIPE,
                            start_new_session=True)


def test_scan_sees_parents_and_start_times() -> None:
    """The /proc scan maps this process to its parent and a start time."""
    table = scan_processes()
    me = psutil.Process()
    assert table[me.pid].ppid == me.ppid()
    assert table[me.pid].start > 0 and table[me.pid].fields


def test_new_child_counts_from_the_next_rescan_and_exit_is_seen_at_once() -> None:
    """Between rescans only known members are read; a root that exits is reported at once."""
    shell = _spawner()
    try:
        sampler = ProcessTreeSampler(rescan=5.0)
        service = ServiceProcess("svc_sh", "sh", "process", "running", shell.pid)
        first = sampler.sample([service], monotonic=0.0, wall=time.time())[0]
        assert first.usage is not None and first.usage.processes == 1
        assert shell.stdin is not None
        shell.stdin.write(b"go\n")
        shell.stdin.flush()
        wait_until(lambda: psutil.Process(shell.pid).children(), message="the sleep child")
        between = sampler.sample([service], monotonic=1.0, wall=time.time())[0]
        assert between.usage is not None and between.usage.processes == 1
        rescanned = sampler.sample([service], monotonic=6.0, wall=time.time())[0]
        assert rescanned.usage is not None and rescanned.usage.processes == 2
        assert sampler.tracked_processes == 2
        psutil.Process(shell.pid).children()[0].kill()
        shell.kill()
        shell.wait()
        gone = sampler.sample([service], monotonic=7.0, wall=time.time())[0]
        assert gone.usage is None and gone.note == "process not found"
    finally:
        if shell.poll() is None:
            shell.kill()
            shell.wait()
        if shell.stdin is not None:
            shell.stdin.close()


def test_the_last_pid_moves_when_a_process_is_created() -> None:
    """LastPid reads the kernel's last handed-out pid: a new process moves it."""
    last_pid = processes.LastPid()
    try:
        before = last_pid()
        assert before is not None
        subprocess.run(["true"], check=True)
        assert last_pid() != before
    finally:
        last_pid.close()


def test_a_quiet_host_is_rescanned_only_when_a_process_was_created(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """After ``rescan`` seconds the table is scanned again only if the last pid moved, and
    after ``full_rescan`` seconds in any case; a service's new child counts from that scan."""
    shell = _spawner()
    scans: list[int] = []

    def counting_scan(*args: Any) -> dict[int, processes.ProcStat]:
        scans.append(1)
        return scan_processes(*args)

    monkeypatch.setattr(processes, "scan_processes", counting_scan)
    last = [1000]
    try:
        sampler = ProcessTreeSampler(rescan=5.0, full_rescan=60.0, last_pid=lambda: last[0])
        service = ServiceProcess("svc_sh", "sh", "process", "running", shell.pid)

        def processes_at(when: float) -> int:
            usage = sampler.sample([service], monotonic=when, wall=time.time())[0].usage
            assert usage is not None
            return usage.processes

        assert processes_at(0.0) == 1 and len(scans) == 1
        assert processes_at(10.0) == 1 and len(scans) == 1  # nothing created: no scan
        assert shell.stdin is not None
        shell.stdin.write(b"go\n")
        shell.stdin.flush()
        wait_until(lambda: psutil.Process(shell.pid).children(), message="the sleep child")
        assert processes_at(20.0) == 1 and len(scans) == 1  # the fake pid has not moved
        last[0] += 1
        assert processes_at(22.0) == 2 and len(scans) == 2  # it moved: scanned, child seen
        assert processes_at(30.0) == 2 and len(scans) == 2
        assert processes_at(82.0) == 2 and len(scans) == 3  # full_rescan passed
    finally:
        for child in psutil.Process(shell.pid).children():
            child.kill()
        shell.kill()
        shell.wait()
        if shell.stdin is not None:
            shell.stdin.close()


def test_cpu_percent_is_cpu_time_over_wall_time_between_samples() -> None:
    """A child that burns CPU between two samples shows it; the first sample shows 0."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        sampler = ProcessTreeSampler()
        service = ServiceProcess("svc_busy", "busy", "process", "running", busy.pid)
        start = time.monotonic()
        first = sampler.sample([service], monotonic=start, wall=time.time())[0]
        assert first.usage is not None and first.usage.cpu_percent == 0.0
        before = sum(psutil.Process(busy.pid).cpu_times()[:2])
        wait_until(lambda: sum(psutil.Process(busy.pid).cpu_times()[:2]) - before >= 0.2,
                   message="the child to burn CPU")
        second = sampler.sample([service], monotonic=time.monotonic(), wall=time.time())[0]
        assert second.usage is not None and second.usage.cpu_percent > 0
    finally:
        busy.kill()
        busy.wait()


def test_container_usage_source_answers_for_docker_services() -> None:
    """A wired-in Docker stats source fills a Docker service's figures; None falls back."""
    from agent.metrics.sources import ServiceUsage

    class Stats:
        def container_usage(self, container_id: str) -> ServiceUsage | None:
            return ServiceUsage(12.5, 64 << 20, 9, 20, 3) if container_id == "known" else None

    sampler = ProcessTreeSampler()
    sampler.set_container_usage(Stats())
    known = ServiceProcess("svc_k", "k", "docker", "running", None, "known")
    unknown = ServiceProcess("svc_u", "u", "docker", "running", None, "no-such-container")
    first, second = sampler.sample([known, unknown], monotonic=0.0, wall=time.time())
    assert first.usage == ServiceUsage(12.5, 64 << 20, 9, 20, 3)
    assert second.usage is None and second.note == "container not found"


def test_a_dead_root_pid_does_not_rescan_every_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    """A service whose pid is gone is 'process not found' without a /proc scan per sample."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    scans: list[int] = []

    def counting_scan(*args: Any) -> dict[int, processes.ProcStat]:
        scans.append(1)
        return scan_processes(*args)

    monkeypatch.setattr(processes, "scan_processes", counting_scan)
    sampler = ProcessTreeSampler(rescan=5.0)
    service = ServiceProcess("svc_dead", "dead", "process", "crashed", dead.pid)
    for second in range(4):
        sample = sampler.sample([service], monotonic=float(second), wall=time.time())[0]
        assert sample.usage is None and sample.note == "process not found"
    assert len(scans) == 1
