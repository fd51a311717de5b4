"""Baseline peer: a plain aiohttp WebSocket broadcast server, written the way a typical app is.

Same contract as pushgate for the fan-out benchmark (bench/fanout.py):

* ``GET  /healthz``       -> 200
* ``GET  /ws``            -> WebSocket; sends one ``{"type":"welcome",...}`` text frame first
* ``POST /api/broadcast`` -> body ``{"data": <json>}``; sends ``{"type":"broadcast","data":<json>}``
  to every connected WebSocket, one ``await ws.send_str(...)`` after another.

Run: ``python bench/peers/aiohttp_peer.py --host 127.0.0.1 --port 8001``
"""

from __future__ import annotations

import argparse
import json

from aiohttp import WSMsgType, web


def make_app() -> web.Application:
    clients: set[web.WebSocketResponse] = set()
    app = web.Application()

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=30.0)
        await ws.prepare(request)
        clients.add(ws)
        try:
            await ws.send_str(json.dumps({"type": "welcome", "client": id(ws)}))
            async for msg in ws:
                if msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
        finally:
            clients.discard(ws)
        return ws

    async def broadcast(request: web.Request) -> web.Response:
        body = await request.json()
        text = json.dumps({"type": "broadcast", "data": body.get("data")}, separators=(",", ":"))
        sent = 0
        for ws in list(clients):
            if ws.closed:
                continue
            try:
                await ws.send_str(text)
                sent += 1
            except ConnectionError:
                pass
        return web.json_response({"sent": sent})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/ws", ws_handler)
    app.router.add_post("/api/broadcast", broadcast)
    return app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(make_app(), host=args.host, port=args.port, backlog=4096, access_log=None, print=None)


if __name__ == "__main__":
    main()
