"""WebSocket bridging for the built-in proxy.

The upstream handshake happens first, so a backend that is down or refuses the upgrade gives
the client a plain HTTP error instead of an accepted socket that dies at once. Then messages
are relayed both ways (text, binary; pings are answered on each leg), and when one side
closes, the other is closed with the same code.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from aiohttp import ClientError, ClientSession, ClientWebSocketResponse, WSMsgType, web
from aiohttp.client_exceptions import WSServerHandshakeError
from multidict import CIMultiDict
from yarl import URL

from agent.errors import AgentError, BadGateway

__all__ = ["bridge_websocket", "is_websocket_upgrade"]

log = structlog.get_logger("agent.proxy")

_WS = web.WebSocketResponse | ClientWebSocketResponse


def is_websocket_upgrade(request: web.BaseRequest) -> bool:
    """Whether the request asks to switch to the WebSocket protocol."""
    if request.method != "GET" or request.headers.get("Upgrade", "").lower() != "websocket":
        return False
    tokens = {t.strip().lower() for t in request.headers.get("Connection", "").split(",")}
    return "upgrade" in tokens


async def bridge_websocket(request: web.BaseRequest, session: ClientSession, url: URL,
                           headers: CIMultiDict[str], *, max_message: int,
                           ) -> web.StreamResponse:
    """Connect upstream, accept the client, relay until either side closes.

    Raises BadGateway (before anything was sent to the client) when the upstream cannot be
    reached; relays the upstream's status when it answers the handshake with a 4xx.
    """
    offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
               if p.strip()]
    try:
        upstream = await session.ws_connect(url, headers=headers, protocols=offered,
                                            autoping=True, max_msg_size=max_message,
                                            compress=0)
    except WSServerHandshakeError as exc:
        if 400 <= exc.status < 500:
            return web.Response(status=exc.status)
        raise BadGateway("The upstream service refused the WebSocket upgrade") from None
    except (ClientError, OSError, TimeoutError):
        raise BadGateway() from None

    client = web.WebSocketResponse(protocols=[upstream.protocol] if upstream.protocol else (),
                                   autoping=True, max_msg_size=max_message)
    try:
        await client.prepare(request)
    except (ConnectionError, AgentError, web.HTTPException):
        await upstream.close()
        raise
    to_upstream = asyncio.create_task(_relay(client, upstream))
    to_client = asyncio.create_task(_relay(upstream, client))
    try:
        done, _ = await asyncio.wait((to_upstream, to_client),
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (to_upstream, to_client):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(to_upstream, to_client, return_exceptions=True)
    code_from = client if to_upstream in done else upstream
    code = code_from.close_code or 1000
    await _close(client, code)
    await _close(upstream, code)
    return client


async def _relay(source: _WS, sink: _WS) -> None:
    """Copy messages from ``source`` to ``sink`` until ``source`` closes."""
    async for msg in source:
        try:
            if msg.type is WSMsgType.TEXT:
                await sink.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await sink.send_bytes(msg.data)
            elif msg.type is WSMsgType.ERROR:
                return
        except (ConnectionError, RuntimeError):  # the sink is gone or closing
            return


async def _close(ws: _WS, code: int) -> None:
    if ws.closed:
        return
    # 1005/1006 are reserved: they describe a close, they may not be sent in one.
    code = 1000 if code in (1005, 1006) else code
    with contextlib.suppress(ConnectionError, RuntimeError, asyncio.TimeoutError):
        await ws.close(code=code)
