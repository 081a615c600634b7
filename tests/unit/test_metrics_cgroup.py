"""Reading the agent's cgroup memory limit (v1 and v2) and a container's pids."""

from __future__ import annotations

from pathlib import Path

from agent.metrics.cgroup import CgroupReader


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_v2_limit_is_the_smallest_on_the_path(tmp_path: Path) -> None:
    """cgroup v2: the effective limit is the smallest memory.max of the cgroup and its parents."""
    root = tmp_path / "cg"
    _write(root / "cgroup.controllers", "cpu memory pids\n")
    _write(root / "system.slice" / "memory.max", "1073741824\n")
    own = root / "system.slice" / "dployr.service"
    _write(own / "memory.max", "max\n")
    _write(own / "memory.current", str(300 << 20))
    _write(own / "memory.stat", f"anon 1\ninactive_file {100 << 20}\nactive_file 5\n")
    self_cgroup = tmp_path / "self"
    _write(self_cgroup, "0::/system.slice/dployr.service\n")
    memory = CgroupReader(root, self_cgroup).memory()
    assert memory is not None
    assert memory.limit == 1 << 30
    assert memory.used == 200 << 20  # inactive page cache is not counted, as docker stats


def test_v2_without_limit_reports_none(tmp_path: Path) -> None:
    """No memory.max below 'max' anywhere: no cgroup figures, the host's are used."""
    root = tmp_path / "cg"
    _write(root / "cgroup.controllers", "memory\n")
    _write(root / "app" / "memory.max", "max\n")
    _write(root / "app" / "memory.current", "1000")
    _write(tmp_path / "self", "0::/app\n")
    assert CgroupReader(root, tmp_path / "self").memory() is None


def test_v2_inside_a_container_reads_the_namespace_root(tmp_path: Path) -> None:
    """In a container (cgroup namespace) the path is '/' and the root files are its own."""
    root = tmp_path / "cg"
    _write(root / "cgroup.controllers", "memory\n")
    _write(root / "memory.max", str(256 << 20))
    _write(root / "memory.current", str(64 << 20))
    _write(tmp_path / "self", "0::/\n")
    memory = CgroupReader(root, tmp_path / "self").memory()
    assert memory is not None and memory.limit == 256 << 20 and memory.used == 64 << 20


def test_v1_limit_and_unlimited_marker(tmp_path: Path) -> None:
    """cgroup v1: memory.limit_in_bytes counts unless it is the 'unlimited' huge number."""
    root = tmp_path / "cg"
    own = root / "memory" / "docker" / "abc"
    _write(root / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")
    _write(own / "memory.limit_in_bytes", str(512 << 20))
    _write(own / "memory.usage_in_bytes", str(100 << 20))
    _write(own / "memory.stat", f"cache 0\ntotal_inactive_file {10 << 20}\n")
    _write(tmp_path / "self", "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n")
    memory = CgroupReader(root, tmp_path / "self").memory()
    assert memory is not None and memory.limit == 512 << 20 and memory.used == 90 << 20
    _write(own / "memory.limit_in_bytes", "9223372036854771712\n")
    assert CgroupReader(root, tmp_path / "self").memory() is None


def test_unreadable_cgroup_files_mean_no_limit(tmp_path: Path) -> None:
    """A missing /proc/self/cgroup or cgroup mount is not an error: no limit is reported."""
    assert CgroupReader(tmp_path / "none", tmp_path / "missing").memory() is None


def test_container_pids_from_cgroup_procs(tmp_path: Path) -> None:
    """A container's pids come from its cgroup.procs (cgroupfs or systemd driver layouts)."""
    root = tmp_path / "cg"
    _write(root / "pids" / "docker" / "c1" / "cgroup.procs", "10\n11\n")
    _write(root / "system.slice" / "docker-c2.scope" / "cgroup.procs", "20\n")
    reader = CgroupReader(root, tmp_path / "self")
    assert reader.container_pids("c1") == [10, 11]
    assert reader.container_pids("c2") == [20]
    assert reader.container_pids("c3") is None
