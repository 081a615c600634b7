"""The interface both reverse proxies implement, and the state they report."""

from __future__ import annotations

from dataclasses import field
from typing import Literal, Protocol

from agent.proxy.routes import RouteChange
from agent.records import record

__all__ = ["BackendName", "ProxyBackend", "ProxyStatus"]

BackendName = Literal["builtin", "caddy"]


@record
class ProxyStatus:
    """What the proxy reports about itself (for the instance and proxy status endpoints).

    ``reachable``: the built-in listener is up, or Caddy's admin API answered the last call.
    ``in_sync``: the proxy serves exactly the stored routes (always true for the built-in one
    once started). ``last_sync``: epoch seconds of the last successful (re)application.
    ``error``: the last failure, one line, or None once it has recovered.
    """

    backend: BackendName
    reachable: bool
    in_sync: bool
    listen: tuple[str, ...]
    routes: int
    last_sync: float | None = None
    error: str | None = None
    details: dict[str, str] = field(default_factory=dict)


class ProxyBackend(Protocol):
    """A reverse proxy serving the stored routes. Lives from ``start`` to ``stop``."""

    @property
    def name(self) -> BackendName:
        ...

    async def start(self) -> None:
        """Begin serving every stored route. Raises OSError if a listener cannot bind."""
        ...

    async def stop(self) -> None:
        """Stop the agent's side. Traffic already configured in an external proxy (Caddy)
        keeps flowing: apps outlive the agent."""
        ...

    async def routes_changed(self, change: RouteChange) -> None:
        """A route was created or deleted (called after the commit)."""
        ...

    async def refresh(self, service_id: str) -> None:
        """The service's target changed (a new release took over, it stopped or started).

        Called by the supervisor after changing what the locator answers. When it returns,
        no new request is sent to the previous target; requests it already received may
        still be running, so the old release is then stopped gracefully (finishing them).
        """
        ...

    def status(self) -> ProxyStatus:
        """The proxy's current state, without doing I/O."""
        ...
