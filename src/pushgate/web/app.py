"""``build_app(node)``: every route of the web edge on one aiohttp application.

The handlers are objects holding the node they serve (the way centrifuge's
``NewWebsocketHandler(node, config)`` works), so nothing looks the node up in a global key:
the application can be served on its own, mounted as a sub-application under a prefix, or
its handlers added one by one to an existing application.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from .api import Api, Probes
from .sse import SseHandler
from .websocket import WebsocketHandler

if TYPE_CHECKING:
    from ..node import Node

STATIC_DIR = Path(str(resources.files("pushgate") / "static"))


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


async def _client_js(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "pushgate.js", headers={"Content-Type": "text/javascript"})


def build_app(node: Node) -> web.Application:
    """The web edge of ``node``: ``/api`` (+ auth and JSON errors), ``/ws``, ``/sse``, the demo
    page ``/``, ``/pushgate.js``, ``/static/``, ``/healthz``, ``/readyz`` and ``/metrics``.

    ``client_max_size`` only takes effect on the application a runner serves; when this one is
    mounted as a sub-application, the parent's limit applies to API bodies.
    """
    app = web.Application(client_max_size=max(1 << 20, node.config.max_message_size))
    app.add_routes([
        web.get("/ws", WebsocketHandler(node).handle),
        web.get("/sse", SseHandler(node).handle),
        *Probes(node).routes(),
        web.get("/", _index),
        web.get("/pushgate.js", _client_js),
        web.static("/static/", STATIC_DIR, show_index=False),
    ])
    app.add_subapp("/api", Api(node).application())
    return app
