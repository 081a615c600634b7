"""The process runtime on its own: late waits, and exit statuses of runs it did not start."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from agent.supervisor import procfs
from agent.supervisor.process import ProcessRuntime
from agent.supervisor.runtime import ExitStatus, Handle, LogPaths, RunSpec
from tests.support.agent import eventually
from tests.support.services import session_of


def _spec(tmp: Path, command: str) -> RunSpec:
    (tmp / "run").mkdir(exist_ok=True)
    return RunSpec(service_id="svc_test", name="test", command=command, cwd=tmp,
                   env={"PATH": "/usr/bin:/bin"}, run_dir=tmp / "run",
                   logs=LogPaths(tmp / "run/stdout.raw", tmp / "run/stderr.raw"))


async def _gone(pid: int) -> bool:
    stat = procfs.read_stat(pid)
    return stat is None


async def test_a_wait_after_the_run_already_ended_still_gets_its_status(tmp_path: Path) -> None:
    """A run can end before anyone waits for it: the status is kept for the late wait."""
    runtime = ProcessRuntime()
    handle = await runtime.start(_spec(tmp_path, "exit 5"))
    assert handle.pid is not None
    await eventually(lambda: _gone(handle.pid or 0), message="the run to be reaped")
    assert await runtime.wait(handle) == ExitStatus(code=5)
    assert await runtime.stop(handle, 15, 1) == ExitStatus(code=5)


_ORPHAN_MAKER = textwrap.dedent("""
    import asyncio, json, sys
    from pathlib import Path
    from agent.supervisor.process import ProcessRuntime
    from agent.supervisor.runtime import LogPaths, RunSpec

    async def main():
        tmp = Path(sys.argv[1])
        spec = RunSpec(service_id="svc_test", name="test", command=sys.argv[2], cwd=tmp,
                       env={"PATH": "/usr/bin:/bin"}, run_dir=tmp / "run",
                       logs=LogPaths(tmp / "run/stdout.raw", tmp / "run/stderr.raw"))
        handle = await ProcessRuntime().start(spec)
        print(handle.to_json())

    asyncio.run(main())
""")


async def test_an_adopted_run_that_is_not_our_child_reports_its_exit_code(
        tmp_path: Path) -> None:
    """Started by another (now gone) process, adopted here: its exit code comes from the
    wrapper's status file, since only the parent could reap it."""
    (tmp_path / "run").mkdir()
    command = "read line < go; exit 7"
    subprocess.run(["mkfifo", str(tmp_path / "go")], check=True)
    made = subprocess.run([sys.executable, "-c", _ORPHAN_MAKER, str(tmp_path), command],
                          capture_output=True, text=True, check=True, cwd=Path.cwd())
    handle = Handle.from_json(made.stdout.strip().splitlines()[-1])
    assert handle.pid is not None
    try:
        stat = procfs.read_stat(handle.pid)
        assert stat is not None and stat.ppid != os.getpid()
        runtime = ProcessRuntime()
        adopted = await runtime.adopt(handle, _spec(tmp_path, command))
        assert adopted.alive
        waiter = asyncio.ensure_future(runtime.wait(handle))
        await asyncio.to_thread((tmp_path / "go").write_text, "now\n")
        assert await asyncio.wait_for(waiter, 10) == ExitStatus(code=7)
        assert json.loads(handle.to_json())["status_file"].endswith("app.exit")
    finally:
        for proc in session_of(handle.pid):
            os.kill(proc.pid, signal.SIGKILL)
