"""STOMP over a SockJS session: the same CONNECT, admission and frame loop as STOMP over WebSocket.

The SockJS messages of one session are the text of a STOMP connection, cut anywhere (stompjs
sends one frame per message; heart-beats are messages of their own). They go through the same
codec (:class:`~pushgate.protocol.stomp.FrameParser`), the same admission
(:func:`~.handshake.accept`, with the CONNECT frame's credentials added exactly as
:mod:`.stomp` does), the same :class:`~.stomp_session.StompSession` and the same heart-beat
timer as ``/stomp``; only the carrier differs:

* :class:`SockJsStompConnection` is a :class:`~.stomp_connection.StompConnection` whose writes
  go to the SockJS session instead of a socket. The STOMP edge hands it WebSocket-framed bytes
  (shared by all subscribers of a key); the flush turns each into the SockJS message literal
  through a shared :class:`~.sockjs_codec.MessageCache`, so a fan-out is still escaped once.
* Admission happens when the CONNECT arrives (in an ``xhr_send`` body, or a websocket-transport
  message); the request that carried it is the one the handshake reads: sockjs-client keeps the
  query string of the URL it was given on every session URL, so ``?token=``/``?user=`` work as
  on ``/stomp``, and browsers send ``Origin`` on those POSTs.
* The session's end (client gone for ``disconnect_delay``, server close) ends the STOMP
  connection: open transactions are dropped and the node unregisters it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast

from ..auth import token_expiry
from ..errors import CloseCode
from ..protocol.stomp import (
    Frame,
    FrameParser,
    Heartbeat,
    ProtocolError,
    encode,
)
from .expiry import TokenDeadline
from .handshake import user_since
from .sockjs_codec import MessageCache, json_string
from .sockjs_session import SockJsSession

# The STOMP edge's own pieces, reused so both carriers admit and beat the same way.
from .stomp import MAX_HEADER_LENGTH, MAX_HEADERS, Heartbeats
from .stomp_admission import ConnectRefusal, admit, connected_frame
from .stomp_connection import StompConnection
from .stomp_session import StompSession, error_close_code

if TYPE_CHECKING:
    from aiohttp import web

    from ..hub import Hub
    from ..metrics import NodeMetrics
    from ..node import Node
    from .stomp_destinations import Destinations

log = logging.getLogger(__name__)

TRANSPORT_NAME = "sockjs"  # ClientInfo.transport of SockJS connections (hooks, logs)
Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]


class SockJsStompConnection(StompConnection):
    """A STOMP connection whose frames travel in a SockJS session (see the module docstring).

    It overrides the three methods of :class:`~.websocket.WsConnection` that touch a socket
    (``queue``, ``flush``, ``close``); everything STOMP (subscriptions, the cached MESSAGE
    encodings, ERROR/RECEIPT) is the parent's. It has no socket of its own: the session's
    receiving request changes with every poll.
    """

    transport_name = TRANSPORT_NAME

    def __init__(self, conn_id: str, user: str | None, claims: dict[str, Any] | None, *,
                 session: SockJsSession, cache: MessageCache, hub: Hub, write_limit: int,
                 metrics: NodeMetrics, version: str, destinations: Destinations) -> None:
        # The parent keeps a WebSocketResponse and a transport for the methods overridden here;
        # a SockJS connection has neither (see docs/stomp.md, SockJS: the seam in web/stomp.py).
        super().__init__(conn_id, user, claims, ws=cast("web.WebSocketResponse", None),
                         transport=asyncio.Transport(), hub=hub, write_limit=write_limit, metrics=metrics,
                         version=version, destinations=destinations)
        self.session = session
        self._cache = cache
        self._flush_hub = hub
        self._queued: list[bytes] | None = None

    def queue(self, framed: bytes) -> None:
        # Hot path: keep the shared framed bytes; the hub flushes once per loop iteration.
        if self.closed:
            return
        self.wrote = True
        queued = self._queued
        if queued is None:
            self._queued = [framed]
            self._flush_hub.want_flush(self)
        else:
            queued.append(framed)

    def flush(self) -> None:
        # Hot path: one SockJS ``a[...]`` frame for everything queued in this iteration.
        queued, self._queued = self._queued, None
        if queued is None or self.closed:
            return
        literal = self._cache.literal
        if not self.session.send_messages([literal(framed) for framed in queued]):
            self.cut_slow_consumer()

    def _close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.last_words(code, reason)  # the parent's ERROR for closes STOMP did not decide (4005)
        self.flush()  # frames queued before the close go before the close frame
        if self.closed:
            return
        self.closed = True
        self.session.close(code, reason)


class SockJsStomp:
    """The STOMP side of one SockJS session: CONNECT and admission, then the frame loop.

    :meth:`feed` is called with each batch of client messages, in order (one at a time: a lock
    keeps a slow frame, waiting for rate-limit tokens, ahead of the next batch).
    """

    def __init__(self, node: Node, destinations: Destinations, session: SockJsSession, cache: MessageCache,
                 spawn: Spawn) -> None:
        cfg = node.config
        self.node = node
        self.destinations = destinations
        self.session = session
        self.cache = cache
        self.spawn = spawn
        self.lock = asyncio.Lock()
        self.parser = FrameParser(max_frame_size=cfg.max_message_size, max_headers=MAX_HEADERS,
                                  max_header_length=MAX_HEADER_LENGTH)
        self.conn: SockJsStompConnection | None = None
        self.stomp: StompSession | None = None
        self.on_admitted: Callable[[], None] | None = None
        self._connecting = False
        self._beats: Heartbeats | None = None
        self._deadline: TokenDeadline | None = None
        self._loop = asyncio.get_running_loop()
        # STOMP 1.2 §Connecting: the CONNECT must come within handshake_timeout, as on /stomp
        self._connect_timer: asyncio.TimerHandle | None = self._loop.call_later(
            cfg.handshake_timeout, self._connect_timeout)

    # -- input --------------------------------------------------------------------------------------
    async def feed(self, messages: list[str], request: web.Request) -> None:
        """One batch of client messages (``xhr_send`` body, websocket message)."""
        async with self.lock:
            if self.session.closed:
                return
            if self._beats is not None:
                self._beats.received = self._loop.time()
            events = self.parser.feed("".join(messages).encode())
            try:
                if self.stomp is None:
                    await self._before_connected(events, request)
                else:
                    await self.stomp.handle_events(events)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("STOMP over SockJS session %s failed", self.session.id)
                if self.stomp is not None:
                    self.stomp.error("internal error", code="internal", close=error_close_code("internal"))
                else:
                    self._refuse(ConnectRefusal("1.2", "internal error", CloseCode.INTERNAL_ERROR, code="internal"))

    async def _before_connected(self, events: list[Frame | Heartbeat | ProtocolError], request: web.Request) -> None:
        for i, event in enumerate(events):
            if isinstance(event, Heartbeat):
                continue
            if isinstance(event, ProtocolError):
                self._refuse(ConnectRefusal("1.2", event.message, CloseCode.PROTOCOL_VIOLATION, receipt=event.receipt))
                return
            if event.command not in ("CONNECT", "STOMP"):
                self._refuse(ConnectRefusal("1.2", f"expected CONNECT or STOMP, got {event.command}",
                                            CloseCode.PROTOCOL_VIOLATION, receipt=event.get("receipt")))
                return
            await self._connect(event, events[i + 1 :], request)
            return

    async def _connect(self, connect: Frame, rest: list[Frame | Heartbeat | ProtocolError],
                       request: web.Request) -> None:
        """CONNECT → admission → CONNECTED: the same :func:`~.stomp_admission.admit` as ``/stomp``."""
        node, cfg = self.node, self.node.config
        self._cancel_connect_timer()
        self._connecting = True
        decided = await admit(node, request, connect, TRANSPORT_NAME)
        if self.session.closed:
            return
        if isinstance(decided, ConnectRefusal):
            self._refuse(decided)
            return
        version, admitted = decided.version, decided.info
        self.parser.version = version
        conn = SockJsStompConnection(admitted.client, admitted.user, admitted.claims, session=self.session,
                                     cache=self.cache, hub=node.hub, write_limit=cfg.write_buffer_limit,
                                     metrics=node.metrics, version=version, destinations=self.destinations)
        conn.address = admitted.address
        self.conn = conn
        if self.on_admitted is not None:
            self.on_admitted()
        try:
            await node.register(conn)
        except Exception as exc:
            log.warning("cannot register %s: %r", conn.id, exc)
            conn.closed = True
            await node.unregister(conn)
            self._refuse(ConnectRefusal(version, "broker unavailable, retry later", CloseCode.INTERNAL_ERROR,
                                        code="unavailable"))
            return
        if self.session.closed:  # the client went away while we registered
            conn.closed = True
            await node.unregister(conn)
            return
        connected, send_ms, expect_ms = connected_frame(cfg, version, conn.id, conn.user, decided.client_beat)
        conn.send_frame(connected)
        stomp = StompSession(node, conn, self.destinations, user_since=user_since(request))
        deadline = TokenDeadline(conn)
        deadline.set(token_expiry(conn.claims))
        stomp.deadline = deadline
        self._deadline = deadline
        self._beats = Heartbeats(conn, self._loop, send_ms, expect_ms * cfg.stomp_heartbeat_tolerance)
        self.stomp = stomp
        await stomp.handle_events(rest)

    # -- output before there is a connection ---------------------------------------------------
    def _refuse(self, refusal: ConnectRefusal) -> None:
        """An ERROR frame before there is a connection object (§ERROR), then the close."""
        self._cancel_connect_timer()
        if self.session.closed:
            return
        frame = encode(refusal.error_frame(), version=refusal.version)
        self.session.send_messages([json_string(frame.decode("utf-8", "replace"))])
        self.session.close(refusal.close_code, refusal.message[:120])

    def _connect_timeout(self) -> None:
        self._connect_timer = None
        if self.conn is None and not self._connecting and not self.session.closed:
            self._refuse(ConnectRefusal("1.2", "no CONNECT frame in time", CloseCode.PROTOCOL_VIOLATION))

    def _cancel_connect_timer(self) -> None:
        if self._connect_timer is not None:
            self._connect_timer.cancel()
            self._connect_timer = None

    # -- the end ------------------------------------------------------------------------------------
    def session_closed(self) -> None:
        """The SockJS session closed (any reason): end the STOMP connection, once.

        A connection still being set up (between admission and CONNECTED) is unregistered by
        :meth:`_connect` itself when it sees the closed session.
        """
        self._cancel_connect_timer()
        conn, stomp = self.conn, self.stomp
        if conn is None or stomp is None:
            return
        conn.closed = True
        if self._beats is not None:
            self._beats.cancel()
        if self._deadline is not None:
            self._deadline.cancel()
        stomp.close()
        self.spawn(self.node.unregister(conn))
