"""WebSocket transport (``GET /ws``): the shared handshake, then a loop feeding frames to a session.

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

from ..errors import CloseCode
from ..protocol.outgoing import close_reason
from ..protocol.wsframe import peer_close_code_valid
from .connection import FramedConnection
from .handshake import Refusal, accept, open_session, user_since
from .request_view import RequestView
from .session import JsonSession

if TYPE_CHECKING:
    from ..hub import Hub
    from ..metrics import NodeMetrics
    from ..node import Node
    from .stomp import StompHandler

log = logging.getLogger(__name__)
CLOSE_TIMEOUT = 5.0


class WsConnection(FramedConnection):
    """A WebSocket served by aiohttp (``build_app`` mounted in an aiohttp application, and the
    STOMP subprotocol); the server's own ``/ws`` upgrades are :class:`~.lean.LeanWebSocket`."""

    transport_name = "websocket"

    def __init__(
        self,
        conn_id: str,
        user: str | None,
        claims: dict[str, Any] | None,
        *,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport,
        hub: Hub,
        write_limit: int,
        metrics: NodeMetrics,
    ) -> None:
        super().__init__(conn_id, user, claims, transport=transport, hub=hub, write_limit=write_limit,
                         metrics=metrics)
        self._ws = ws
        self.close_task: asyncio.Task[Any] | None = None

    def _close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.flush()  # frames queued before the close must precede the close frame
        if self.closed:
            return
        self.closed = True
        loop = asyncio.get_running_loop()
        self.close_task = loop.create_task(self._ws.close(code=code, message=close_reason(reason)))
        self.close_task.add_done_callback(_ignore_result)
        # A peer that never answers our close (or never reads) must not hold its buffer forever.
        loop.call_later(CLOSE_TIMEOUT, self._transport.abort)


STOMP_SUBPROTOCOLS = ("v12.stomp", "v11.stomp", "v10.stomp")  # best first


def offered_subprotocols(request: web.Request) -> list[str]:
    """The subprotocols of the upgrade's ``Sec-WebSocket-Protocol`` headers (RFC 6455 §4.1)."""
    return [p.strip() for value in request.headers.getall("Sec-WebSocket-Protocol", ()) for p in value.split(",")]


def offers_stomp(request: web.Request) -> bool:
    return any(p in STOMP_SUBPROTOCOLS for p in offered_subprotocols(request))


def _ignore_result(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


class WebsocketHandler:
    """``GET /ws``: aiohttp handler object holding the node it serves (mount it anywhere).

    A client that offers a STOMP subprotocol (``v12.stomp``, ``v11.stomp``, ``v10.stomp``) gets
    STOMP on the same path (:class:`~pushgate.web.stomp.StompHandler`, docs/stomp.md); everyone
    else the JSON protocol.
    """

    def __init__(self, node: Node, stomp: StompHandler | None = None) -> None:
        self.node = node
        self._stomp = stomp

    async def handle(self, request: web.Request) -> web.StreamResponse:
        node = self.node
        if offers_stomp(request):
            if self._stomp is None:
                from .stomp import StompHandler  # the STOMP edge imports this module, not the reverse

                self._stomp = StompHandler(node)
            return await self._stomp.handle(request)
        admitted = await accept(node, RequestView.of(request), WsConnection.transport_name)
        if isinstance(admitted, Refusal) and admitted.close_code is None:
            return admitted.response()

        ws = web.WebSocketResponse(
            heartbeat=node.config.ping_interval,
            max_msg_size=node.config.max_message_size,
            compress=False,
            autoping=True,
            autoclose=False,  # we answer the peer's close ourselves, checking its code (below)
            timeout=CLOSE_TIMEOUT,
        )
        await ws.prepare(request)
        if isinstance(admitted, Refusal):
            # told after the upgrade, with a close code, so browsers can see why
            assert admitted.close_code is not None
            await ws.close(code=admitted.close_code, message=close_reason(admitted.close_message))
            return ws
        transport = request.transport
        assert transport is not None
        conn = WsConnection(admitted.client, admitted.user, admitted.claims, ws=ws, transport=transport,
                            hub=node.hub, write_limit=node.config.write_buffer_limit, metrics=node.metrics)
        conn.address = admitted.address
        try:
            await open_session(node, conn, user_since(request))
        except Exception as exc:
            log.warning("cannot register %s: %r", conn.id, exc)
            conn.close(CloseCode.INTERNAL_ERROR, "broker unavailable")
            await node.unregister(conn)
            if conn.close_task is not None:
                await asyncio.wait([conn.close_task], timeout=CLOSE_TIMEOUT)
            return ws
        await self._serve(ws, conn)
        return ws

    async def _serve(self, ws: web.WebSocketResponse, conn: WsConnection) -> None:
        node = self.node
        session = JsonSession(node, conn)
        try:
            while True:
                msg = await ws.receive()
                if msg.type is WSMsgType.TEXT:
                    await session.handle(msg.data)
                elif msg.type is WSMsgType.BINARY:
                    conn.close(CloseCode.PROTOCOL_VIOLATION, "binary frames are not part of the JSON protocol")
                    break
                elif msg.type is WSMsgType.CLOSE:
                    # RFC 6455 §7.4: 1005/1006/1015 and codes outside 1000-4999 never belong on the
                    # wire; aiohttp would answer them with 1000. A protocol error is 1002.
                    if not conn.closed:
                        conn.closed = True
                        valid = peer_close_code_valid(msg.data)
                        await ws.close(code=1000 if valid else 1002, message=b"" if valid else b"invalid close code")
                    break
                else:  # CLOSING, CLOSED, ERROR: the connection is over
                    break
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("connection %s failed", conn.id)
            conn.close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            conn.closed = True
            session.close()
            await node.unregister(conn)
            if conn.close_task is not None:
                # let our close frame (with its code) go out before aiohttp finalises the response
                await asyncio.wait([conn.close_task], timeout=CLOSE_TIMEOUT)
