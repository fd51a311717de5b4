"""A scripted pushgate server for client tests: real WebSockets on 127.0.0.1:0, frames written
by the test.

It speaks the wire contract of docs/protocol.md but decides nothing itself: every connection
gets a ``welcome`` (with a ``stream`` the test chooses from the handshake query), ``ping`` is
answered with ``pong``, and every other command waits in :attr:`ScriptedConn.commands` for the
test to answer. This tests the clients' bookkeeping exactly, independent of the real server.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import WSMsgType, web

from ..helpers import timeout

StreamFor = Callable[[Mapping[str, str]], dict[str, Any] | None]


class ScriptedConn:
    """One accepted socket: its handshake query, the commands it sent, and a way to push."""

    def __init__(self, ws: web.WebSocketResponse, query: Mapping[str, str]) -> None:
        self.ws = ws
        self.query = dict(query)
        self.commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.closed = asyncio.Event()

    async def push(self, frame: Mapping[str, Any]) -> None:
        await self.ws.send_str(json.dumps(frame))

    async def command(self, seconds: float = 5.0) -> dict[str, Any]:
        """The next command the client sent (other than ``ping``), bounded."""
        return await asyncio.wait_for(self.commands.get(), timeout(seconds))

    async def reply(self, command: Mapping[str, Any], **fields: Any) -> None:
        await self.push({"id": command["id"], "type": "ok", **fields})

    async def close(self, code: int, reason: str = "") -> None:
        await self.ws.close(code=code, message=reason.encode())


class ScriptedServer:
    """``async with ScriptedServer() as s: client = Client(s.ws_url, ...); conn = await s.accept()``."""

    def __init__(self, stream: StreamFor | None = None, user: str | None = "bob") -> None:
        self.stream = stream
        self.user = user
        self._accepted: asyncio.Queue[ScriptedConn] = asyncio.Queue()
        self._runner: web.AppRunner | None = None
        self._count = 0
        self._conns: list[ScriptedConn] = []
        self.ws_url = ""

    async def __aenter__(self) -> ScriptedServer:
        app = web.Application()
        app.router.add_get("/ws", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.ws_url = f"ws://127.0.0.1:{port}/ws"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        for conn in self._conns:  # cleanup() would otherwise wait for every open socket's handler
            if not conn.ws.closed:
                await conn.close(1001, "scripted server stops")
        await self._runner.cleanup()

    async def accept(self, seconds: float = 5.0) -> ScriptedConn:
        """The next connection, already welcomed."""
        return await asyncio.wait_for(self._accepted.get(), timeout(seconds))

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._count += 1
        conn = ScriptedConn(ws, request.query)
        self._conns.append(conn)
        welcome: dict[str, Any] = {"type": "welcome", "client": f"c{self._count}", "user": self.user, "node": "n1"}
        stream = self.stream(request.query) if self.stream is not None else None
        if stream is not None:
            welcome["stream"] = stream
        await conn.push(welcome)
        self._accepted.put_nowait(conn)
        try:
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                cmd = json.loads(msg.data)
                if cmd.get("type") == "ping":
                    await ws.send_str(json.dumps({"id": cmd.get("id"), "type": "pong"}))
                else:
                    conn.commands.put_nowait(cmd)
        finally:
            conn.closed.set()
        return ws
