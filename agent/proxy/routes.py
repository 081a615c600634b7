"""Proxy routes: a domain (and path prefix) served by a service. Knows nothing of HTTP.

Routes live in the ``proxy_routes`` table. Every change is written together with its event
(``route.created`` / ``route.deleted``) in one transaction, and after the commit the listeners
(the active proxy backend) are awaited, so when ``create`` returns the proxy already routes
the new domain. A listener that fails (Caddy unreachable) does not undo the change: the route
is stored, the backend reports the error in its status and catches up by itself.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

import structlog

from agent.clock import Clock
from agent.errors import Conflict, InvalidRequest, NotFound
from agent.ids import new_id
from agent.proxy.locator import ServiceLocator
from agent.proxy.names import InvalidName, normalize_domain, normalize_path_prefix
from agent.records import record
from agent.store import Database, Tx

__all__ = ["Route", "RouteChange", "RouteListener", "RouteService", "sort_for_matching"]

log = structlog.get_logger("agent.proxy")


@record
class Route:
    """One stored route, in canonical form (see ``agent.proxy.names``)."""

    id: str
    domain: str
    path_prefix: str
    service_id: str
    port: int | None
    created_at: float

    @property
    def wildcard(self) -> bool:
        return self.domain.startswith("*.")

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Route:
        return cls(id=row["id"], domain=row["domain"], path_prefix=row["path_prefix"],
                   service_id=row["service_id"], port=row["port"], created_at=row["created_at"])

    def event_data(self) -> dict[str, Any]:
        """The payload of this route's events."""
        return {"route_id": self.id, "domain": self.domain, "path_prefix": self.path_prefix,
                "service_id": self.service_id, "port": self.port}


@record
class RouteChange:
    """What changed, handed to listeners after the commit."""

    kind: Literal["created", "deleted"]
    routes: tuple[Route, ...]


RouteListener = Callable[[RouteChange], Awaitable[None]]


class RouteService:
    """Create, list, fetch and delete routes; tell the proxy backend about every change."""

    def __init__(self, db: Database, locator: ServiceLocator, clock: Clock) -> None:
        self._db = db
        self._locator = locator
        self._clock = clock
        self._listeners: list[RouteListener] = []

    def add_listener(self, listener: RouteListener) -> None:
        """Await ``listener`` after every committed change (errors are logged, not raised)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: RouteListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    # -- reads ---------------------------------------------------------------------------------

    def all(self) -> list[Route]:
        """Every route, oldest first (the proxy's whole table; small and indexed)."""
        return [Route.from_row(r) for r in self._db.query("SELECT * FROM proxy_routes ORDER BY id")]

    def for_service(self, service_id: str) -> list[Route]:
        """The routes of one service, oldest first."""
        rows = self._db.query("SELECT * FROM proxy_routes WHERE service_id = ? ORDER BY id",
                              (service_id,))
        return [Route.from_row(r) for r in rows]

    def get(self, route_id: str) -> Route:
        """The route; NotFound if there is none with that id."""
        row = self._db.query_one("SELECT * FROM proxy_routes WHERE id = ?", (route_id,))
        if row is None:
            raise NotFound(f"No route with id '{route_id}'")
        return Route.from_row(row)

    # -- writes --------------------------------------------------------------------------------

    async def create(self, *, domain: str, service_id: str, port: int | None = None,
                     path_prefix: str = "/") -> Route:
        """A new route, live in the proxy when this returns.

        InvalidRequest for a bad domain or prefix or an unknown service; Conflict when the
        domain and path prefix are already routed.
        """
        try:
            domain = normalize_domain(domain)
        except InvalidName as exc:
            raise InvalidRequest("Invalid value for 'domain'", field="domain", issue=str(exc)) from None
        try:
            path_prefix = normalize_path_prefix(path_prefix)
        except InvalidName as exc:
            raise InvalidRequest("Invalid value for 'path_prefix'", field="path_prefix",
                                 issue=str(exc)) from None
        if not self._locator.exists(service_id):
            raise InvalidRequest(f"No service with id '{service_id}'", field="service_id",
                                 issue="No such service")
        route = Route(id=new_id("rte"), domain=domain, path_prefix=path_prefix,
                      service_id=service_id, port=port, created_at=self._clock.time())

        def _insert(tx: Tx) -> None:
            tx.execute("INSERT INTO proxy_routes (id, domain, path_prefix, service_id, port,"
                       " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                       (route.id, domain, path_prefix, service_id, port, route.created_at))
            tx.emit("route.created", route.event_data())

        try:
            await self._db.write(_insert)
        except sqlite3.IntegrityError:
            raise Conflict(f"'{domain}' with path prefix '{path_prefix}' is already routed",
                           details={"field": "domain", "issue": "Already routed"}) from None
        log.info("route_created", route_id=route.id, domain=domain, path_prefix=path_prefix,
                 service_id=service_id)
        await self._notify(RouteChange("created", (route,)))
        return route

    async def delete(self, route_id: str) -> Route:
        """Delete the route (traffic stops when this returns); NotFound if absent."""

        def _delete(tx: Tx) -> Route | None:
            row = tx.execute("SELECT * FROM proxy_routes WHERE id = ?", (route_id,)).fetchone()
            if row is None:
                return None
            route = Route.from_row(row)
            tx.execute("DELETE FROM proxy_routes WHERE id = ?", (route_id,))
            tx.emit("route.deleted", route.event_data())
            return route

        route = await self._db.write(_delete)
        if route is None:
            raise NotFound(f"No route with id '{route_id}'")
        log.info("route_deleted", route_id=route.id, domain=route.domain)
        await self._notify(RouteChange("deleted", (route,)))
        return route

    async def delete_routes_for_service(self, service_id: str) -> list[Route]:
        """Delete every route of a service (when the service goes away); return them."""

        def _delete(tx: Tx) -> list[Route]:
            rows = tx.execute("SELECT * FROM proxy_routes WHERE service_id = ? ORDER BY id",
                              (service_id,)).fetchall()
            routes = [Route.from_row(r) for r in rows]
            for route in routes:
                tx.execute("DELETE FROM proxy_routes WHERE id = ?", (route.id,))
                tx.emit("route.deleted", route.event_data())
            return routes

        routes = await self._db.write(_delete)
        if routes:
            log.info("routes_deleted_for_service", service_id=service_id, count=len(routes))
            await self._notify(RouteChange("deleted", tuple(routes)))
        return routes

    async def _notify(self, change: RouteChange) -> None:
        for listener in tuple(self._listeners):
            try:
                await listener(change)
            except Exception as exc:  # the change is committed; the backend will catch up
                log.warning("route_listener_failed", error_type=type(exc).__name__,
                            kind=change.kind)

    # Last in the class: once defined, ``list`` in annotations would mean this method.
    def list(self, *, limit: int, after: str | None = None,
             service_id: str | None = None) -> tuple[list[Route], str | None]:
        """Up to ``limit`` routes after the cursor (optionally of one service), and the next cursor."""
        sql = "SELECT * FROM proxy_routes WHERE id > ?"
        params: list[Any] = [after or ""]
        if service_id is not None:
            sql += " AND service_id = ?"
            params.append(service_id)
        rows = self._db.query(sql + " ORDER BY id LIMIT ?", (*params, limit + 1))
        routes = [Route.from_row(r) for r in rows[:limit]]
        return routes, (routes[-1].id if len(rows) > limit else None)

def sort_for_matching(routes: Sequence[Route]) -> list[Route]:
    """Routes in the order both proxies try them: exact hosts before wildcards, then the
    longest path prefix first, then the oldest."""
    return sorted(routes, key=lambda r: (r.wildcard, -len(r.path_prefix), r.id))
