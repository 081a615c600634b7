"""The Caddy backend: the agent drives a running Caddy through its admin API.

The agent owns one server in Caddy's config (``apps.http.servers.<caddy_server_name>``) and,
with HTTPS and an ACME email or staging switch, one TLS automation policy. It never restarts
Caddy and never writes a config file: every change is an admin API call, which Caddy applies
with a graceful reload (in-flight requests finish on the old config).

One method, ``converge``, does all the work: build the desired server from the stored routes
and the locator's current targets, read what Caddy has, and apply the difference - single
``@id`` calls (``PATCH``/``DELETE /id/...``, ``PUT .../routes/N``) when only a few routes
differ, a whole-server replace otherwise, a ``/load`` when Caddy has no config at all. It
runs when the agent starts, after every route change, on ``refresh(service_id)``, and every
``caddy_poll_interval`` seconds, which is how a restarted Caddy (empty or someone else's
config) gets the routes back. Foreign servers and policies are left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import structlog
from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector

from agent.clock import Clock
from agent.config import ProxyConfig
from agent.proxy.backend import BackendName, ProxyStatus
from agent.proxy.caddy_config import (
    CaddySettings,
    JsonObj,
    build_server,
    build_tls_policy,
    plan,
)
from agent.proxy.locator import ServiceLocator, StaticSite, Target
from agent.proxy.routes import Route, RouteChange, RouteService
from agent.proxy.static import escaping_links

__all__ = ["CaddyBackend", "CaddyError"]

log = structlog.get_logger("agent.proxy")

# More single-route calls than this and one whole-server replace is cheaper (each call is a
# config reload in Caddy).
_MAX_OPS = 4
_POLICIES = "/config/apps/tls/automation/policies"
_LINK_CACHE = 256


class CaddyError(Exception):
    """Caddy's admin API could not be reached or refused a change; the message is one line."""


class CaddyBackend:
    """``ProxyBackend`` that keeps a running Caddy's config equal to the stored routes."""

    def __init__(self, config: ProxyConfig, routes: RouteService, locator: ServiceLocator,
                 clock: Clock) -> None:
        self._admin_url = config.caddy_admin
        self._poll_interval = config.caddy_poll_interval
        self._settle = config.caddy_reload_settle
        self._changed_at: float | None = None  # monotonic time of our last change to Caddy
        self._settings = CaddySettings.of(config)
        self._routes = routes
        self._locator = locator
        self._clock = clock
        self._session: ClientSession | None = None
        self._poller: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._reachable = False
        self._in_sync = False
        self._last_sync: float | None = None
        self._error: str | None = None
        self._route_count = 0
        self._policy_absent = False  # checked once: no policy of ours in Caddy
        self._links: dict[Path, tuple[str, ...]] = {}
        self._reapplied = 0  # how many times Caddy had lost or changed our server

    @property
    def name(self) -> BackendName:
        return "caddy"

    @property
    def server_path(self) -> str:
        return f"/config/apps/http/servers/{self._settings.server_name}"

    async def start(self) -> None:
        """Apply every route (a failure is reported in ``status``, not raised) and poll."""
        # A fresh connection per call: Caddy restarts its admin endpoint on config loads, and
        # a PATCH or POST on a stale keep-alive connection would not be retried.
        self._session = ClientSession(timeout=ClientTimeout(total=10, sock_connect=3),
                                      connector=TCPConnector(force_close=True), trust_env=False)
        await self.converge()
        self._poller = asyncio.create_task(self._poll(), name="caddy-poll")

    async def stop(self) -> None:
        """Stop polling; Caddy keeps serving the routes while the agent is away."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def routes_changed(self, change: RouteChange) -> None:
        """Apply the change; return once Caddy's previous config no longer answers."""
        if await self.converge():
            await self._settled()

    async def refresh(self, service_id: str) -> None:
        """Point the service's routes at its new target; return once requests accepted by
        Caddy's previous config have reached the old target (so it can be stopped)."""
        if await self.converge():
            await self._settled()

    async def _settled(self) -> None:
        """Wait out ``caddy_reload_settle`` after our last change to Caddy.

        Caddy answers an admin call once the new config runs, but for a few milliseconds its
        previous config still serves requests arriving on open keep-alive connections, and
        requests it accepted are still on their way to the old target. (The last change may
        have been made by the poll a moment earlier: the wait counts from it.)
        """
        if self._changed_at is None or not self._settle:
            return
        left = self._changed_at + self._settle - self._clock.monotonic()
        if left > 0:
            await asyncio.sleep(left)

    def status(self) -> ProxyStatus:
        return ProxyStatus(backend="caddy", reachable=self._reachable, in_sync=self._in_sync,
                           listen=self._settings.listen, routes=self._route_count,
                           last_sync=self._last_sync, error=self._error,
                           details={"admin": self._admin_url,
                                    "server": self._settings.server_name,
                                    "reapplied": str(self._reapplied)})

    # -- converging ----------------------------------------------------------------------------

    async def converge(self) -> bool:
        """Make Caddy serve exactly the stored routes; True when it does.

        Never raises for Caddy's sake: failures land in ``status()`` and the poll retries.
        """
        async with self._lock:
            try:
                changed = await self._converge()
            except CaddyError as exc:
                if self._error != str(exc):
                    log.warning("caddy_sync_failed", error=str(exc))
                self._in_sync = False
                self._error = str(exc)
                return False
            self._reachable = True
            self._in_sync = True
            self._error = None
            if changed or self._last_sync is None:
                self._last_sync = self._clock.time()
            if changed:
                self._changed_at = self._clock.monotonic()
            return True

    async def _desired(self) -> tuple[list[Route], JsonObj, JsonObj | None]:
        routes = self._routes.all()
        targets: dict[str, Target | None] = {
            r.id: self._locator.target(r.service_id, r.port) for r in routes}
        hidden: dict[Path, tuple[str, ...]] = {}
        for target in targets.values():
            if isinstance(target, StaticSite):
                hidden[target.root] = await self._escaping_links(target.root)
        return (routes, build_server(routes, targets, self._settings, hidden),
                build_tls_policy(routes, self._settings))

    async def _escaping_links(self, root: Path) -> tuple[str, ...]:
        """Links out of a static root, walked once per root (releases are immutable)."""
        links = self._links.get(root)
        if links is None:
            links = await asyncio.to_thread(escaping_links, root)
            if len(self._links) >= _LINK_CACHE:
                self._links.pop(next(iter(self._links)))
            self._links[root] = links
            if links:
                log.warning("static_site_links_hidden", root=str(root), count=len(links))
        return links

    async def _converge(self) -> bool:
        routes, desired, policy = await self._desired()
        self._route_count = len(routes)
        actual = await self._call("GET", self.server_path, missing_ok=True)
        changed = False
        if actual != desired:
            changed = True
            await self._apply_server(actual, desired)
        if await self._apply_policy(policy):
            changed = True
        return changed

    async def _apply_server(self, actual: Any, desired: JsonObj) -> None:
        if actual is None:
            self._reapplied += 1
            log.info("caddy_server_missing", server=self._settings.server_name)
            await self._create_server(desired)
            return
        ops = plan(actual, desired, self.server_path) if isinstance(actual, dict) else None
        if ops is not None and len(ops) <= _MAX_OPS:
            try:
                for op in ops:
                    await self._call(op.method, op.path, op.body)
                return
            except CaddyError as exc:
                log.info("caddy_route_update_failed", error=str(exc))
        elif ops is None:
            self._reapplied += 1
            log.info("caddy_server_replaced", server=self._settings.server_name)
        await self._call("PATCH", self.server_path, desired)

    async def _create_server(self, desired: JsonObj) -> None:
        root = await self._call("GET", "/config/")
        if root is None:
            # Caddy runs with no config at all: /load one, keeping the admin endpoint where
            # we reach it (a config without "admin" would move it to the default address).
            authority = self._admin_url.partition("://")[2].split("/")[0]
            await self._call("POST", "/load", {
                "admin": {"listen": authority},
                "apps": {"http": {"servers": {self._settings.server_name: desired}}}})
        else:
            await self._call("PUT", self.server_path, desired)

    async def _apply_policy(self, policy: JsonObj | None) -> bool:
        if policy is None and self._policy_absent:
            return False  # (Caddy logs every unknown @id asked for: do not ask on each poll)
        policy_path = f"/id/{self._settings.policy_id}"
        actual = await self._call("GET", policy_path, missing_ok=True)
        self._policy_absent = policy is None
        if actual == policy:
            return False
        if policy is None:
            await self._call("DELETE", policy_path)
        elif actual is not None:
            await self._call("PATCH", policy_path, policy)
        elif isinstance(await self._call("GET", _POLICIES, missing_ok=True), list):
            # First, so it wins over a catch-all policy of the operator's.
            await self._call("PUT", f"{_POLICIES}/0", policy)
        else:
            await self._call("PUT", _POLICIES, [policy])
        return True

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval)
            await self.converge()

    # -- the admin API -------------------------------------------------------------------------

    async def _call(self, method: str, path: str, body: Any = None, *,
                    missing_ok: bool = False) -> Any:
        """One admin API call; its decoded JSON answer (None for an empty one).

        ``missing_ok``: a path or ``@id`` that does not exist gives None instead of an error
        (Caddy answers 404 for an unknown ``@id``, 400 "invalid traversal path" for a path
        whose parent is missing, and ``null`` when only the last key is missing).
        """
        if self._session is None:
            raise CaddyError("the Caddy backend is not started")
        data = None if body is None else json.dumps(body, separators=(",", ":"))
        try:
            async with self._session.request(
                    method, self._admin_url + path, data=data,
                    headers={"Content-Type": "application/json"} if data else None) as resp:
                raw = await resp.read()
        except (ClientError, OSError, TimeoutError) as exc:
            self._reachable = False
            raise CaddyError(f"Caddy's admin API at {self._admin_url} is unreachable "
                             f"({type(exc).__name__})") from None
        self._reachable = True
        if missing_ok and (resp.status == 404 or (resp.status == 400 and b"traversal" in raw)):
            return None
        if resp.status >= 400:
            raise CaddyError(f"Caddy refused {method} {path}: {resp.status} "
                             f"{_caddy_message(raw)}")
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise CaddyError(f"Caddy answered {method} {path} with something not JSON") from None


def _caddy_message(raw: bytes) -> str:
    try:
        message = str(json.loads(raw).get("error", ""))
    except (ValueError, AttributeError):
        message = raw[:200].decode(errors="replace")
    return " ".join(message.split())[:300]
