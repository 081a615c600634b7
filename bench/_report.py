"""The common result format of the benchmarks, and the report ``python -m bench`` writes.

Each benchmark module has ``collect(argv) -> Section``: it runs, measures its baseline or
peer in the same run, and returns rows (``figure, agent value, baseline name, baseline value,
ratio, target``) plus a markdown section with its details. ``main(argv)`` of each module
prints that section and its rows. ``python -m bench`` collects every module (quick mode by
default) and rewrites the generated parts of ``docs/benchmarks.md``: the summary at the top
and each module's section between ``<!-- bench:NAME:start -->`` and ``<!-- bench:NAME:end -->``
(the prose around them is kept).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Row", "Section", "cpu_seconds", "machine", "render_rows", "replace_block", "run_module",
           "versions"]


@dataclass(frozen=True)
class Row:
    """One figure: the agent's value against a baseline or peer measured in the same run.

    ``ratio`` is agent / baseline (None when there is no baseline value); ``target`` says what
    the issue asks for, if anything (e.g. ``>= 0.5``, ``<= 20 ms``), and ``met`` whether this
    run met it (None: no target, or not decidable).
    """

    figure: str
    agent: str
    baseline: str = "-"
    baseline_value: str = "-"
    ratio: float | None = None
    target: str = ""
    met: bool | None = None


@dataclass
class Section:
    """What one benchmark module measured."""

    name: str
    title: str
    command: str
    rows: list[Row] = field(default_factory=list)
    detail: str = ""
    error: str = ""


def run_module(collect: Callable[[list[str]], Section], argv: list[str] | None = None) -> int:
    """A benchmark module's ``main``: collect (arguments from the command line unless given),
    then print the details and the rows."""
    section = collect(sys.argv[1:] if argv is None else argv)
    print(section.detail)
    print(render_rows(section.rows))
    return 0


def fmt_ratio(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}"


def _met(met: bool | None) -> str:
    return {True: "yes", False: "**no**", None: ""}[met]


def render_rows(rows: list[Row], *, with_module: list[str] | None = None) -> str:
    """A markdown table of ``rows`` (a first column naming the module when given)."""
    head = ["figure", "agent", "baseline / peer", "baseline value", "ratio", "target", "met"]
    if with_module is not None:
        head.insert(0, "bench")
    lines = ["| " + " | ".join(head) + " |",
             "| " + " | ".join("---" if i < 2 else "---:" for i in range(len(head))) + " |"]
    for i, row in enumerate(rows):
        cells = [row.figure, row.agent, row.baseline, row.baseline_value, fmt_ratio(row.ratio),
                 row.target, _met(row.met)]
        if with_module is not None:
            cells.insert(0, with_module[i])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _run(args: list[str]) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout + done.stderr).strip()


def _first_version(text: str) -> str:
    match = re.search(r"v?(\d+\.\d+(?:\.\d+)?)", text)
    return match[1] if match else "not installed"


def versions() -> dict[str, str]:
    """Versions of the agent and of every peer the benchmarks compare with."""
    import aiohttp

    from agent import __version__

    bindir = Path(sys.executable).parent
    supervisord = bindir / "supervisord" if (bindir / "supervisord").exists() else "supervisord"
    glances = bindir / "glances" if (bindir / "glances").exists() else "glances"
    found = {
        "dployr-agent": __version__,
        "Python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "supervisord": _first_version(_run([str(supervisord), "--version"])),
        "Glances": _first_version(_run([str(glances), "--version"])),
        "nginx": _first_version(_run(["nginx", "-v"])),
        "Caddy": _first_version(_run(["caddy", "version"])),
        "Docker": _first_version(_run(["docker", "version", "--format",
                                       "{{.Server.Version}}"])),
        "wrk": _first_version(_run(["wrk", "--version"])),
        "Node.js": _first_version(_run(["node", "--version"])),
    }
    for name, path in (("nginx", "nginx"), ("Caddy", "caddy"), ("Docker", "docker")):
        if shutil.which(path) is None:
            found[name] = "not installed"
    return found


def machine() -> dict[str, str]:
    """CPU model, cores, RAM, kernel and load of this machine."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal:"))
    except (OSError, StopIteration):
        mem_kib = 0
    load = os.getloadavg()
    return {"CPU": model, "cores": str(os.cpu_count()), "RAM": f"{mem_kib / 1048576:.1f} GiB",
            "kernel": platform.release(), "OS": platform.platform(terse=True),
            "load average at start": f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"}


def replace_block(text: str, name: str, content: str, *, after: str | None = None) -> str:
    """``text`` with the block ``name`` replaced by ``content``; a missing block is added
    after the line ``after`` (a heading), or at the end."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    block = f"{start}\n{content.strip()}\n{end}"
    if start in text and end in text:
        head, _, rest = text.partition(start)
        _, _, tail = rest.partition(end)
        return head + block + tail
    if after is not None and after in text:
        head, _, tail = text.partition(after)
        return head + after + "\n\n" + block + "\n" + tail
    return text.rstrip("\n") + "\n\n" + block + "\n"


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used so far, in seconds, to the nanosecond: the sum of its
    threads' run time from ``/proc/<pid>/task/*/schedstat`` (the scheduler's own clock).

    ``cpu_times()`` (utime + stime) is counted in clock ticks of 10 ms, and a process that
    wakes on timers tends to be running when the tick lands: over 30 s an idle daemon's
    0.1 % is three ticks, so two idle daemons cannot be told apart that way. Threads that
    ended are not counted (compare windows over which the threads stay the same)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended meanwhile
    return total / 1e9
