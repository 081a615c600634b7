"""The built-in proxy's in-memory route table: host and path of a request -> route.

Rules (the same order Caddy is given, see ``routes.sort_for_matching``): routes of the exact
host first, then those of the wildcard ``*.parent`` (one label only); within a host the longest
matching path prefix wins. Built once per route change, read on every request.
"""

from __future__ import annotations

from collections.abc import Iterable

from agent.proxy.names import path_has_prefix
from agent.proxy.routes import Route, sort_for_matching

__all__ = ["RouteTable"]


class RouteTable:
    """An immutable snapshot of the routes, indexed by host."""

    def __init__(self, routes: Iterable[Route] = ()) -> None:
        self._exact: dict[str, list[Route]] = {}
        self._wildcard: dict[str, list[Route]] = {}
        count = 0
        for route in sort_for_matching(list(routes)):
            count += 1
            if route.wildcard:
                self._wildcard.setdefault(route.domain[2:], []).append(route)
            else:
                self._exact.setdefault(route.domain, []).append(route)
        self.size = count

    def match(self, host: str, path: str) -> Route | None:
        """The route for a canonical host (see ``names.host_of``) and a request path, or None."""
        for route in self._exact.get(host, ()):
            if path_has_prefix(path, route.path_prefix):
                return route
        _, dot, parent = host.partition(".")
        if dot:
            for route in self._wildcard.get(parent, ()):
                if path_has_prefix(path, route.path_prefix):
                    return route
        return None
