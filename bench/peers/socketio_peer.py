"""Peer: python-socketio (``socketio.AsyncServer`` on aiohttp), the common Python real-time stack.

Not the benchmark's WebSocket contract, because socket.io is its own protocol on top of WebSocket;
the load clients speak enough of it (bench/lib/cload.c ``--proto socketio``, loadclient.SioWSClient):

* ``GET  /healthz``       -> 200
* ``GET  /socket.io/?EIO=4&transport=websocket`` -> Engine.IO open packet ``0{...}``; the client sends
  ``40`` (connect to namespace ``/``), the server answers ``40{...}``: the client is ready
* ``POST /api/broadcast`` -> body ``{"data": <json>}``; ``sio.emit("broadcast", data)`` to every
  client, which arrives as the text frame ``42["broadcast",<data>]``

``python-socketio`` is installed into the benchmark cache (bench/lib/targets.py), not into the project.
Run: ``PYTHONPATH=~/.cache/pushgate-bench/py-socketio python bench/peers/socketio_peer.py --port 8006``
"""

from __future__ import annotations

import argparse
import json

import socketio
from aiohttp import web


def make_app() -> web.Application:
    sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins="*", transports=["websocket"])
    app = web.Application()
    sio.attach(app)

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def broadcast(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        await sio.emit("broadcast", body.get("data"))
        return web.json_response({})

    app.router.add_get("/healthz", healthz)
    app.router.add_post("/api/broadcast", broadcast)
    return app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8006)
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(make_app(), host=args.host, port=args.port, backlog=4096, access_log=None, print=None)


if __name__ == "__main__":
    main()
