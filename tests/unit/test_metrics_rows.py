"""History rows by a reused names tuple, the row builder, and the cgroup memory watch."""

from __future__ import annotations

import math
from pathlib import Path

from agent.metrics.cgroup import CgroupReader
from agent.metrics.compute import compute_host
from agent.metrics.history import History
from agent.metrics.readings import CpuTimes, DiskReading, HostReading, MemoryReading
from agent.metrics.series import RowBuilder, host_series, service_series
from agent.metrics.snapshot import ServiceSample
from agent.metrics.sources import ServiceProcess, ServiceUsage
from agent.testing import FakeClock

T0 = 1_699_999_200.0


def _history() -> History:
    return History(interval=5.0, recent=900, history=86_400, resolution=60)


def test_rows_and_mappings_give_the_same_history() -> None:
    """append_row with one names tuple answers every query as append with dicts does."""
    by_dict, by_row = _history(), _history()
    clock = FakeClock(start=T0)
    names = ("cpu", "rss", "gone")
    for i in range(400):  # over half an hour at 5 s: both rings, a gap, a NaN
        clock.advance(5)
        values = {"cpu": float(i % 7), "rss": 1000.0 + i, "gone": math.nan if i % 5 else 3.0}
        if 100 <= i < 120:
            del values["rss"]
        by_dict.append(clock.time(), values)
        if "rss" in values:
            by_row.append_row(clock.time(), names, [values[n] for n in names])
        else:
            by_row.append_row(clock.time(), ("cpu", "gone"), [values["cpu"], values["gone"]])
    for window, step in ((600, 10), (1800, 60), (3600, 300), (86_400, 3600)):
        plan = by_dict.plan(window, step)
        assert plan is not None
        now = clock.time()
        assert by_row.query(plan, [*names, "nope"], now=now) == \
            by_dict.query(plan, [*names, "nope"], now=now)
    assert by_row.memory_bytes() == by_dict.memory_bytes()


def test_forgotten_series_are_gone_even_from_a_reused_names_tuple() -> None:
    """After forget, a row with the old names tuple starts the series afresh."""
    history = _history()
    names = ("cpu", "service:svc_1:rss_bytes")
    history.append_row(T0 + 5, names, [1.0, 5.0])
    history.forget(["service:svc_1:rss_bytes"])
    assert history.series_names == ["cpu"]
    history.append_row(T0 + 10, ("cpu",), [2.0])
    plan = history.plan(60, 5)
    assert plan is not None
    series = history.query(plan, ["service:svc_1:rss_bytes"], now=T0 + 10)
    assert series.values["service:svc_1:rss_bytes"] == [None] * len(series.timestamps)


def _host(*mountpoints: str) -> HostReading:
    disks = tuple(DiskReading(m, f"/dev/d{i}", "ext4", 100, 40 + i, 60 - i, 10, 5)
                  for i, m in enumerate(mountpoints))
    return HostReading(cpu=(CpuTimes(1.0, 2.0),), load=(0.5, 0.4, 0.3),
                       memory=MemoryReading(1000, 600, 400, 0, 0, 0), disks=disks,
                       disk_io=None, nics={}, process_count=42, boot_time=T0 - 100)


def _sample(service_id: str, usage: ServiceUsage | None) -> ServiceSample:
    return ServiceSample(ServiceProcess(service_id, service_id, "process", "running", 1), usage)


def test_row_builder_matches_the_named_series() -> None:
    """The row's names and values are host_series then each measured service's series."""
    host = compute_host(None, _host("/", "/var"), elapsed=0.0, timestamp=T0)
    samples = [_sample("svc_a", ServiceUsage(1.5, 4096, 2, 7, 1)), _sample("svc_b", None)]
    builder = RowBuilder()
    names, values = builder.row(host, samples)
    expected = {**host_series(host), **service_series(samples[0])}
    assert dict(zip(names, values, strict=True)) == expected
    again, _ = builder.row(host, samples)
    assert again is names  # unchanged series: the same tuple, recognised by identity


def test_row_builder_with_two_disks_on_one_mountpoint_keeps_names_unique() -> None:
    """Two filesystems mounted on one path give one series (the last), never a duplicate."""
    host = compute_host(None, _host("/data", "/data"), elapsed=0.0, timestamp=T0)
    names, values = RowBuilder().row(host, [])
    assert len(names) == len(set(names)) and len(names) == len(values)
    assert dict(zip(names, values, strict=True)) == host_series(host)


def test_cgroup_watch_rereads_usage_with_the_limit_found(tmp_path: Path) -> None:
    """The watch keeps the limit and re-reads usage less inactive cache on each read."""
    root = tmp_path / "cg"
    (root / "app").mkdir(parents=True)
    (root / "cgroup.controllers").write_text("memory\n")
    (root / "app" / "memory.max").write_text(str(512 << 20))
    (root / "app" / "memory.current").write_text(str(300 << 20))
    (root / "app" / "memory.stat").write_text(f"anon 1\ninactive_file {100 << 20}\n")
    (tmp_path / "self").write_text("0::/app\n")
    watch = CgroupReader(root, tmp_path / "self").watch_memory()
    assert watch is not None
    try:
        first = watch.read()
        assert (first.limit, first.used) == (512 << 20, 200 << 20)
        with (root / "app" / "memory.current").open("r+") as f:  # same file, new value
            f.write(str(400 << 20))
        assert watch.read().used == 300 << 20
    finally:
        watch.close()
    (root / "app" / "memory.max").write_text("max\n")
    assert CgroupReader(root, tmp_path / "self").watch_memory() is None
