"""What the client connections of one built-in proxy share (``downstream``, ``exchange``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from agent.proxy.headers import TrustedNetworks
from agent.proxy.locator import ServiceLocator
from agent.proxy.table import RouteTable
from agent.proxy.upstream import UpstreamPool

__all__ = ["ClientSide", "Handoff", "ProxyCore"]

#: Gives a client connection away: its transport and the bytes it received unread.
Handoff = Callable[[asyncio.Transport, bytes], None]


class ClientSide(Protocol):
    """A client connection as the core sees it."""

    transport: asyncio.Transport

    def close_if_idle(self, before: float) -> None:
        """Close unless an answer is under way, if waiting for a request since ``before``."""


class ProxyCore:
    """The route table, the pool, the locator, and the open client connections.

    ``table`` is replaced whole when routes change; ``closing`` is set once the proxy stops;
    ``drained`` is set while no client connection is open.
    """

    def __init__(self, *, pool: UpstreamPool, locator: ServiceLocator,
                 trusted: TrustedNetworks, handoff: Handoff, idle_timeout: float) -> None:
        self.pool = pool
        self.locator = locator
        self.trusted = trusted
        self.handoff = handoff
        self.idle_timeout = idle_timeout
        self.table = RouteTable()
        self.closing = False
        self.connections: set[ClientSide] = set()
        self.drained = asyncio.Event()
        self.drained.set()

    def opened(self, conn: ClientSide) -> None:
        self.connections.add(conn)
        self.drained.clear()

    def closed(self, conn: ClientSide) -> None:
        self.connections.discard(conn)
        if not self.connections:
            self.drained.set()

    def sweep(self, now: float) -> None:
        """Close connections idle (or sending a head) for longer than ``idle_timeout``."""
        for conn in list(self.connections):
            conn.close_if_idle(now - self.idle_timeout)

    def close_idle(self) -> None:
        """Stopping: close every connection that is not answering a request now; the others
        close once their answer is complete."""
        self.closing = True
        for conn in list(self.connections):
            conn.close_if_idle(float("inf"))
