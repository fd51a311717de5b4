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

from .. import __version__
from ..auth import token_expiry
from ..errors import CloseCode
from ..protocol import wsframe
from ..protocol.outgoing import close_reason
from ..protocol.stomp import (
    SUPPORTED_VERSIONS,
    Frame,
    FrameParser,
    Heartbeat,
    ProtocolError,
    encode,
    negotiate,
    negotiate_heartbeat,
    parse_heartbeat,
)
from .errors import classify
from .expiry import TokenDeadline
from .handshake import Refusal, accept, user_since
from .stomp_connection import StompConnection
from .stomp_destinations import Destinations
from .stomp_session import StompSession, error_close_code
from .websocket import CLOSE_TIMEOUT, STOMP_SUBPROTOCOLS, offered_subprotocols

if TYPE_CHECKING:
    from ..node import Node

log = logging.getLogger(__name__)

SERVER = f"pushgate/{__version__}"
MAX_HEADERS = 64
MAX_HEADER_LENGTH = 8192
#: refusal code -> close code after the ERROR frame (the ERROR says why; the code says whether
#: retrying can help, as errors.close_action reads it)
REFUSAL_CLOSE = {
    "draining": CloseCode.SERVICE_RESTART,
    "connection_limit": CloseCode.CONNECTION_LIMIT,
    "too_many_connections": CloseCode.CONNECTION_LIMIT,
    "unavailable": CloseCode.INTERNAL_ERROR,
    "internal": CloseCode.INTERNAL_ERROR,
}


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
            await _refuse(ws, transport, "1.2", "no CONNECT frame in time", CloseCode.PROTOCOL_VIOLATION)
            return ws
        if first is None:
            return ws
        if isinstance(first, ProtocolError):
            await _refuse(ws, transport, "1.2", first.message, CloseCode.PROTOCOL_VIOLATION, receipt=first.receipt)
            return ws
        connect, rest = first
        version = negotiate(connect.get("accept-version"))
        if version is None:  # §Protocol Negotiation: ERROR with the versions we speak, then close
            await _refuse(ws, transport, "1.2", "no common STOMP version: the server supports "
                          + ",".join(SUPPORTED_VERSIONS), CloseCode.PROTOCOL_VIOLATION,
                          extra=(("version", ",".join(reversed(SUPPORTED_VERSIONS))),))
            return ws
        parser.version = version
        try:
            client_beat = parse_heartbeat(connect.get("heart-beat"))
        except ValueError as exc:
            await _refuse(ws, transport, version, str(exc), CloseCode.PROTOCOL_VIOLATION)
            return ws
        admitted = await accept(node, _with_connect_credentials(node, request, connect), "stomp")
        if isinstance(admitted, Refusal):
            close = REFUSAL_CLOSE.get(admitted.code, CloseCode.DISCONNECTED)
            await _refuse(ws, transport, version, admitted.message, close, code=admitted.code)
            return ws
        conflict = await _conflicting_user(node, request, connect, admitted.user)
        if conflict is not None:
            await _refuse(ws, transport, version, conflict, CloseCode.DISCONNECTED, code="permission_denied")
            return ws
        conn = StompConnection(admitted.client, admitted.user, admitted.claims, ws=ws, transport=transport,
                               hub=node.hub, write_limit=cfg.write_buffer_limit, metrics=node.metrics,
                               version=version, destinations=self.destinations)
        conn.address = admitted.address
        try:
            await node.register(conn)
        except Exception as exc:
            log.warning("cannot register %s: %r", conn.id, exc)
            await node.unregister(conn)
            await _refuse(ws, transport, version, "broker unavailable, retry later", CloseCode.INTERNAL_ERROR,
                          code="unavailable")
            return ws
        server_ms = int(cfg.stomp_heartbeat * 1000)
        send_ms, expect_ms = negotiate_heartbeat(client_beat, (server_ms, server_ms))
        headers = [("version", version), ("heart-beat", f"{server_ms},{server_ms}"), ("server", SERVER),
                   ("session", conn.id)]
        if conn.user is not None:
            headers.append(("user-name", conn.user))
        conn.send_frame(Frame("CONNECTED", tuple(headers)))
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
        beats = _Heartbeats(conn, loop, send_ms, expect_ms * self.node.config.stomp_heartbeat_tolerance)
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


class _Heartbeats:
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


def _with_connect_credentials(node: Node, request: web.Request, connect: Frame) -> web.Request:
    """The upgrade request as the one handshake should see it: the credentials CONNECT carries
    are added where the upgrade had none (the upgrade's own win, as ``?token=`` wins over the
    header in :func:`~.handshake.credentials`).

    JWT mode: ``Authorization: Bearer <jwt>`` in CONNECT, else ``passcode`` (stompjs and stomp.py
    both have a field for it) is the token. Dev mode: ``login`` names the user, as ``?user=``
    does. A CONNECT token that names another user than the upgrade's is refused by the session
    (:meth:`StompSession.check_connect_token`), not silently ignored.
    """
    query = request.rel_url.query
    has_token = bool(query.get("token")) or request.headers.get("Authorization", "").lower().startswith("bearer ")
    updates: dict[str, str] = {}
    if node.auth.dev_mode:
        login = connect.get("login")
        if login and not query.get("user"):
            updates["user"] = login
    elif not has_token:
        token = connect_token(connect)
        if token:
            updates["token"] = token
    if not updates:
        return request
    return request.clone(rel_url=request.rel_url.update_query(updates))


async def _conflicting_user(node: Node, request: web.Request, connect: Frame, user: str | None) -> str | None:
    """Why the CONNECT's credentials contradict the upgrade's, or None. When the upgrade named
    the user (``?user=``, ``?token=``, ``Authorization``) the CONNECT may repeat it, not change
    it: ``login`` (dev mode) or an ``Authorization: Bearer`` token (JWT mode, verified) naming
    someone else is refused. (A ``passcode`` next to an upgrade token is not read: it may be a
    password meant for another broker.)"""
    if node.auth.dev_mode:
        login = connect.get("login")
        if login and request.rel_url.query.get("user") and login != user:
            return "CONNECT login names another user than the handshake"
        return None
    header = connect.get("Authorization") or connect.get("authorization") or ""
    if not header.lower().startswith("bearer "):
        return None
    try:
        identity = await node.auth.verify(header[7:].strip())
    except Exception as exc:
        return classify(exc).message
    return None if identity.user == user else "CONNECT token names another user than the handshake"


def connect_token(connect: Frame) -> str | None:
    """The JWT a CONNECT frame carries: ``Authorization: Bearer <jwt>``, else ``passcode``."""
    header = connect.get("Authorization") or connect.get("authorization") or ""
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return connect.get("passcode") or None


async def _refuse(ws: web.WebSocketResponse, transport: asyncio.BaseTransport, version: str, message: str,
                  close_code: int, *, receipt: str | None = None, code: str | None = None,
                  extra: tuple[tuple[str, str], ...] = ()) -> None:
    """An ERROR frame before there is a connection object (§ERROR), then the close."""
    headers: list[tuple[str, str]] = [("message", message[:1000])]
    if code is not None:
        headers.append(("code", code))
    if receipt is not None:
        headers.append(("receipt-id", receipt))
    headers.extend(extra)
    frame = Frame("ERROR", tuple(headers), message.encode(), )
    if not transport.is_closing():
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(wsframe.server_frame(encode(frame, version=version)))
    await ws.close(code=close_code, message=close_reason(message))
