"""``ProcessRuntime``: apps as process trees in their own session, outliving the agent.

How a run is launched::

    /bin/sh -c WRAPPER dployr-app <cwd> <status file> <command>     (session leader, setsid)
      `- ( eval <command> )         a subshell, as `sh -c <command>` would run it (may exec)

The wrapper is a few lines of ``sh`` (about 1 MB of memory). It traps the stop signals only to
outlive them: POSIX shells run a trap after the foreground child has ended, so the wrapper
waits for the app, writes the app's ``$?`` to the status file and exits with it. That is how
an agent that restarted, and so is no longer the parent, learns how an adopted app ended
(see docs/operations.md, "Exit status of adopted apps"). A shell reports death by signal N as
``128 + N``; the agent decodes it back, so an app that itself exits with a code above 128 is
reported as killed by the matching signal.

A stop that comes while the app is being forked could be lost (a signal that lands between
the fork and the child's reset of the trap), so ``stop`` first creates ``<status file>.stop``,
then signals: the forked child checks for that file after its reset and then does not start
the app.

- stdout and stderr are files opened ``O_APPEND`` in the child, never pipes to the agent.
- The agent watches the leader with a pidfd (``os.pidfd_open`` + ``loop.add_reader``), for
  its own children and adopted ones alike; no thread per process, no SIGCHLD handler.
- A handle is ``{pid, start_ticks, boot_id, status_file}``: a pid whose start time differs is
  another process and is never signalled.
- Stop: the signal goes to the process group, then the grace period, then SIGKILL to the
  group, then every process left in the session is killed. A natural exit sweeps leftovers
  too, so no orphan of a run survives it. Processes that leave the session (``setsid``,
  daemonizing) escape; running them needs cgroups, which this runtime does not use.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from agent.supervisor import procfs
from agent.supervisor.runtime import (
    Adopted,
    ExitStatus,
    Handle,
    RunSpec,
    RuntimeFailure,
    TreeStats,
)

__all__ = ["WRAPPER", "ProcessRuntime"]

log = structlog.get_logger("agent.supervisor.process")

#: The session leader of every run. $1 = cwd, $2 = status file, $3 = the command.
WRAPPER = """trap : HUP INT QUIT TERM USR1 USR2
cd -- "$1" || exit 126
( [ ! -e "$2.stop" ] || exit 143; c=$3; set --; eval "unset c; $c" ) 2>&3 3>&-
st=$?
printf '%s\\n' "$st" > "$2"
exit "$st"
"""
_SHELL = "/bin/sh"
_MARKERS = ("dployr-app", "dployr-build")
_KILL_WAIT = 10.0      # seconds to wait for the kernel after SIGKILL
_SETTLE_POLL = 0.05    # seconds between checks for session members during a stop
MEMBERS_TTL = 5.0      # seconds a session's member list is reused for stats
_ENDED_KEPT = 1024     # exit statuses remembered for late wait() calls


@dataclass(eq=False)
class _Watch:
    pid: int
    start_ticks: int
    pidfd: int
    status_file: Path
    exited: asyncio.Future[ExitStatus]
    stopping: bool = False
    sent_kill: bool = False
    finishing: asyncio.Task[None] | None = field(default=None, repr=False)


def _stop_marker(status_file: Path) -> Path:
    return status_file.with_name(status_file.name + ".stop")


def _status_from_file(path: Path) -> ExitStatus:
    try:
        text = path.read_text().strip()
    except OSError:
        return ExitStatus()
    return ExitStatus.from_shell(int(text)) if text.isdigit() else ExitStatus()


def _try_reap(pid: int) -> ExitStatus | None:
    """The wait status when ``pid`` is our exited child, else None."""
    try:
        reaped, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return ExitStatus.from_wait(status) if reaped == pid else None


def _kill_exact(proc: procfs.ProcStat, sig: int) -> None:
    """Signal one process through a pidfd, after checking it is still the same process."""
    try:
        fd = os.pidfd_open(proc.pid)
    except OSError:
        return
    try:
        now = procfs.read_stat(proc.pid)
        if now is not None and now.start_ticks == proc.start_ticks:
            signal.pidfd_send_signal(fd, sig)
    except OSError:
        pass
    finally:
        os.close(fd)


def _any_member(sid: int, leader_start: int) -> bool:
    return bool(procfs.session_members(sid, leader_start))


def _scan_sessions(leaders: list[tuple[int, int]]) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """(pid, start_ticks) of the members of each leader's session. One pass over /proc."""
    procs = list(procfs.iter_processes())
    return {(sid, start): [(p.pid, p.start_ticks)
                           for p in procfs.session_members(sid, start, processes=procs)]
            for sid, start in leaders}


def _kill_session(sid: int, leader_start: int, sig: int = signal.SIGKILL) -> int:
    """Signal every live process of the session; return how many there were. Blocking."""
    members = procfs.session_members(sid, leader_start)
    for proc in members:
        _kill_exact(proc, sig)
    return len(members)


class ProcessRuntime:
    """Runs apps as process trees in their own session. Implements ``Runtime``."""

    kind = "process"

    def __init__(self) -> None:
        self._watches: dict[int, _Watch] = {}
        self._members: dict[tuple[int, int], tuple[float, list[tuple[int, int]]]] = {}
        self._ended: dict[tuple[int, int], ExitStatus] = {}

    # -- launching and adopting ---------------------------------------------------------------

    async def start(self, spec: RunSpec) -> Handle:
        """Spawn the wrapper in a new session; returns once the process exists."""
        if spec.command is None:
            raise RuntimeFailure("the process runtime needs a command")
        if spec.cwd is None or not spec.cwd.is_dir():
            raise RuntimeFailure(f"the working directory {spec.cwd} does not exist")
        spec.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        status_file = spec.run_dir / f"{spec.name_of_run}.exit"
        status_file.unlink(missing_ok=True)
        _stop_marker(status_file).unlink(missing_ok=True)
        marker = "dployr-build" if spec.kind == "build" else "dployr-app"
        argv = [_SHELL, "-c", WRAPPER, marker, str(spec.cwd), str(status_file), spec.command]
        append = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        # The wrapper's own stderr is /dev/null (so that the shell's "Terminated" notices
        # stay out of the app's log); the app gets the stderr file from fd 3.
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(spec.logs.stdout), append, 0o600),
            (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_OPEN, 3, str(spec.logs.stderr), append, 0o600),
        ]
        try:
            pid = await asyncio.to_thread(
                os.posix_spawn, _SHELL, argv, dict(spec.env), file_actions=actions, setsid=True,
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ), setsigmask=())
        except OSError as exc:
            raise RuntimeFailure(f"cannot start the process: {exc.strerror}") from None
        pidfd = os.pidfd_open(pid)
        stat = procfs.read_stat(pid)
        start_ticks = stat.start_ticks if stat is not None else 0
        watch = self._watch(pid, start_ticks, pidfd, status_file)
        log.debug("process_spawned", service_id=spec.service_id, pid=pid, kind=spec.kind)
        return self._handle(watch)

    async def adopt(self, handle: Handle, spec: RunSpec) -> Adopted:
        """Watch a run started by an earlier agent process, if it is still the same process."""
        data = handle.data
        pid, start_ticks = int(data["pid"]), int(data["start_ticks"])
        status_file = Path(str(data["status_file"]))
        if data.get("boot_id") != procfs.boot_id():
            return Adopted(alive=False)  # a reboot: the pid means nothing any more
        if pid in self._watches:
            return Adopted(alive=not self._watches[pid].exited.done())
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            # The leader died and was reaped (by init) while no agent watched it; what is
            # left of its session is swept as after any end, or the run that replaces it
            # would be a duplicate of an app still running.
            await asyncio.to_thread(_kill_session, pid, start_ticks)
            return Adopted(alive=False, status=_status_from_file(status_file))
        except OSError:
            return Adopted(alive=False, status=_status_from_file(status_file))
        stat = procfs.read_stat(pid)
        if stat is not None and stat.start_ticks != start_ticks:
            os.close(pidfd)  # the pid now belongs to another process: never signal it
            log.info("adopt_pid_reused", service_id=spec.service_id, pid=pid)
            return Adopted(alive=False, status=_status_from_file(status_file))
        if stat is None:
            os.close(pidfd)
            await asyncio.to_thread(_kill_session, pid, start_ticks)
            return Adopted(alive=False, status=_status_from_file(status_file))
        if stat.zombie:
            os.close(pidfd)
            status = _try_reap(pid) or _status_from_file(status_file)
            await asyncio.to_thread(_kill_session, pid, start_ticks)
            return Adopted(alive=False, status=status)
        self._watch(pid, start_ticks, pidfd, status_file)
        return Adopted(alive=True)

    async def discover(self, specs: Sequence[RunSpec]) -> dict[str, list[Handle]]:
        """Live runs of each spec's service found by their command line (one /proc scan).

        Finds runs an earlier agent started but could not record (it died right after the
        spawn), and duplicates; keyed by service id.
        """
        # Any status file in a service's run dir: "app", "build", and a switch's candidate.
        wanted = {str(spec.run_dir): spec.service_id for spec in specs}

        def scan() -> list[tuple[str, int, int, str]]:
            found = []
            for proc in procfs.iter_processes():
                if proc.zombie or proc.pid != proc.session:
                    continue
                argv = procfs.read_cmdline(proc.pid)
                if len(argv) < 7 or argv[0] != _SHELL or argv[3] not in _MARKERS:
                    continue
                run_dir = str(Path(argv[5]).parent)
                if argv[5].endswith(".exit") and run_dir in wanted:
                    found.append((wanted[run_dir], proc.pid, proc.start_ticks, argv[5]))
            return found

        result: dict[str, list[Handle]] = {}
        for service_id, pid, ticks, status_file in await asyncio.to_thread(scan):
            result.setdefault(service_id, []).append(Handle(self.kind, {
                "pid": pid, "start_ticks": ticks, "boot_id": procfs.boot_id(),
                "status_file": status_file}))
        return result

    # -- watching ----------------------------------------------------------------------------

    def _watch(self, pid: int, start_ticks: int, pidfd: int, status_file: Path) -> _Watch:
        loop = asyncio.get_running_loop()
        watch = _Watch(pid=pid, start_ticks=start_ticks, pidfd=pidfd, status_file=status_file,
                       exited=loop.create_future())
        self._watches[pid] = watch
        loop.add_reader(pidfd, self._on_exit, watch)
        return watch

    def _handle(self, watch: _Watch) -> Handle:
        return Handle(self.kind, {"pid": watch.pid, "start_ticks": watch.start_ticks,
                                  "boot_id": procfs.boot_id(),
                                  "status_file": str(watch.status_file)})

    def _on_exit(self, watch: _Watch) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(watch.pidfd)
        if watch.finishing is None:
            watch.finishing = loop.create_task(self._finish(watch))

    async def _finish(self, watch: _Watch) -> None:
        """The leader ended: kill what is left of its session (unless a stop is doing it),
        then reap it (while unreaped it keeps the session id reserved)."""
        try:
            if not watch.stopping:
                await asyncio.to_thread(_kill_session, watch.pid, watch.start_ticks)
            status = _try_reap(watch.pid)
            if status is None:
                status = _status_from_file(watch.status_file)
            if not status.known and watch.sent_kill:
                status = ExitStatus(signal=int(signal.SIGKILL))
        finally:
            with contextlib.suppress(OSError):
                os.close(watch.pidfd)
            self._watches.pop(watch.pid, None)
        # Kept for a wait() or stop() that comes after the end (a very short run can end
        # before its supervisor has even recorded it).
        self._ended[(watch.pid, watch.start_ticks)] = status
        while len(self._ended) > _ENDED_KEPT:
            self._ended.pop(next(iter(self._ended)))
        if not watch.exited.done():
            watch.exited.set_result(status)

    def _get(self, handle: Handle) -> _Watch | None:
        pid = handle.pid
        watch = self._watches.get(pid) if pid is not None else None
        if watch is None or watch.start_ticks != int(handle.data.get("start_ticks", -1)):
            return None
        return watch

    def _ended_status(self, handle: Handle) -> ExitStatus:
        key = (handle.pid or 0, int(handle.data.get("start_ticks", -1)))
        return self._ended.get(key, ExitStatus())

    async def wait(self, handle: Handle) -> ExitStatus:
        """How the run ended; waits for it. Unknown for a handle this runtime never watched."""
        watch = self._get(handle)
        if watch is None:
            return self._ended_status(handle)
        return await asyncio.shield(watch.exited)

    # -- signals and stop --------------------------------------------------------------------

    def _send(self, watch: _Watch, sig: int) -> bool:
        if watch.exited.done() or watch.finishing is not None:
            return False
        try:
            # Signal 0 checks that the leader still exists (perhaps as a zombie): then its
            # group id is still ours and cannot belong to another process.
            signal.pidfd_send_signal(watch.pidfd, 0)
            os.killpg(watch.pid, sig)
        except ProcessLookupError:
            return False
        return True

    async def signal(self, handle: Handle, sig: int) -> bool:
        """Send ``sig`` to the app's process group."""
        watch = self._get(handle)
        return watch is not None and self._send(watch, sig)

    async def stop(self, handle: Handle, sig: int, grace: float) -> ExitStatus:
        """Signal the group, wait ``grace``, SIGKILL the group, kill the session's leftovers."""
        watch = self._get(handle)
        if watch is None:
            return self._ended_status(handle)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        watch.stopping = True
        with contextlib.suppress(OSError):
            _stop_marker(watch.status_file).touch()
        self._send(watch, sig)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(watch.exited), grace)
        if not watch.exited.done():
            watch.sent_kill = True
            self._send(watch, signal.SIGKILL)
        # The leader is gone or dying; give the rest of the group what is left of the grace.
        # Polling /proc: the kernel offers no event for "the last process of a session ended".
        while loop.time() < deadline and await asyncio.to_thread(  # noqa: ASYNC110
                _any_member, watch.pid, watch.start_ticks):
            await asyncio.sleep(_SETTLE_POLL)
        await asyncio.to_thread(_kill_session, watch.pid, watch.start_ticks)
        try:
            return await asyncio.wait_for(asyncio.shield(watch.exited), _KILL_WAIT)
        except TimeoutError:
            raise RuntimeFailure("the process did not end after SIGKILL") from None

    # -- resources ---------------------------------------------------------------------------

    async def stats(self, handles: Sequence[Handle]) -> Mapping[str, TreeStats]:
        """CPU seconds, resident memory and process count of each handle's session.

        Finding a session's members takes a pass over /proc (in a thread); members are then
        remembered for MEMBERS_TTL seconds, so that a status call in between only reads the
        few /proc files of that app's own processes.
        """
        wanted = [(h.to_json(), int(h.data["pid"]), int(h.data["start_ticks"])) for h in handles]
        now = time.monotonic()
        stale = [w for w in wanted
                 if now - self._members.get((w[1], w[2]), (-MEMBERS_TTL, []))[0] >= MEMBERS_TTL]
        if stale:
            # One pass serves every watched run, so passes happen once per TTL at most.
            leaders = {(pid, start) for _, pid, start in stale}
            leaders.update((w.pid, w.start_ticks) for w in self._watches.values())
            found = await asyncio.to_thread(_scan_sessions, sorted(leaders))
            for leader, members in found.items():
                self._members[leader] = (now, members)
        result: dict[str, TreeStats] = {}
        for key, pid, start in wanted:
            procs = [stat for mpid, mstart in self._members.get((pid, start), (0.0, []))[1]
                     if (stat := procfs.read_stat(mpid)) is not None
                     and stat.start_ticks == mstart and not stat.zombie]
            if procs:
                result[key] = TreeStats(cpu_seconds=sum(p.cpu_seconds for p in procs),
                                        memory_bytes=sum(p.rss_bytes for p in procs),
                                        processes=len(procs))
            else:
                self._members.pop((pid, start), None)
        return result

    def release(self, handle: Handle) -> None:
        """Stop watching (agent shutdown). The app keeps running; a later agent adopts it."""
        watch = self._get(handle)
        if watch is None:
            return
        self._watches.pop(watch.pid, None)
        if watch.finishing is None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(watch.pidfd)
            os.close(watch.pidfd)
        if not watch.exited.done():
            watch.exited.cancel()

    def close(self) -> None:
        """Release every watched process."""
        for watch in list(self._watches.values()):
            self.release(self._handle(watch))
