"""The seam between proxy routes and services: where does a service's traffic go right now?

A route names a service, never a fixed address. The proxy asks a ``ServiceLocator`` for the
service's current ``Target`` on every request (built-in proxy) or whenever it re-applies its
configuration (Caddy), so when a new release takes over the traffic follows it.

The services side implements this Protocol; ``agent.testing.MemoryServiceLocator`` is a simple
in-memory implementation used by tests and, until the supervisor provides the real one, by
``create_app``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from agent.records import record

__all__ = ["ServiceLocator", "StaticSite", "Target", "Upstream"]


@record
class Upstream:
    """An HTTP server on a (normally loopback) address: the current release of a service."""

    host: str
    port: int

    @property
    def authority(self) -> str:
        """``host:port`` with IPv6 hosts in brackets, as used in URLs and Caddy's ``dial``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@record
class StaticSite:
    """A directory of files served by the proxy itself (``runtime: "static"`` deployments)."""

    root: Path


Target = Upstream | StaticSite


class ServiceLocator(Protocol):
    """Answers for the proxy which services exist and where each one listens now.

    Both methods are called on the event loop and must not block.
    """

    def exists(self, service_id: str) -> bool:
        """Whether ``service_id`` names a known service (running or not)."""
        ...

    def target(self, service_id: str, port: int | None) -> Target | None:
        """Where traffic for the service (and its declared ``port``, if any) goes now.

        ``None`` means the service is known but has nothing to serve (stopped, crashed,
        not yet deployed): the proxy answers 502.
        """
        ...
