"""``build_app(node)``: every route of the web edge on one aiohttp application.

The handlers are objects holding the node they serve (the way centrifuge's
``NewWebsocketHandler(node, config)`` works), so nothing looks the node up in a global key:
the application can be served on its own, mounted as a sub-application under a prefix, or
its handlers added one by one to an existing application.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web

from ..protocol import wsframe
from .api import Api, Probes
from .sockjs import SockJsEndpoint
from .sockjs_session import SockJsOptions
from .sse import SseHandler
from .stomp import StompHandler
from .websocket import WebsocketHandler

if TYPE_CHECKING:
    from ..node import Node

SOCKJS_KEY = web.AppKey("pushgate.sockjs", SockJsEndpoint)
STATIC_DIR = Path(str(resources.files("pushgate") / "static"))

#: Set to ``1`` to mount :class:`EchoHandler` at :data:`ECHO_PATH` (conformance tests only).
TEST_ECHO_ENV = "PUSHGATE_TEST_ECHO"
ECHO_PATH = "/_test/echo"
_OP_BINARY = 0x2  # RFC 6455 §5.2


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


async def _client_js(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "pushgate.js", headers={"Content-Type": "text/javascript"})


class EchoHandler:
    """``GET /_test/echo``: echoes every text and binary message, for the Autobahn|Testsuite.

    It exists only when ``PUSHGATE_TEST_ECHO=1`` is set: it serves anyone, without the
    handshake, so it must never be reachable in production. Under :class:`~pushgate.server.Server`
    the front protocol answers the echo upgrade itself with the codec the server's ``/ws`` uses
    (:mod:`pushgate.web.lean`, so Autobahn checks that); this aiohttp handler is what answers
    when the application is mounted elsewhere: aiohttp's reader with ``/ws``'s limits and
    options, and the server's own frame writer (:func:`pushgate.protocol.wsframe.server_frame`).
    """

    def __init__(self, node: Node) -> None:
        self.node = node

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        config = self.node.config
        ws = web.WebSocketResponse(heartbeat=config.ping_interval, max_msg_size=config.max_message_size,
                                   compress=False, autoping=True, autoclose=False, timeout=5.0)
        await ws.prepare(request)
        transport = request.transport
        assert transport is not None
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.TEXT:
                transport.write(wsframe.server_frame(msg.data.encode()))
            elif msg.type is WSMsgType.BINARY:
                transport.write(wsframe.server_frame(msg.data, _OP_BINARY))
            elif msg.type is WSMsgType.CLOSE:
                if wsframe.peer_close_code_valid(msg.data):
                    await ws.close()
                else:
                    await ws.close(code=1002, message=b"invalid close code")
                return ws
            else:  # CLOSING, CLOSED, ERROR: aiohttp has already answered
                return ws


def build_app(node: Node) -> web.Application:
    """The web edge of ``node``: ``/api`` (+ auth and JSON errors), ``/ws``, ``/sse``, the STOMP
    endpoints (``stomp_paths``, default ``/stomp``; ``/ws`` speaks STOMP too when offered; SockJS
    under each STOMP path for ``new SockJS(url)`` clients), the demo
    page ``/``, ``/pushgate.js``, ``/static/``, ``/healthz``, ``/readyz`` and ``/metrics``.

    With ``PUSHGATE_TEST_ECHO=1`` in the environment it also has the conformance-test echo
    endpoint (:class:`EchoHandler`).

    ``client_max_size`` only takes effect on the application a runner serves; when this one is
    mounted as a sub-application, the parent's limit applies to API bodies.
    """
    app = web.Application(client_max_size=max(1 << 20, node.config.max_message_size))
    stomp = StompHandler(node)
    cfg = node.config
    sockjs = SockJsEndpoint(node, cfg.stomp_paths, SockJsOptions(  # SockJS on the same paths (/stomp/info, ...)
        heartbeat=cfg.sockjs_heartbeat, disconnect_delay=cfg.sockjs_disconnect_delay,
        response_limit=cfg.sockjs_response_limit, max_unadmitted_sessions=cfg.sockjs_max_pending_sessions,
    ))
    app.add_routes([
        web.get("/ws", WebsocketHandler(node, stomp).handle),
        *(web.get(path, stomp.handle) for path in node.config.stomp_paths),
        *sockjs.routes(),
        web.get("/sse", SseHandler(node).handle),
        *Probes(node).routes(),
        web.get("/", _index),
        web.get("/pushgate.js", _client_js),
        web.static("/static/", STATIC_DIR, show_index=False),
    ])
    app.add_subapp("/api", Api(node).application())
    app.on_shutdown.append(sockjs.shutdown)
    app[SOCKJS_KEY] = sockjs  # for operators' introspection and tests; handlers never look it up
    if os.environ.get(TEST_ECHO_ENV) == "1":
        app.router.add_get(ECHO_PATH, EchoHandler(node).handle)
    return app
