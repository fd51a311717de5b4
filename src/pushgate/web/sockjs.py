"""SockJS on the STOMP endpoints: ``new SockJS(url)`` + ``@stomp/stompjs`` connect unchanged (docs/stomp.md).

Spring's ``.withSockJS()`` endpoints speak the SockJS protocol under the STOMP path, and pages
written for them use ``sockjs-client``; this module serves the same URLs under every
``stomp_paths`` entry (``/stomp/info``, ``/stomp/<server>/<session>/<transport>``):

=====================================  ======================================================
``GET  <base>/info``                   capabilities and entropy (never cached), CORS
``OPTIONS`` on info and xhr URLs       CORS preflight, cacheable for a year
``GET  <base>/<s>/<id>/websocket``     a WebSocket carrying SockJS frames (one session each)
``POST <base>/<s>/<id>/xhr_streaming`` the receiving half of xhr-streaming: 2 KiB prelude,
                                       then frames, one per line, until ``response_limit``
``POST <base>/<s>/<id>/xhr``           the receiving half of xhr-polling: one batch per POST
``POST <base>/<s>/<id>/xhr_send``      client → server messages (JSON array of strings), 204
=====================================  ======================================================

The session rules (one receiving request, heartbeats, timeouts, closing frames) live in
:mod:`.sockjs_session`, the STOMP side in :mod:`.sockjs_stomp`, the framing in
:mod:`.sockjs_codec`. This module is the HTTP edge: it finds or opens sessions, writes frames
to responses and sockets, and bounds what clients can make it hold: sessions that have not sent
their CONNECT yet (``max_unadmitted_sessions``; admitted ones count against the node's
connection limits), ``xhr_send`` body size and concurrency, and what waits in a session
(``write_buffer_limit``: a client that does not read is closed with 4001).

Mount it next to :func:`~.app.build_app`'s routes::

    sockjs = SockJsEndpoint(node, node.config.stomp_paths)
    app.add_routes(sockjs.routes())
    app.on_shutdown.append(sockjs.shutdown)
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Coroutine, Iterable
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import WSMsgType, web

from ..errors import AuthError, ClientError
from ..protocol import wsframe
from ..protocol.outgoing import chunk
from .errors import classify
from .handshake import DRAINING_MESSAGE
from .peer import client_address
from .sockjs_codec import (
    STREAMING_PRELUDE,
    WELCOME,
    BodyError,
    MessageCache,
    parse_send_body,
    parse_ws_message,
    valid_id,
)
from .sockjs_session import SockJsOptions, SockJsSession
from .sockjs_stomp import SockJsStomp
from .stomp_destinations import Destinations
from .websocket import CLOSE_TIMEOUT

if TYPE_CHECKING:
    from ..node import Node

log = logging.getLogger(__name__)

__all__ = ["SockJsEndpoint", "SockJsOptions", "sockjs_routes"]

NO_CACHE = "no-store, no-cache, must-revalidate, max-age=0"  # sockjs-protocol verify_not_cached
ONE_YEAR = 31536000
JS_TYPE = "application/javascript; charset=UTF-8"
TEXT_TYPE = "text/plain; charset=UTF-8"
_SEGMENTS = "{server:[^/.]+}/{session:[^/.]+}"
#: how often a waiting receiving request checks that its client is still there (aiohttp does
#: not cancel handlers when the peer leaves)
ALIVE_CHECK = 1.0


def sockjs_routes(node: Node, *base_paths: str, options: SockJsOptions | None = None) -> list[web.RouteDef]:
    """The SockJS routes under each of ``base_paths`` (one session table for all of them).
    Prefer :class:`SockJsEndpoint` when the application's shutdown can be hooked."""
    return SockJsEndpoint(node, base_paths, options).routes()


class _Entry:
    """A session in the table, with its STOMP side."""

    __slots__ = ("admitted", "session", "stomp")

    def __init__(self, session: SockJsSession, stomp: SockJsStomp) -> None:
        self.session = session
        self.stomp = stomp
        self.admitted = False


class SockJsEndpoint:
    """The SockJS server of one node, on one or more base paths (see the module docstring)."""

    def __init__(self, node: Node, base_paths: Iterable[str], options: SockJsOptions | None = None) -> None:
        cfg = node.config
        self.node = node
        self.base_paths = tuple(p.rstrip("/") for p in base_paths)
        self.options = options or SockJsOptions()
        self.destinations = Destinations(cfg.stomp_broker_prefixes, cfg.stomp_app_prefix, cfg.stomp_user_prefix,
                                         cfg.stomp_user_destination)
        self.cache = MessageCache()
        self.max_body = self.options.max_body or 4 * cfg.max_message_size
        self.sessions: dict[str, _Entry] = {}
        self.unadmitted = 0  # sessions in the table that have not been admitted (no CONNECT yet)
        self._ws_sessions: set[SockJsSession] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sends: dict[str, int] = {}  # xhr_send requests in flight per session

    def routes(self) -> list[web.RouteDef]:
        out: list[web.RouteDef] = []
        for base in self.base_paths:
            session_url = f"{base}/{_SEGMENTS}"
            out += [
                web.get(base + "/", self.greeting),
                web.get(base + "/info", self.info),
                web.options(base + "/info", self.preflight_get),
                web.get(session_url + "/websocket", self.websocket),
                web.post(session_url + "/xhr_streaming", self.xhr_streaming),
                web.options(session_url + "/xhr_streaming", self.preflight_post),
                web.post(session_url + "/xhr", self.xhr),
                web.options(session_url + "/xhr", self.preflight_post),
                web.post(session_url + "/xhr_send", self.xhr_send),
                web.options(session_url + "/xhr_send", self.preflight_post),
            ]
        return out

    async def shutdown(self, app: web.Application | None = None) -> None:
        """Forget every session (their STOMP connections end) and wait for the last tasks."""
        for entry in list(self.sessions.values()):
            entry.session.forget()
        for session in list(self._ws_sessions):
            session.forget()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=CLOSE_TIMEOUT)

    # -- static URLs ---------------------------------------------------------------------------------
    async def greeting(self, request: web.Request) -> web.Response:
        return web.Response(body=WELCOME, headers={"Content-Type": TEXT_TYPE})

    async def info(self, request: web.Request) -> web.Response:
        """``/info``: fetched before every session (and timed: clients derive timeouts from it)."""
        body = msgspec.json.encode({"websocket": True, "origins": ["*:*"], "cookie_needed": False,
                                    "entropy": secrets.randbits(32)})
        return web.Response(body=body, headers={"Content-Type": "application/json; charset=UTF-8",
                                                "Cache-Control": NO_CACHE, **self._cors(request)})

    async def preflight_get(self, request: web.Request) -> web.Response:
        return self._preflight(request, "OPTIONS, GET")

    async def preflight_post(self, request: web.Request) -> web.Response:
        return self._preflight(request, "OPTIONS, POST")

    def _preflight(self, request: web.Request, methods: str) -> web.Response:
        return web.Response(status=204, headers={
            "Cache-Control": f"public, max-age={ONE_YEAR}", "Expires": formatdate(time.time() + ONE_YEAR, usegmt=True),
            "Access-Control-Max-Age": str(ONE_YEAR), "Access-Control-Allow-Methods": methods, **self._cors(request)})

    def _cors(self, request: web.Request) -> dict[str, str]:
        """CORS as the xhr transports need it: the origin echoed with credentials when it is one
        ``allowed_origins`` accepts (otherwise none: the browser keeps the response from the
        page), ``*`` without an origin or for ``null`` (pages from ``file://``)."""
        headers: dict[str, str] = {}
        origin = request.headers.get("Origin")
        if origin and origin != "null":
            try:
                self.node.auth.check_origin(origin)
            except AuthError:
                pass
            else:
                headers["Access-Control-Allow-Origin"] = origin
                headers["Access-Control-Allow-Credentials"] = "true"
        else:
            headers["Access-Control-Allow-Origin"] = "*"
        wanted = request.headers.get("Access-Control-Request-Headers")
        if wanted:
            headers["Access-Control-Allow-Headers"] = wanted
        return headers

    def _text(self, request: web.Request, status: int, text: str) -> web.Response:
        return web.Response(status=status, text=text + "\n", headers={"Cache-Control": NO_CACHE,
                                                                      **self._cors(request)})

    # -- sessions ------------------------------------------------------------------------------------
    def _ids(self, request: web.Request) -> str | None:
        server, session = request.match_info["server"], request.match_info["session"]
        return session if valid_id(server) and valid_id(session) else None

    def _may_open(self, request: web.Request) -> web.Response | None:
        """Why a new session cannot be opened now (as a response), or None."""
        node = self.node
        if node.draining:
            return self._text(request, 503, DRAINING_MESSAGE)
        if self.unadmitted >= self.options.max_unadmitted_sessions:
            return self._text(request, 503, "too many SockJS sessions are opening; retry later")
        try:
            node.check_capacity(address=client_address(request, node.config.trusted_proxies))
        except ClientError as exc:
            verdict = classify(exc)
            return self._text(request, verdict.status, verdict.message)
        return None

    def _new_session(self, session_id: str, *, in_table: bool) -> tuple[SockJsSession, SockJsStomp]:
        holder: list[SockJsStomp] = []

        def closed(_: SockJsSession) -> None:
            if holder:
                holder[0].session_closed()

        def gone(session: SockJsSession) -> None:
            entry = self.sessions.get(session_id)
            if entry is not None and entry.session is session:
                del self.sessions[session_id]
                if not entry.admitted:
                    self.unadmitted -= 1
            self._ws_sessions.discard(session)

        session = SockJsSession(session_id, self.options, write_limit=self.node.config.write_buffer_limit,
                                on_closed=closed, on_gone=gone)
        stomp = SockJsStomp(self.node, self.destinations, session, self.cache, self._spawn)
        holder.append(stomp)
        if in_table:
            entry = _Entry(session, stomp)
            self.sessions[session_id] = entry
            self.unadmitted += 1

            def admitted() -> None:
                if not entry.admitted and self.sessions.get(session_id) is entry:
                    entry.admitted = True
                    self.unadmitted -= 1

            stomp.on_admitted = admitted
        else:
            self._ws_sessions.add(session)
        return session, stomp

    def _receiving_session(self, request: web.Request) -> SockJsSession | web.Response:
        """The session a receiving request (xhr, xhr_streaming) names, opened if it is new."""
        session_id = self._ids(request)
        if session_id is None:
            return self._text(request, 404, "invalid session URL")
        entry = self.sessions.get(session_id)
        if entry is not None:
            return entry.session
        refused = self._may_open(request)
        if refused is not None:
            return refused
        return self._new_session(session_id, in_table=True)[0]

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- xhr transports ------------------------------------------------------------------------------
    async def xhr_streaming(self, request: web.Request) -> web.StreamResponse:
        found = self._receiving_session(request)
        if isinstance(found, web.Response):
            return found
        resp = web.StreamResponse(headers={"Content-Type": JS_TYPE, "Cache-Control": NO_CACHE, **self._cors(request)})
        await resp.prepare(request)
        transport = request.transport
        if transport is None or transport.is_closing():
            return resp
        assert isinstance(transport, asyncio.Transport)
        chunked = resp.headers.get("Transfer-Encoding", "").lower() == "chunked"
        receiver = _StreamingReceiver(transport, chunked=chunked, response_limit=self.options.response_limit,
                                      write_limit=self.node.config.write_buffer_limit)
        receiver.write(STREAMING_PRELUDE)
        found.attach(receiver)
        try:
            await receiver.wait(transport)
        finally:
            found.detach(receiver)
        return resp

    async def xhr(self, request: web.Request) -> web.Response:
        found = self._receiving_session(request)
        if isinstance(found, web.Response):
            return found
        receiver = _PollingReceiver()
        found.attach(receiver)
        transport = request.transport
        try:
            if transport is not None:
                await receiver.wait(transport)
        finally:
            found.detach(receiver)
        return web.Response(body=receiver.body, headers={"Content-Type": JS_TYPE, "Cache-Control": NO_CACHE,
                                                         **self._cors(request)})

    async def xhr_send(self, request: web.Request) -> web.Response:
        session_id = self._ids(request)
        entry = self.sessions.get(session_id) if session_id is not None else None
        if entry is None or entry.session.closed:
            return self._text(request, 404, "session not found")
        in_flight = self._sends.get(entry.session.id, 0)
        if in_flight >= self.options.max_sends_in_flight:
            return self._text(request, 429, "too many xhr_send requests in flight for this session")
        body = await self._read_body(request)
        if body is None:
            return self._text(request, 413, f"Payload too large: at most {self.max_body} bytes.")
        try:
            messages = parse_send_body(body)
        except BodyError as exc:
            return self._text(request, 400, str(exc))
        if messages:
            self._sends[entry.session.id] = in_flight + 1
            try:
                # the messages are handled in order, by a task of their own: a client that drops
                # this request must not cancel a STOMP frame half-way
                await asyncio.shield(self._spawn(entry.stomp.feed(messages, request)))
            finally:
                left = self._sends.get(entry.session.id, 1) - 1
                if left > 0:
                    self._sends[entry.session.id] = left
                else:
                    self._sends.pop(entry.session.id, None)
        return web.Response(status=204, headers={"Content-Type": TEXT_TYPE, "Cache-Control": NO_CACHE,
                                                 **self._cors(request)})

    async def _read_body(self, request: web.Request) -> bytes | None:
        """The body, or None when it is over ``max_body`` (read no further than that)."""
        if request.content_length is not None and request.content_length > self.max_body:
            return None
        data = bytearray()
        while True:
            piece = await request.content.readany()
            if not piece:
                return bytes(data)
            data += piece
            if len(data) > self.max_body:
                return None

    # -- websocket transport -------------------------------------------------------------------------
    async def websocket(self, request: web.Request) -> web.StreamResponse:
        """One WebSocket, one session (the protocol lets two sockets share a session id)."""
        session_id = self._ids(request)
        if session_id is None:
            return self._text(request, 404, "invalid session URL")
        cfg = self.node.config
        ws = web.WebSocketResponse(heartbeat=cfg.ping_interval, max_msg_size=self.max_body, compress=False,
                                   autoping=True, autoclose=False, timeout=CLOSE_TIMEOUT)
        if not ws.can_prepare(request).ok:
            return self._text(request, 400, 'Can "Upgrade" only to "WebSocket".')
        refused = self._may_open(request)
        if refused is not None:
            return refused
        await ws.prepare(request)
        transport = request.transport
        assert isinstance(transport, asyncio.Transport)
        session, stomp = self._new_session(session_id, in_table=False)
        receiver = _WebSocketReceiver(ws, transport, cfg.write_buffer_limit)
        session.attach(receiver)
        try:
            while not session.closed:
                msg = await ws.receive()
                if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
                    text = msg.data if isinstance(msg.data, str) else msg.data.decode("utf-8", "replace")
                    try:
                        messages = parse_ws_message(text)
                    except BodyError as exc:  # the protocol: broken JSON ends the connection
                        session.close(1002, str(exc))
                        break
                    if messages:
                        await stomp.feed(messages, request)
                elif msg.type is WSMsgType.CLOSE:
                    receiver.peer_closed(msg.data)
                    break
                else:  # CLOSING, CLOSED, ERROR: over
                    break
        finally:
            session.detach(receiver)
            session.forget()
            if receiver.close_task is not None:
                await asyncio.wait([receiver.close_task], timeout=CLOSE_TIMEOUT)
        return ws


class _Waiting:
    """A receiving request that waits until the session ends it or its client leaves."""

    def __init__(self) -> None:
        self.done = asyncio.Event()

    def end(self) -> None:
        self.done.set()

    async def wait(self, transport: asyncio.BaseTransport) -> None:
        while not self.done.is_set():
            try:
                await asyncio.wait_for(self.done.wait(), ALIVE_CHECK)
            except TimeoutError:
                if transport.is_closing():
                    return


class _StreamingReceiver(_Waiting):
    """xhr-streaming: frames on one response, one per line, until ``response_limit`` bytes.

    Writes go straight to the transport (as :class:`~.sse.SseConnection` does), with chunk
    framing when the response is chunked (HTTP/1.1, RFC 9112 §7.1).
    """

    def __init__(self, transport: asyncio.Transport, *, chunked: bool, response_limit: int, write_limit: int) -> None:
        super().__init__()
        self._transport = transport
        self._chunked = chunked
        self._left = response_limit
        self._write_limit = write_limit

    def write(self, data: bytes) -> None:
        if not self._transport.is_closing():
            self._transport.write(chunk(data) if self._chunked else data)

    def send(self, frames: list[bytes]) -> bool:
        data = b"\n".join(frames) + b"\n"
        self.write(data)
        self._left -= len(data)
        return self._left > 0 and not self._transport.is_closing()

    def congested(self) -> bool:
        return self._transport.get_write_buffer_size() > self._write_limit


class _PollingReceiver(_Waiting):
    """xhr-polling: the first frames end the response."""

    def __init__(self) -> None:
        super().__init__()
        self.body = b""

    def send(self, frames: list[bytes]) -> bool:
        self.body += b"\n".join(frames) + b"\n"
        return False

    def congested(self) -> bool:
        return False


class _WebSocketReceiver:
    """The websocket transport: one WebSocket message per SockJS frame, written straight to the
    transport as :class:`~.websocket.WsConnection` does (server frames are unmasked)."""

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport, write_limit: int) -> None:
        self._ws = ws
        self._transport = transport
        self._write_limit = write_limit
        self.close_task: asyncio.Task[Any] | None = None

    def send(self, frames: list[bytes]) -> bool:
        if self._transport.is_closing():
            return False
        server_frame = wsframe.server_frame
        self._transport.write(b"".join(server_frame(f) for f in frames))
        return True

    def end(self) -> None:
        """After the close frame: close the socket (1000; the SockJS close frame has the code)."""
        if self.close_task is None and not self._ws.closed:
            self.close_task = asyncio.get_running_loop().create_task(self._ws.close(code=1000))

    def peer_closed(self, code: int) -> None:
        """RFC 6455 §7.4, as on /ws: answer an invalid close code with 1002."""
        if self.close_task is None and not self._ws.closed:
            valid = wsframe.peer_close_code_valid(code)
            self.close_task = asyncio.get_running_loop().create_task(
                self._ws.close(code=1000 if valid else 1002, message=b"" if valid else b"invalid close code"))

    def congested(self) -> bool:
        return self._transport.get_write_buffer_size() > self._write_limit
