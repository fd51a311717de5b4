"""STOMP 1.0–1.2 over WebSocket: the endpoint, CONNECT and admission, heart-beats (docs/stomp.md).

``/ws`` hands a client that offers ``v1x.stomp`` as subprotocol to :class:`StompHandler`, and the
``stomp_paths`` (default ``/stomp``) speak STOMP with or without one (stomp.py's
``WSStompConnection`` offers none). The frames go through the sans-I/O codec
:mod:`pushgate.protocol.stomp`; this module only moves bytes and runs the connection's life:

1. upgrade, then wait (``handshake_timeout``) for ``CONNECT``/``STOMP`` (STOMP 1.2 §Connecting);
2. admission through the one handshake every transport runs (:func:`~.handshake.accept`), with the
   credentials of the upgrade request *and* of the CONNECT frame: stompjs users put their token
   in ``connectHeaders`` (``Authorization: Bearer <jwt>``, or ``passcode``), which only exist
   once the socket is open. So STOMP admission happens after the upgrade and a refusal is an
   ERROR frame, which a STOMP client shows (it cannot read a refused upgrade's status either);
3. ``CONNECTED`` (version, ``heart-beat``, ``server``, ``session``, ``user-name``), then the
   frames loop (:class:`~.stomp_session.StompSession`) with heart-beats both ways (§Heart-beating);
4. on any end: open transactions are dropped, the node unregisters the connection (disconnect
   hooks, presence, subscriptions).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web

from ..auth import token_expiry
from ..errors import CloseCode
from ..protocol import wsframe
from ..protocol.outgoing import close_reason
from ..protocol.stomp import (
    Frame,
    FrameParser,
    Heartbeat,
    ProtocolError,
    encode,
)
from .expiry import TokenDeadline
from .handshake import user_since
from .stomp_admission import ConnectRefusal, admit, connected_frame
from .stomp_connection import StompConnection
from .stomp_destinations import Destinations
from .stomp_session import StompSession, error_close_code
from .websocket import CLOSE_TIMEOUT, STOMP_SUBPROTOCOLS, offered_subprotocols

if TYPE_CHECKING:
    from ..node import Node

log = logging.getLogger(__name__)

MAX_HEADERS = 64
MAX_HEADER_LENGTH = 8192


class StompHandler:
    """``GET /stomp`` (and ``/ws`` with a STOMP subprotocol): one STOMP connection per request."""

    def __init__(self, node: Node) -> None:
        self.node = node
        cfg = node.config
        self.destinations = Destinations(cfg.stomp_broker_prefixes, cfg.stomp_app_prefix, cfg.stomp_user_prefix,
                                         cfg.stomp_user_destination)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        node, cfg = self.node, self.node.config
        offered = offered_subprotocols(request)
        chosen = next((p for p in STOMP_SUBPROTOCOLS if p in offered), None)
        ws = web.WebSocketResponse(
            protocols=(chosen,) if chosen else (),
            heartbeat=cfg.ping_interval,
            max_msg_size=cfg.max_message_size,
            compress=False,  # the cached MESSAGE frames are the same bytes for every peer
            autoping=True,
            autoclose=False,
            timeout=CLOSE_TIMEOUT,
        )
        await ws.prepare(request)
        transport = request.transport
        assert transport is not None
        parser = FrameParser(max_frame_size=cfg.max_message_size, max_headers=MAX_HEADERS,
                             max_header_length=MAX_HEADER_LENGTH)
        try:
            first = await asyncio.wait_for(self._read_connect(ws, parser), cfg.handshake_timeout)
        except TimeoutError:
            refusal = ConnectRefusal("1.2", "no CONNECT frame in time", CloseCode.PROTOCOL_VIOLATION)
            await _refuse(ws, transport, refusal)
            return ws
        if first is None:
            return ws
        if isinstance(first, ProtocolError):
            await _refuse(ws, transport, ConnectRefusal("1.2", first.message, CloseCode.PROTOCOL_VIOLATION,
                                                        receipt=first.receipt))
            return ws
        connect, rest = first
        decided = await admit(node, request, connect, "stomp")
        if isinstance(decided, ConnectRefusal):
            await _refuse(ws, transport, decided)
            return ws
        version, admitted = decided.version, decided.info
        parser.version = version
        conn = StompConnection(admitted.client, admitted.user, admitted.claims, ws=ws, transport=transport,
                               hub=node.hub, write_limit=cfg.write_buffer_limit, metrics=node.metrics,
                               version=version, destinations=self.destinations)
        conn.address = admitted.address
        try:
            await node.register(conn)
        except Exception as exc:
            log.warning("cannot register %s: %r", conn.id, exc)
            await node.unregister(conn)
            await _refuse(ws, transport, ConnectRefusal(version, "broker unavailable, retry later",
                                                        CloseCode.INTERNAL_ERROR, code="unavailable"))
            return ws
        connected, send_ms, expect_ms = connected_frame(cfg, version, conn.id, conn.user, decided.client_beat)
        conn.send_frame(connected)
        since = user_since(request)  # checked by accept: cannot raise here
        session = StompSession(node, conn, self.destinations, user_since=since)
        await self._serve(ws, conn, session, parser, rest, send_ms, expect_ms)
        return ws

    async def _read_connect(
        self, ws: web.WebSocketResponse, parser: FrameParser
    ) -> tuple[Frame, list[Frame | Heartbeat | ProtocolError]] | ProtocolError | None:
        """The CONNECT/STOMP frame and the events that came after it in the same message(s);
        a ProtocolError when the first frame is something else; None when the peer left."""
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.TEXT:
                events = parser.feed(msg.data.encode())
            elif msg.type is WSMsgType.BINARY:
                events = parser.feed(msg.data)
            else:
                if msg.type is WSMsgType.CLOSE:
                    await ws.close()
                return None
            for i, event in enumerate(events):
                if isinstance(event, Heartbeat):
                    continue
                if isinstance(event, ProtocolError):
                    return event
                if event.command not in ("CONNECT", "STOMP"):
                    return ProtocolError(f"expected CONNECT or STOMP, got {event.command}", event.get("receipt"))
                return event, events[i + 1 :]

    async def _serve(self, ws: web.WebSocketResponse, conn: StompConnection, session: StompSession,
                     parser: FrameParser, rest: list[Frame | Heartbeat | ProtocolError],
                     send_ms: int, expect_ms: int) -> None:
        node = self.node
        loop = asyncio.get_running_loop()
        deadline = TokenDeadline(conn)
        deadline.set(token_expiry(conn.claims))
        session.deadline = deadline
        beats = Heartbeats(conn, loop, send_ms, expect_ms * self.node.config.stomp_heartbeat_tolerance)
        weakref.finalize(session, deadline.cancel)
        try:
            if not await session.handle_events(rest):
                return
            while True:
                msg = await ws.receive()
                beats.received = loop.time()
                if msg.type is WSMsgType.TEXT:
                    events = parser.feed(msg.data.encode())
                elif msg.type is WSMsgType.BINARY:
                    events = parser.feed(msg.data)
                elif msg.type is WSMsgType.CLOSE:
                    # RFC 6455 §7.4 (as on /ws): answer an invalid close code with 1002
                    if not conn.closed:
                        conn.closed = True
                        valid = wsframe.peer_close_code_valid(msg.data)
                        await ws.close(code=1000 if valid else 1002, message=b"" if valid else b"invalid close code")
                    return
                else:  # CLOSING, CLOSED, ERROR: over
                    return
                if not await session.handle_events(events):
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("STOMP connection %s failed", conn.id)
            session.error("internal error", code="internal", close=error_close_code("internal"))
        finally:
            conn.closed = True
            beats.cancel()
            deadline.cancel()
            session.close()
            await node.unregister(conn)
            if conn.close_task is not None:
                await asyncio.wait([conn.close_task], timeout=CLOSE_TIMEOUT)


class Heartbeats:
    """STOMP heart-beats of one connection (§Heart-beating), on one timer, no task.

    Sending: every ``send_ms`` the server writes an EOL unless it wrote a frame meanwhile.
    Expecting: a client silent for ``expect_ms`` × tolerance (any WebSocket message counts) gets
    an ERROR and is closed with 4000 (reconnect with backoff); the tolerance absorbs timer and
    network jitter, as the specification asks ("the other end MAY... take into account an
    error margin").
    """

    def __init__(self, conn: StompConnection, loop: asyncio.AbstractEventLoop, send_ms: int,
                 silence_ms: float) -> None:
        self.conn = conn
        self.loop = loop
        self.received = loop.time()
        self.send_s = send_ms / 1000
        self.silence_s = silence_ms / 1000
        intervals = [x for x in (self.send_s, self.silence_s / 2) if x > 0]
        self.tick = min(intervals) if intervals else 0.0
        self.handle: asyncio.TimerHandle | None = None
        if self.tick:
            self.handle = loop.call_later(self.tick, self._check)

    def _check(self) -> None:
        conn = self.conn
        if conn.closed:
            return
        now = self.loop.time()
        if self.silence_s and now - self.received > self.silence_s:
            conn.send_frame(Frame("ERROR", (("message", "heart-beat timeout: nothing received for "
                                              f"{int((now - self.received) * 1000)} ms"),)))
            conn.close(CloseCode.RECONNECT, "STOMP heart-beat timeout")
            return
        if self.send_s and not conn.wrote:
            conn.heartbeat()
        conn.wrote = False
        self.handle = self.loop.call_later(self.tick, self._check)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


async def _refuse(ws: web.WebSocketResponse, transport: asyncio.BaseTransport, refusal: ConnectRefusal) -> None:
    """An ERROR frame before there is a connection object (§ERROR), then the close."""
    if not transport.is_closing():
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(wsframe.server_frame(encode(refusal.error_frame(), version=refusal.version)))
    await ws.close(code=refusal.close_code, message=close_reason(refusal.message))
