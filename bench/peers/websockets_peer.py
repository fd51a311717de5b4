"""Peer: the ``websockets`` library (asyncio implementation) using ``websockets.broadcast()``.

Same contract as pushgate for bench/fanout.py, except that ``websockets`` cannot serve a POST, so
the trigger lives on a second port:

* ``GET  http://HOST:PORT/healthz``               -> 200 (via ``process_request``)
* ``GET  ws://HOST:PORT/ws``                      -> welcome frame, then broadcasts
* ``POST http://HOST:TRIGGER_PORT/api/broadcast`` -> body ``{"data": <json>}``; calls
  ``broadcast(connections, '{"type":"broadcast","data":<json>}')`` (a tiny aiohttp app).

Run: ``python bench/peers/websockets_peer.py --port 8002 --trigger-port 8003``
"""

from __future__ import annotations

import argparse
import asyncio
import json
from http import HTTPStatus

from aiohttp import web
from websockets.asyncio.server import ServerConnection, broadcast, serve


async def amain(host: str, port: int, trigger_port: int) -> None:
    clients: set[ServerConnection] = set()

    async def handler(ws: ServerConnection) -> None:
        clients.add(ws)
        try:
            await ws.send(json.dumps({"type": "welcome", "client": id(ws)}))
            async for _ in ws:
                pass
        except Exception:
            pass
        finally:
            clients.discard(ws)

    def process_request(connection, request):  # type: ignore[no-untyped-def]
        if request.path == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        return None

    async def trigger(request: web.Request) -> web.Response:
        body = await request.json()
        text = json.dumps({"type": "broadcast", "data": body.get("data")}, separators=(",", ":"))
        broadcast(clients, text)
        return web.json_response({"sent": len(clients)})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/api/broadcast", trigger)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, trigger_port)
    await site.start()

    async with serve(handler, host, port, process_request=process_request, backlog=4096,
                     compression=None):
        await asyncio.Future()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8002)
    ap.add_argument("--trigger-port", type=int, default=8003)
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.run(amain(args.host, args.port, args.trigger_port))
    except ImportError:
        asyncio.run(amain(args.host, args.port, args.trigger_port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
