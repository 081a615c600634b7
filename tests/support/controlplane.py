"""A control plane for the tests: an aiohttp WebSocket server speaking docs/upstream.md."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.support.agent import free_port


@dataclass
class Connection:
    """One accepted agent connection and what arrived on it."""

    number: int
    ws: web.WebSocketResponse
    received: list[dict[str, Any]] = field(default_factory=list)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m.get("type") == kind]


class ControlPlane:
    """Accepts agents presenting ``token``; records every message; acks events and task
    responses unless told not to; can refuse connections or drop the current one."""

    def __init__(self, token: str = "cp-secret-token") -> None:
        self.token = token
        self.port = free_port()
        self.connections: list[Connection] = []
        self.refused_handshakes = 0
        self.accepting = True
        self.ack_events = True
        self.ack_tasks = True

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/agent"

    @property
    def current(self) -> Connection:
        return self.connections[-1]

    def received(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [m for c in self.connections for m in c.received
                if kind is None or m.get("type") == kind]

    def responses(self, task_id: str) -> list[dict[str, Any]]:
        return [m for m in self.received("task_response") if m["id"] == task_id]

    async def send(self, message: dict[str, Any]) -> None:
        await self.current.ws.send_str(json.dumps(message))

    async def task(self, task_id: str, method: str, path: str, *, token: str | None = None,
                   body: Any = None) -> None:
        message: dict[str, Any] = {"type": "task", "id": task_id, "method": method,
                                   "path": path, "body": body}
        if token is not None:
            message["token"] = token
        await self.send(message)

    async def drop(self) -> None:
        """Close the current connection from the control plane's side."""
        await self.current.ws.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.token}" or not self.accepting:
            self.refused_handshakes += 1
            return web.Response(status=401 if self.accepting else 503)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        conn = Connection(number=len(self.connections) + 1, ws=ws)
        self.connections.append(conn)
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            conn.received.append(data)
            if data.get("type") == "event" and self.ack_events:
                await ws.send_str(json.dumps({"type": "event_ack", "seq": data["seq"]}))
            if data.get("type") == "task_response" and self.ack_tasks:
                await ws.send_str(json.dumps({"type": "task_ack", "ids": [data["id"]]}))
        return ws

    async def _close_all(self, _app: web.Application) -> None:
        for conn in self.connections:
            await conn.ws.close()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/agent", self.handle)
        app.on_shutdown.append(self._close_all)
        return app
