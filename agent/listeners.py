"""Listening sockets for the agent's servers (the API, the built-in proxy).

Bound here, synchronously, from a ``host:port`` setting, then handed to the event loop: a
host given as an address is never resolved, so starting the agent costs no resolver call.
(uvloop resolves a host passed to ``create_server`` on libuv's thread pool, which starts
four threads that then stay, for half a megabyte of resident memory.)
"""

from __future__ import annotations

import socket

from agent.config import parse_listen

__all__ = ["bind_listener"]


def bind_listener(listen: str, *, backlog: int = 1024) -> socket.socket:
    """A TCP socket bound to ``listen`` (``host:port``, ``[v6]:port``) and listening, with
    SO_REUSEADDR. Raises OSError when the address cannot be bound (in use, not local)."""
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=backlog)
    sock.setblocking(False)
    return sock
