"""The listening socket's front protocol, and the lean WebSocket it serves ``/ws`` with.

Why: a WebSocket served by aiohttp costs ~16 KB and ~340 µs of CPU to accept (a request handler,
a request, a response, a reader with its buffers, a handler task and a heartbeat timer per
socket, all kept while the socket idles). Most of a node's sockets are idle WebSockets on
``/ws`` speaking the JSON protocol, so those take a shorter road:

- :class:`LeanFront` is the protocol factory of the server's listening socket. Each accepted
  socket starts with a :class:`_Head`, which reads the request head (``handshake_timeout`` from
  accept, as for every request). A plain JSON-protocol upgrade of ``/ws`` (RFC 6455 §4.2.1: GET,
  HTTP/1.1, ``Upgrade: websocket``, ``Connection: Upgrade``, version 13, a valid key, no STOMP
  subprotocol offered) is admitted by the one handshake (:func:`~.handshake.accept`, through a
  :class:`~.request_view.RequestView`) and answered here. Everything else (the HTTP API, SSE,
  STOMP, SockJS, probes, static files, any request this parser finds odd) is handed to aiohttp's
  ``RequestHandler`` with the bytes read so far (``transport.set_protocol``), and aiohttp
  serves it as before, its own errors included.
- :class:`LeanWebSocket` is then the socket's protocol *and* its hub connection: a slotted
  object, the sans-I/O :class:`~pushgate.protocol.wsframe.FrameParser`, and nothing else while
  idle (no task, no buffer, no timer, no session: the JSON session is made on the first
  message, or at once when the token has an ``exp`` to enforce). Messages run through the
  session serially on a worker task that exists only while there is work; reading pauses when
  more than ``max_message_size`` bytes of messages wait.
- Heartbeats are one sweep per node every ``ping_interval / 4`` (:meth:`LeanFront._sweep`),
  not a timer per socket: a socket silent for ``ping_interval`` gets a ping, and one still
  silent ``ping_interval / 2`` after it is closed (so a dead peer goes after 1.5-1.75 x
  ``ping_interval`` of silence; any frame counts as life, as in aiohttp). A sweep visits the
  sockets in slices spread over its period (one every ``SWEEP_SLICE`` seconds): sockets that
  connected together fall silent together, and pinging 5,000 of them in one callback held
  the event loop (and every delivery waiting on it) for ~35 ms. The slices fill the first
  half of the period; a sweep left unfinished by a late loop is finished before the next.

When ``build_app`` is mounted inside someone else's aiohttp application none of this runs:
``/ws`` is :class:`~.websocket.WebsocketHandler`, with the same handshake and session.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
from collections import deque
from http import HTTPStatus
from typing import TYPE_CHECKING, cast
from urllib.parse import parse_qsl

from aiohttp import web

from ..auth import token_expiry
from ..errors import CloseCode
from ..logs import ACCESS_LOGGER
from ..protocol import wsframe
from ..protocol.wsframe import Close, Failure, FrameParser, Message, Ping
from .app import ECHO_PATH, TEST_ECHO_ENV
from .connection import FramedConnection
from .errors import CODE_BY_HTTP_STATUS, error_response
from .handshake import Refusal, accept, open_session, user_since
from .peer import client_address
from .request_view import RequestView
from .session import JsonSession
from .websocket import CLOSE_TIMEOUT, STOMP_SUBPROTOCOLS

if TYPE_CHECKING:
    from aiohttp.abc import AbstractStreamWriter
    from aiohttp.http_parser import RawRequestMessage
    from aiohttp.streams import StreamReader

    from ..app import ClientInfo
    from ..node import Node

log = logging.getLogger(__name__)
http_log = logging.getLogger("pushgate.http")
access_log = logging.getLogger(ACCESS_LOGGER)

#: A head longer than this is not parsed here: aiohttp gets it and applies its own limits
#: (8190 bytes per line and per header). Not a client-visible bound, a fast-path cut-off.
HEAD_LIMIT = 16384
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
TICKS_PER_PING = 5  # sweeps (ping_interval / 4 each) of silence before a ping: 1-1.25 x ping_interval
TICKS_TO_ANSWER = 2  # sweeps after a ping without a frame back before the close: 0.5 x ping_interval
SWEEP_SLICE = 0.02  # seconds between the slices of one sweep (each visits its share of the sockets)
_PING = wsframe.ping_frame()
#: the first two bytes of a client's pong with an empty payload (FIN + pong, masked, length 0), the
#: answer to :data:`_PING`; with its 4-byte mask it is the whole read of a connection that only
#: answers pings, so the heartbeat of an idle connection costs no parser and no event objects
_EMPTY_PONG = bytes((0x80 | wsframe.OP_PONG, 0x80))


def accept_key(key: str) -> str | None:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key`` (§4.2.2), or None when the
    key is not the base64 of 16 bytes (§4.1)."""
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            return None
    except ValueError:
        return None
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()


def parse_head(head: bytes) -> tuple[str, str, str, list[tuple[str, str]]] | None:
    """(method, target, version, headers) of a request head (without its blank line), or None for
    anything unusual (folded or nameless lines, spaces in a name): aiohttp answers those."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        return None
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or b" " in name or b"\t" in name:
            return None
        headers.append((name.decode("latin-1"), value.strip(b" \t").decode("utf-8", "surrogateescape")))
    method, target, version = (p.decode("latin-1") for p in parts)
    return method, target, version, headers


def _tokens(view: RequestView, name: str) -> set[str]:
    return {t.strip().lower() for value in view.headers.getall(name, ()) for t in value.split(",")}


def plain_upgrade(view: RequestView, version: str) -> str | None:
    """The ``Sec-WebSocket-Accept`` value when ``view`` is a WebSocket upgrade this module
    answers (§4.2.1, JSON protocol: no STOMP subprotocol offered, no body), else None."""
    headers = view.headers
    if view.method != "GET" or version != "HTTP/1.1" or headers.get("Sec-WebSocket-Version") != "13":
        return None
    if "websocket" not in _tokens(view, "Upgrade") or "upgrade" not in _tokens(view, "Connection"):
        return None
    if "Transfer-Encoding" in headers or headers.get("Content-Length", "0") != "0":
        return None
    if _tokens(view, "Sec-WebSocket-Protocol") & set(STOMP_SUBPROTOCOLS):
        return None
    keys = headers.getall("Sec-WebSocket-Key", ())
    return accept_key(keys[0]) if len(keys) == 1 else None


def switching_protocols(accept_value: str) -> bytes:
    """The 101 answer to an upgrade (§4.2.2); no subprotocol, no extension (frames are shared)."""
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_value.encode() + b"\r\n\r\n")


def http_error(status: int, body: bytes) -> bytes:
    """A refused handshake: the JSON error body, then the connection closes."""
    return (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


def log_access(view: RequestView, remote: str | None, status: int, nbytes: int, seconds: float) -> None:
    """The access-log line aiohttp's :class:`~pushgate.logs.AccessLog` writes, for a request
    answered here (``access_log = true``): a WebSocket session is logged when it ends, and the
    query string never (it may carry ``?token=``)."""
    access_log.info(
        '%s "%s %s" %d %dB %.1fms', remote, view.method, view.path, status, nbytes, seconds * 1000,
        extra={"remote": remote, "method": view.method, "path": view.path, "status": status, "bytes": nbytes,
               "duration_ms": round(seconds * 1000, 3), "user_agent": view.headers.get("User-Agent", "")},
    )


class LeanFront:
    """The listening socket's protocol factory (see the module docstring); one per server.

    It also bounds the first request head of every socket by ``handshake_timeout`` from accept,
    including heads handed to aiohttp unfinished: aiohttp has no head timeout, and its keep-alive
    timer (meant for idle connections) would let a slowloris hold a socket that long. The
    deadline of a handed-over socket is disarmed when aiohttp hands the parsed head to its
    request factory (wrapped here), which it does for every head, well-formed or not.
    """

    def __init__(self, node: Node, server: web.Server, *, ws_path: str = "/ws", echo_path: str | None = None
                 ) -> None:
        self.node = node
        self.config = node.config
        self.loop = asyncio.get_running_loop()
        self.ws_path = ws_path
        self.echo_path = echo_path
        self.conns: set[LeanWebSocket] = set()
        self.tick = 1
        self._round: tuple[LeanWebSocket, ...] = ()  # the sockets the running sweep visits
        self._round_at = 0  # the next of them to visit
        self._round_slice = 1  # how many one slice visits
        self._slicer: asyncio.TimerHandle | None = None  # the running sweep's next slice
        self._server = server
        self._heads: set[_Head] = set()
        self._waiting: dict[web.RequestHandler, asyncio.TimerHandle] = {}
        self._closed = False
        make_request = server.request_factory

        def head_arrived(message: RawRequestMessage, payload: StreamReader, protocol: web.RequestHandler,
                         writer: AbstractStreamWriter, task: asyncio.Task[None]) -> web.BaseRequest:
            deadline = self._waiting.pop(protocol, None)
            if deadline is not None:
                deadline.cancel()
            return make_request(message, payload, protocol, writer, task)

        server.request_factory = head_arrived
        self._sweep_period = self.config.ping_interval / 4
        self._sweeper = self.loop.call_later(self._sweep_period, self._sweep)

    def __call__(self) -> _Head:
        head = _Head(self)
        self._heads.add(head)
        return head

    # -- hand-over to aiohttp --------------------------------------------------------------
    def hand_over(self, transport: asyncio.Transport, data: bytes, deadline: asyncio.TimerHandle | None) -> None:
        """Give the socket to aiohttp with the bytes read so far; an unfinished head keeps its deadline."""
        # aiohttp's own handler, but with JSON error bodies for requests it cannot parse
        handler = JsonErrorsRequestHandler(self._server, loop=self.loop, **self._server._kwargs)
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if deadline is not None:
            deadline.cancel()
            if b"\r\n\r\n" not in data:
                self._waiting[handler] = self.loop.call_at(deadline.when(), self._overdue, handler)
        if data:
            handler.data_received(data)

    def _overdue(self, handler: web.RequestHandler) -> None:
        self._waiting.pop(handler, None)
        if handler.transport is not None:
            http_log.debug("closing %s: no complete request head within %.1fs",
                           handler.transport.get_extra_info("peername"), self.config.handshake_timeout)
            handler.force_close()

    # -- heartbeats ---------------------------------------------------------------------------
    def _sweep(self) -> None:
        """One pass over every lean socket: ping the silent, close the unanswering (cold path,
        O(sockets) every ping_interval / 4: ~0.3 µs a socket, ~7 µs one that gets a ping), in
        slices over the sweep's period (see the module)."""
        if self._closed:
            return
        if self._slicer is not None:  # a late loop left the last sweep unfinished
            self._slicer.cancel()
            self._round_slice = len(self._round)
            self._sweep_slice()
        self.tick += 1
        self._round, self._round_at = tuple(self.conns), 0
        # Slices fill half the period, so a loop running late still finishes each sweep in time.
        slices = max(1, int(self._sweep_period / 2 / SWEEP_SLICE))
        self._round_slice = max(1, -(-len(self._round) // slices))  # ceil
        self._sweeper = self.loop.call_later(self._sweep_period, self._sweep)
        self._sweep_slice()

    def _sweep_slice(self) -> None:
        self._slicer = None
        if self._closed:
            return
        tick, round_, start = self.tick, self._round, self._round_at
        end = min(len(round_), start + self._round_slice)
        for i in range(start, end):
            round_[i].heartbeat(tick)  # a socket closed since the sweep began returns at once
        self._round_at = end
        if end < len(round_):
            self._slicer = self.loop.call_later(SWEEP_SLICE, self._sweep_slice)
        else:
            self._round = ()  # let closed sockets go before the next sweep
            self._round_at = 0

    # -- the lean handshake -------------------------------------------------------------------
    async def handshake(self, head: _Head, view: RequestView, accept_value: str) -> None:
        """Admit ``view`` through the one handshake, then upgrade and open the session."""
        transport = head.transport
        assert transport is not None
        try:
            await self._handshake(head, transport, view, accept_value)
        except asyncio.CancelledError:  # the node is stopping mid-handshake
            transport.abort()
            raise

    async def _handshake(self, head: _Head, transport: asyncio.Transport, view: RequestView,
                         accept_value: str) -> None:
        node = self.node
        started = self.loop.time()
        admitted = await accept(node, view, LeanWebSocket.transport_name)
        if isinstance(admitted, Refusal):
            if head.lost:
                return
            if admitted.close_code is None:
                body = admitted.body()
                transport.write(http_error(admitted.status, body))
            else:  # told after the upgrade, with a close code, so browsers can see why
                body = b""
                transport.write(switching_protocols(accept_value)
                                + wsframe.close_frame(admitted.close_code, admitted.close_message))
            transport.close()
            if self.config.access_log:
                remote = client_address(view, self.config.trusted_proxies)
                log_access(view, remote, admitted.status if body else 101, len(body), self.loop.time() - started)
            return
        conn = LeanWebSocket(self, admitted, transport)
        if self.config.access_log:
            conn.access = (view, started)
        conn._pending = [switching_protocols(accept_value)]  # the welcome joins it in one write
        node.hub.want_flush(conn)
        try:
            await open_session(node, conn, user_since(view))  # user_since was checked by accept
        except Exception as exc:
            log.warning("cannot register %s: %r", conn.id, exc)
            conn.close(CloseCode.INTERNAL_ERROR, "broker unavailable")
        conn.registered = True
        if head.lost:  # gone during the handshake: undo the registration, as a close would
            conn.connection_lost(None)
            return
        if token_expiry(conn.claims) is not None:
            conn.session = JsonSession(node, conn)  # arms the 4005 deadline now
        transport.set_protocol(conn)
        self.conns.add(conn)
        if self._closed:
            conn.closed = True
            transport.close()
        rest, head.buffer = head.buffer, b""
        if rest:
            conn.data_received(rest)
        if head.paused:
            transport.resume_reading()

    def close(self) -> None:
        """The server is stopping: no more sweeps, every socket still here is closed."""
        self._closed = True
        self._sweeper.cancel()
        if self._slicer is not None:
            self._slicer.cancel()
        for deadline in self._waiting.values():
            deadline.cancel()
        self._waiting.clear()
        for head in tuple(self._heads):
            head.abort()
        for conn in tuple(self.conns):
            conn.closed = True
            conn.transport.close()


class JsonErrorsRequestHandler(web.RequestHandler):
    """aiohttp's request handler, answering a request it cannot parse (an empty
    ``Content-Length``, a broken header line, bad chunking) with pushgate's JSON error body
    instead of aiohttp's plain text: every error a client gets, on ``/api`` and everywhere,
    has one shape (docs/api.md). Other errors (a real 500) go through aiohttp unchanged."""

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if not 400 <= status < 500 or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        reason = (message or HTTPStatus(status).phrase).strip().splitlines()[0][:120]
        http_log.debug("bad HTTP request from %s: %d %s", request.remote, status, reason)
        response = error_response(status, CODE_BY_HTTP_STATUS.get(status, "bad_request"),
                                  f"malformed HTTP request: {reason}")
        response.force_close()
        return response


class _Head(asyncio.Protocol):
    """A socket until its request head is read: then a lean WebSocket, an echo, or aiohttp's."""

    __slots__ = ("buffer", "deadline", "front", "lost", "paused", "transport")

    def __init__(self, front: LeanFront) -> None:
        self.front = front
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.lost = False
        self.paused = False
        # from accept, as aiohttp's keep-alive timer would start (the TLS handshake counts too)
        self.deadline: asyncio.TimerHandle | None = front.loop.call_later(
            front.config.handshake_timeout, self._overdue)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._done()

    def _done(self) -> None:
        self.front._heads.discard(self)
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _overdue(self) -> None:
        self.deadline = None
        self.front._heads.discard(self)
        if self.transport is not None:
            http_log.debug("closing %s: no complete request head within %.1fs",
                           self.transport.get_extra_info("peername"), self.front.config.handshake_timeout)
            self.transport.close()

    def abort(self) -> None:
        self._done()
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer = self.buffer + data if self.buffer else data
        if self.deadline is None:  # the head is read: the handshake runs, keep what follows for it
            if len(buffer) > HEAD_LIMIT and not self.paused and self.transport is not None:
                self.transport.pause_reading()
                self.paused = True
            return
        if not buffer.startswith(b"GET /"[:len(buffer)]):
            self._hand_over()  # not a GET: the HTTP API, aiohttp's
            return
        end = buffer.find(b"\r\n\r\n")
        if end > HEAD_LIMIT:
            self._hand_over()
            return
        if end < 0:
            line_end = buffer.find(b"\r\n")
            if (len(buffer) > HEAD_LIMIT or b"\n\n" in buffer
                    or (line_end > 0 and not self._ours(buffer[4:line_end].split(b" ", 1)[0]))):
                self._hand_over()
            return
        self._head(buffer[:end], buffer[end + 4:])

    def _ours(self, target: bytes) -> bool:
        path = target.split(b"?", 1)[0].decode("latin-1")
        return path == self.front.ws_path or path == self.front.echo_path

    def _hand_over(self) -> None:
        transport, data, deadline = self.transport, self.buffer, self.deadline
        assert transport is not None
        self.buffer = b""
        self.front._heads.discard(self)
        self.deadline = None
        self.front.hand_over(transport, data, deadline)

    def _head(self, head: bytes, rest: bytes) -> None:
        front = self.front
        parsed = parse_head(head)
        if parsed is None:
            self._hand_over()
            return
        method, target, version, headers = parsed
        path, _, query = target.partition("?")
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        remote = str(peer[0]) if isinstance(peer, tuple) and peer else None
        view = RequestView.build(method, path, parse_qsl(query, keep_blank_values=True), headers, remote)
        accept_value = plain_upgrade(view, version)
        if accept_value is None or path not in (front.ws_path, front.echo_path):
            self._hand_over()
            return
        self._done()
        self.buffer = rest
        transport = self.transport
        assert transport is not None
        if path == front.echo_path:
            echo = _Echo(transport, front.config.max_message_size)
            transport.set_protocol(echo)
            transport.write(switching_protocols(accept_value))
            if rest:
                echo.data_received(rest)
            return
        front.node.spawn(front.handshake(self, view, accept_value), "ws-handshake")


class LeanWebSocket(FramedConnection, asyncio.Protocol):
    """One JSON-protocol WebSocket, as a hub connection and as the socket's protocol.

    Close handshake (§7.1): our close (:meth:`close`) writes the close frame, stops sending and
    closes the socket when the peer's close comes back (or aborts it after ``CLOSE_TIMEOUT``).
    The peer's close is answered with 1000 (its code was valid: the parser fails others with
    1002) and the socket closed; a protocol error (:class:`~pushgate.protocol.wsframe.Failure`)
    is a close frame with its code (1002, 1007, 1009), then the socket closes.
    """

    __slots__ = ("_close_timer", "_front", "_inbox", "_inbox_bytes", "_lost", "_parser", "_paused",
                 "_ping_tick", "_seen", "_worker", "access", "registered", "session")
    transport_name = "websocket"
    cyclic_garbage = 0.0  # a closed one is freed by reference counting (tests/web/test_lean.py)

    def __init__(self, front: LeanFront, info: ClientInfo, transport: asyncio.Transport) -> None:
        node = front.node
        super().__init__(info.client, info.user, info.claims, transport=transport, hub=node.hub,
                         write_limit=front.config.write_buffer_limit, metrics=node.metrics)
        self.address = info.address
        self._front = front
        self._parser: FrameParser | None = None
        self.session: JsonSession | None = None
        self._inbox: deque[bytes] | None = None
        self._inbox_bytes = 0
        self._worker: asyncio.Task[None] | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._seen = front.tick  # the sweep tick of the last frame received
        self._ping_tick = 0  # the sweep tick of an unanswered ping, 0 when none
        self._lost = False
        self._paused = False
        self.registered = False  # open_session ran: unregister when the socket is gone
        self.access: tuple[RequestView, float] | None = None  # (request, start) with access_log on

    @property
    def transport(self) -> asyncio.Transport:
        return self._transport

    # -- reading ------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self._seen = self._front.tick
        parser = self._parser
        if parser is None:
            if data[:2] == _EMPTY_PONG and len(data) == 6:
                return  # the answer to our ping, alone: nothing to parse, and no parser kept for it
            parser = self._parser = FrameParser(self._front.config.max_message_size)
        for event in parser.feed(data):
            kind = type(event)
            if kind is Message:
                assert isinstance(event, Message)
                if self.closed:
                    continue  # closing: what the peer still sends is not read
                if event.binary:
                    self.close(CloseCode.PROTOCOL_VIOLATION, "binary frames are not part of the JSON protocol")
                else:
                    self._enqueue(event.data)
            elif kind is Ping:
                assert isinstance(event, Ping)
                if not self.closed and not self._transport.is_closing():  # nothing after our close frame
                    self._transport.write(wsframe.pong_frame(event.payload))
            elif kind is Close:
                self._peer_closed(wsframe.CLOSE_NORMAL, "")
            elif kind is Failure:
                assert isinstance(event, Failure)
                self._peer_closed(event.code, event.reason)
            # Pong: its arrival already counted as life

    def _peer_closed(self, code: int, reason: str) -> None:
        """The peer closed (or broke the protocol): answer with ``code`` unless we closed first."""
        if not self.closed:
            self.flush()  # frames queued before the close still go first
            self.closed = True
            if not self._transport.is_closing():
                self._transport.write(wsframe.close_frame(code, reason))
        self._transport.close()

    def _enqueue(self, data: bytes) -> None:
        inbox = self._inbox
        if inbox is None:
            inbox = self._inbox = deque()
        inbox.append(data)
        self._inbox_bytes += len(data)
        if self._worker is None:
            self._worker = self._front.loop.create_task(self._work())
        if self._inbox_bytes > self._front.config.max_message_size and not self._paused:
            self._paused = True  # bounded: the client waits, as a reader that awaited would make it
            self._transport.pause_reading()

    async def _work(self) -> None:
        """Run queued messages through the session, in order, then end (and, once the socket is
        gone, undo the registration). Exists only while there is work."""
        try:
            inbox = self._inbox
            while inbox:
                data = inbox.popleft()
                self._inbox_bytes -= len(data)
                if self._paused and self._inbox_bytes <= self._front.config.max_message_size:
                    self._paused = False
                    if not self._lost:
                        self._transport.resume_reading()
                if self.closed:
                    continue
                session = self.session
                if session is None:
                    session = self.session = JsonSession(self._front.node, self)
                try:
                    await session.handle(data)
                except Exception:
                    log.exception("connection %s failed", self.id)
                    self.close(CloseCode.INTERNAL_ERROR, "internal error")
            self._inbox = None
            if self._lost:
                await self._teardown()
        finally:
            self._worker = None

    async def _teardown(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            session.close()
        if self.access is not None:
            view, started = self.access
            self.access = None
            log_access(view, self.address, 101, 0, self._front.loop.time() - started)
        if self.registered:
            self.registered = False
            await self._front.node.unregister(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._lost = True
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self._front.conns.discard(self)
        if self._worker is None:
            self._worker = self._front.loop.create_task(self._work())

    # -- writing ------------------------------------------------------------------------------
    def _close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.flush()  # frames queued before the close must precede the close frame
        if self.closed:
            return
        self.closed = True
        transport = self._transport
        if transport.is_closing():
            return
        transport.write(wsframe.close_frame(code, reason))
        # A peer that never answers our close (or never reads) must not hold its buffer forever.
        self._close_timer = self._front.loop.call_later(CLOSE_TIMEOUT, transport.abort)

    def heartbeat(self, tick: int) -> None:
        """The sweep's visit (see the module docstring)."""
        if self.closed:
            return  # closing: the close timer bounds it
        if self._ping_tick:
            if self._seen >= self._ping_tick:
                self._ping_tick = 0  # something came back after the ping
            elif tick - self._ping_tick >= TICKS_TO_ANSWER:
                log.debug("closing %s: no answer to a ping", self.id)
                self.closed = True
                self._transport.abort()
                return
            else:
                return
        if tick - self._seen >= TICKS_PER_PING and not self._transport.is_closing():
            self._transport.write(_PING)
            self._ping_tick = tick


class _Echo(asyncio.Protocol):
    """``/_test/echo`` (``PUSHGATE_TEST_ECHO=1`` only, see :class:`~.app.EchoHandler`): every
    message back, through the same parser and writer as :class:`LeanWebSocket`, so the
    Autobahn|Testsuite checks the codec the lean ``/ws`` uses."""

    __slots__ = ("_parser", "_transport")

    def __init__(self, transport: asyncio.Transport, max_size: int) -> None:
        self._transport = transport
        self._parser = FrameParser(max_size)

    def data_received(self, data: bytes) -> None:
        write = self._transport.write
        for event in self._parser.feed(data):
            if isinstance(event, Message):
                write(wsframe.server_frame(event.data, wsframe.OP_BINARY if event.binary else wsframe.OP_TEXT))
            elif isinstance(event, Ping):
                write(wsframe.pong_frame(event.payload))
            elif isinstance(event, Close | Failure):
                code = event.code if isinstance(event, Failure) else wsframe.CLOSE_NORMAL
                reason = event.reason if isinstance(event, Failure) else ""
                write(wsframe.close_frame(code, reason))
                self._transport.close()


def echo_path_enabled() -> str | None:
    """The echo endpoint's path when ``PUSHGATE_TEST_ECHO=1``, else None."""
    return ECHO_PATH if os.environ.get(TEST_ECHO_ENV) == "1" else None


__all__ = ["HEAD_LIMIT", "LeanFront", "LeanWebSocket", "accept_key", "echo_path_enabled", "parse_head", "plain_upgrade"]
