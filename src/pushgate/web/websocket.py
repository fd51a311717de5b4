"""WebSocket transport (``GET /ws``): handshake checks, then a loop feeding frames to a session.

aiohttp does the RFC 6455 handshake, reading, ping/pong heartbeats and the 1009 close for
oversize frames. Outgoing frames bypass aiohttp's writer: the hub hands every connection the
same pre-framed bytes (server frames are unmasked, §5.1, so they are identical for all peers)
and :meth:`WsConnection.send` writes them straight to the socket's transport. Permessage-deflate
is off so that stays true; aiohttp's own writes (pong, close) are whole frames written without
yielding, so they never interleave with ours.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from ..errors import AuthError, ClientError, CloseCode
from ..protocol import jsonwire
from ..protocol.outgoing import Outgoing
from .connection import Connection
from .session import JsonSession

if TYPE_CHECKING:
    from ..node import Node

log = logging.getLogger(__name__)
CLOSE_TIMEOUT = 5.0


class WsConnection(Connection):
    transport_name = "websocket"

    def __init__(
        self,
        node: Node,
        conn_id: str,
        user: str | None,
        claims: dict[str, Any] | None,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport,
    ) -> None:
        super().__init__(conn_id, user, claims)
        self._node = node
        self._ws = ws
        self._transport = transport
        self._limit = node.config.write_buffer_limit
        self._hub = node.hub
        self._pending: list[bytes] | None = None
        self.close_task: asyncio.Task[Any] | None = None

    def send(self, out: Outgoing) -> None:
        # Hot path: queue the shared pre-framed bytes; the hub flushes once per loop iteration.
        if self.closed:
            return
        pending = self._pending
        if pending is None:
            self._pending = [out.ws()]
            self._hub.want_flush(self)
        else:
            pending.append(out.ws())

    def flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending is None or self.closed:
            return
        transport = self._transport
        if transport.is_closing():
            self.closed = True
            return
        transport.write(pending[0] if len(pending) == 1 else b"".join(pending))
        if transport.get_write_buffer_size() > self._limit:
            self._node.metrics.slow_consumers.inc()
            self.close(CloseCode.SLOW_CONSUMER, "slow consumer: reconnect and recover")

    def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.flush()  # frames queued before the close must precede the close frame
        if self.closed:
            return
        self.closed = True
        loop = asyncio.get_running_loop()
        self.close_task = loop.create_task(self._ws.close(code=code, message=reason.encode()[:120]))
        self.close_task.add_done_callback(_ignore_result)
        # A peer that never answers our close (or never reads) must not hold its buffer forever.
        loop.call_later(CLOSE_TIMEOUT, self._transport.abort)


def _ignore_result(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _json_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def handshake_credentials(request: web.Request) -> tuple[str | None, str | None]:
    """(token, user) from ``?token=`` / ``Authorization: Bearer`` and ``?user=``."""
    token = request.query.get("token")
    header = request.headers.get("Authorization", "")
    if not token and header.lower().startswith("bearer "):
        token = header[7:].strip()
    return token, request.query.get("user")


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    from ..server import NODE_KEY

    node: Node = request.app[NODE_KEY]
    if node.draining:
        return _json_error(503, "draining", "node is shutting down; connect to another node")
    try:
        node.auth.check_origin(request.headers.get("Origin"))
        token, user = handshake_credentials(request)
        identity = node.auth.identify(token=token, user=user)
    except AuthError as exc:
        return _json_error(exc.status, "unauthorized" if exc.status == 401 else "forbidden", str(exc))
    conn_id = node.new_connection_id()
    from ..app import ClientInfo

    info = ClientInfo(conn_id, identity.user, node.id, WsConnection.transport_name, identity.claims)
    over_limit: ClientError | None = None
    try:
        node.check_capacity()
    except ClientError as exc:
        over_limit = exc  # told after the upgrade, with close code 4003, so browsers can see why
    try:
        if over_limit is None:
            await node.run_connect_hooks(info)
    except ClientError as exc:
        return _json_error(403, exc.code, exc.message)
    except Exception:
        log.exception("connect hook failed")
        return _json_error(500, "internal", "connect hook failed")

    ws = web.WebSocketResponse(
        heartbeat=node.config.ping_interval,
        max_msg_size=node.config.max_message_size,
        compress=False,
        autoping=True,
        timeout=CLOSE_TIMEOUT,
    )
    await ws.prepare(request)
    transport = request.transport
    assert transport is not None
    conn = WsConnection(node, conn_id, identity.user, identity.claims, ws, transport)
    if over_limit is not None:
        await ws.close(code=CloseCode.CONNECTION_LIMIT, message=over_limit.message.encode())
        return ws
    try:
        await node.register(conn)
    except Exception as exc:
        log.warning("cannot register %s: %r", conn_id, exc)
        await ws.close(code=CloseCode.INTERNAL_ERROR, message=b"broker unavailable")
        await node.unregister(conn)
        return ws
    conn.send_payload(jsonwire.welcome_frame(conn.id, conn.user, node.id))
    session = JsonSession(node, conn)
    try:
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await session.handle(msg.data)
            elif msg.type is WSMsgType.BINARY:
                conn.close(CloseCode.PROTOCOL_VIOLATION, "binary frames are not part of the JSON protocol")
                break
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("connection %s failed", conn.id)
        conn.close(CloseCode.INTERNAL_ERROR, "internal error")
    finally:
        conn.closed = True
        await node.unregister(conn)
        if conn.close_task is not None:
            # let our close frame (with its code) go out before aiohttp finalises the response
            await asyncio.wait([conn.close_task], timeout=CLOSE_TIMEOUT)
    return ws
