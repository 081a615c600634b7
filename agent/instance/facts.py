"""Facts about the host that do not change while the agent runs, read once at start."""

from __future__ import annotations

import platform

import psutil

from agent.records import record

__all__ = ["HostFacts", "read_facts"]


@record
class HostFacts:
    os: str
    kernel: str
    architecture: str
    cpu_count: int


def read_facts() -> HostFacts:
    """The OS's pretty name, kernel release, machine architecture and logical CPU count.

    Reads ``/etc/os-release``: call it from a thread.
    """
    try:
        release = platform.freedesktop_os_release()
        os_name = release.get("PRETTY_NAME") or release.get("NAME") or platform.system()
    except OSError:
        os_name = platform.system()
    return HostFacts(os=os_name, kernel=platform.release(), architecture=platform.machine(),
                     cpu_count=psutil.cpu_count(logical=True) or 1)
