"""Builds run as real shell commands: output logged with timestamps, exit codes, time limits."""

from __future__ import annotations

import os
import re
from pathlib import Path

import psutil
import pytest

from agent.clock import SystemClock
from agent.deploy.build import Builder, RuntimeEnv
from agent.deploy.errors import BuildFailed
from agent.deploy.logfile import DeployLog
from agent.deploy.toolchains import Toolchain, ToolchainResolver
from agent.logs import LogFiles, tail
from agent.testing import FakeClock
from tests.support.agent import wait_until

STAMP = re.compile(r"^(\d+) \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z (\w+) (.*)$")


@pytest.fixture
def builder(tmp_path: Path) -> Builder:
    return Builder(clock=SystemClock(), cache_dir=tmp_path / "cache", kill_grace=1.0)


@pytest.fixture
def deploy_log(tmp_path: Path) -> DeployLog:
    return DeployLog(tmp_path / "logs" / "deploy.log", SystemClock())


def build_lines(log: DeployLog) -> list[str]:
    lines = log.read_text().splitlines()
    matches = [STAMP.match(line) for line in lines]
    assert all(matches), lines
    assert [int(m.group(1)) for m in matches if m] == list(range(1, len(lines) + 1))
    return [m.group(3) for m in matches if m and m.group(2) == "build"]


async def test_successful_build_logs_output(tmp_path: Path, builder: Builder, deploy_log: DeployLog) -> None:
    """A build's stdout and stderr land in the log, line by line, stamped; exit code 0."""
    result = await builder.run("echo one; echo two >&2; printf 'no newline'", cwd=tmp_path,
                               runtime_env=RuntimeEnv(), env={}, deploy_log=deploy_log)
    assert result.ok and result.exit_code == 0 and result.duration >= 0
    assert build_lines(deploy_log) == ["one", "two", "no newline"]
    assert oct((tmp_path / "logs" / "deploy.log").stat().st_mode & 0o777) == "0o600"


async def test_failed_build_reports_exit_code(tmp_path: Path, builder: Builder,
                                              deploy_log: DeployLog) -> None:
    """A failing command gives its exit code and the log says so."""
    result = await builder.run("echo compiling; exit 3", cwd=tmp_path, runtime_env=RuntimeEnv(),
                               env={}, deploy_log=deploy_log)
    assert not result.ok and result.exit_code == 3 and not result.timed_out
    assert "build exited with code 3" in deploy_log.read_text()


async def test_environment_is_built_not_inherited(tmp_path: Path, builder: Builder, deploy_log: DeployLog,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The toolchain dir comes first on PATH, the deployment env is set, the agent's env is not leaked."""
    monkeypatch.setenv("DPLOYR_AUTH__SECRET", "agent-secret-value")
    tool_dir = tmp_path / "toolbin"
    tool_dir.mkdir()
    (tool_dir / "mytool").write_text("#!/bin/sh\necho tool-ran\n")
    (tool_dir / "mytool").chmod(0o755)
    result = await builder.run('mytool; echo "path=$PATH"; echo "greeting=$GREETING"; env',
                               cwd=tmp_path, runtime_env=RuntimeEnv((str(tool_dir),)),
                               env={"GREETING": "hi there"}, deploy_log=deploy_log)
    assert result.ok
    lines = build_lines(deploy_log)
    assert lines[0] == "tool-ran"
    assert next(ln for ln in lines if ln.startswith("path=")).startswith(f"path={tool_dir}:")
    assert "greeting=hi there" in lines
    assert "agent-secret-value" not in deploy_log.read_text()


async def test_timeout_kills_the_whole_group(tmp_path: Path, builder: Builder, deploy_log: DeployLog) -> None:
    """A build over its time limit is killed with every process it started; nothing is orphaned."""
    pids = tmp_path / "pids"
    command = f"sleep 300 & echo $! > {pids}; (trap '' TERM; sleep 300) & echo $! >> {pids}; sleep 300"
    result = await builder.run(command, cwd=tmp_path, runtime_env=RuntimeEnv(), env={},
                               deploy_log=deploy_log, time_limit=1.0)
    assert result.timed_out and result.exit_code is None and not result.ok
    children = [int(p) for p in pids.read_text().split()]
    assert len(children) == 2
    wait_until(lambda: not any(_alive(pid) for pid in children), timeout=10,
               message="the build's background processes to be gone")
    assert "build timed out" in deploy_log.read_text()


async def test_background_leftovers_killed_after_success(tmp_path: Path, builder: Builder,
                                                         deploy_log: DeployLog) -> None:
    """A build that exits 0 but left `cmd &` behind still has it killed; the build returns."""
    pids = tmp_path / "pids"
    result = await builder.run(f"sleep 300 & echo $! > {pids}; echo done", cwd=tmp_path,
                               runtime_env=RuntimeEnv(), env={}, deploy_log=deploy_log)
    assert result.ok
    pid = int(pids.read_text())
    wait_until(lambda: not _alive(pid), timeout=10, message="the leftover sleep to be killed")


async def test_python_release_gets_its_own_venv(tmp_path: Path, builder: Builder,
                                                deploy_log: DeployLog) -> None:
    """A Python toolchain prepares <release>/venv; the build's python and pip are the venv's."""
    toolchain = await ToolchainResolver(tmp_path / "tc").resolve("python", "3.11")
    release = tmp_path / "release"
    (release / "app").mkdir(parents=True)
    runtime_env = await builder.prepare(toolchain, release, deploy_log)
    assert runtime_env.path_dirs[0] == str(release / "venv" / "bin")
    assert runtime_env.variables["VIRTUAL_ENV"] == str(release / "venv")
    result = await builder.run('python -c "import sys; print(sys.prefix)"; pip --version',
                               cwd=release / "app", runtime_env=runtime_env, env={},
                               deploy_log=deploy_log)
    assert result.ok
    lines = build_lines(deploy_log)
    assert str(release / "venv") in lines
    assert any(ln.startswith("pip ") and str(release / "venv") in ln for ln in lines)


async def test_venv_failure_is_a_build_failure(tmp_path: Path, builder: Builder,
                                               deploy_log: DeployLog) -> None:
    """An interpreter that cannot make a venv fails the build with its exit code."""
    broken = tmp_path / "bin" / "python3"
    broken.parent.mkdir()
    broken.write_text("#!/bin/sh\necho 'No module named venv' >&2\nexit 1\n")
    broken.chmod(0o755)
    with pytest.raises(BuildFailed) as err:
        await builder.prepare(Toolchain("python", "3.99.0", broken, "system"), tmp_path, deploy_log)
    assert err.value.exit_code == 1 and "No module named venv" in deploy_log.read_text()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_log_lines_never_hold_secrets(tmp_path: Path) -> None:
    """A DeployLog given secrets writes them as [redacted]."""
    log = DeployLog(tmp_path / "d.log", SystemClock(), secrets=["tok-abcdef"])
    log.write(["cloning with tok-abcdef"])
    assert "tok-abcdef" not in log.read_text() and "[redacted]" in log.read_text()
    assert os.stat(tmp_path / "d.log").st_mode & 0o777 == 0o600


def test_seq_continues_across_runs(tmp_path: Path) -> None:
    """A later run's log lines continue the file's sequence numbers (resume points for followers)."""
    clock = FakeClock()
    DeployLog(tmp_path / "d.log", clock).write(["one", "two"], "deploy")
    DeployLog(tmp_path / "d.log", clock).write(["three"], "git")
    lines = (tmp_path / "d.log").read_text().splitlines()
    assert lines == [f"{i} 2023-11-14T22:13:20.000000Z {src} {text}" for i, src, text in
                     [(1, "deploy", "one"), (2, "deploy", "two"), (3, "git", "three")]]


def test_rotation_keeps_one_older_file_and_the_sequence(tmp_path: Path) -> None:
    """Past max_bytes the log becomes d.log.1; numbering goes on and readers find every line by seq."""
    path = tmp_path / "logs" / "d.log"
    for run in range(6):
        DeployLog(path, FakeClock(), max_bytes=400).write([f"run {run} line {i}" for i in range(3)])
    files = LogFiles(path.parent, max_bytes=1 << 40, max_files=1, name="d.log")
    assert [p.name for p in files.newest_first()] == ["d.log", "d.log.1"]
    lines = tail(files, 1000)
    seqs = [line.seq for line in lines]
    assert seqs == list(range(seqs[0], 19)) and lines[-1].text == b"run 5 line 2"
    assert path.stat().st_size <= 400
