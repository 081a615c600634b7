"""What each benchmark that starts an agent gives it: free loopback ports, and an environment
of its own.

An agent started with the defaults would bind its built-in proxy on 127.0.0.1:8080, which a
developer's ``make run`` agent already holds: the benchmark's agent then dies at startup and the
benchmark only sees that it never answered. So every benchmark agent gets its proxy on a free
port, and none of the caller's ``DPLOYR_*`` settings.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

__all__ = ["agent_env", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def agent_env(state: Path, **settings: str) -> dict[str, str]:
    """The environment for a benchmark's agent: this process's without its ``DPLOYR_*``
    variables, the agent's state under ``state``, ``settings`` (full ``DPLOYR_`` names), and
    its built-in proxy on a free port unless ``settings`` names one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DPLOYR_")}
    env["DPLOYR_STATE__DIR"] = str(state)
    env.update(settings)
    env.setdefault("DPLOYR_PROXY__LISTEN", f"127.0.0.1:{free_port()}")
    return env
