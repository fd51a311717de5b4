"""A raw SockJS test client over aiohttp: every SockJS frame and every STOMP frame, nothing hidden.

It behaves as sockjs-client does on the wire: xhr-streaming reopens its receiving POST when the
server ends it, xhr-polling polls again after each answer, and both send with ``xhr_send``; the
websocket transport sends ``["..."]`` messages. It stops receiving at the close frame.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import aiohttp

from pushgate.protocol.stomp import SERVER_COMMANDS, Frame, FrameParser, Heartbeat, ProtocolError, encode

from ..helpers import timeout

TRANSPORTS = ("websocket", "xhr-streaming", "xhr-polling")


class SockJsClient:
    def __init__(self, base: str, transport: str, *, query: str = "", session_id: str | None = None) -> None:
        self.base = base
        self.transport = transport
        self.session_id = session_id or secrets.token_hex(8)
        self.query = f"?{query}" if query else ""
        self.url = f"{base}/{secrets.randbelow(1000):03d}/{self.session_id}"
        self.http = aiohttp.ClientSession()
        self.raw: list[str] = []  # every SockJS frame, in order ("o", "h", "a[...]", "c[...]")
        self.frames: asyncio.Queue[Frame] = asyncio.Queue()
        self.opened = asyncio.Event()
        self.closed = asyncio.Event()
        self.close_frame: list[Any] | None = None
        self.receiving_requests = 0  # xhr-streaming/xhr-polling POSTs made
        self.version = "1.2"
        self._parser = FrameParser(commands=SERVER_COMMANDS, max_frame_size=1 << 22)
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, base: str, transport: str, **kwargs: Any) -> SockJsClient:
        client = cls(base, transport, **kwargs)
        client._reader = asyncio.create_task(client._read())
        await asyncio.wait_for(client.opened.wait(), timeout(5))
        return client

    # -- receiving --------------------------------------------------------------------------------
    async def _read(self) -> None:
        try:
            if self.transport == "websocket":
                url = self.url.replace("http://", "ws://") + "/websocket" + self.query
                self._ws = await self.http.ws_connect(url)
                async for msg in self._ws:
                    if msg.type is aiohttp.WSMsgType.TEXT:
                        self._frame(msg.data)
                return
            suffix = "/xhr_streaming" if self.transport == "xhr-streaming" else "/xhr"
            while not self.closed.is_set():
                self.receiving_requests += 1
                async with self.http.post(self.url + suffix + self.query) as r:
                    assert r.status == 200, (r.status, await r.text())
                    first = True
                    while True:
                        line = await r.content.readline()
                        if not line:
                            break
                        text = line.decode().rstrip("\n")
                        if first and self.transport == "xhr-streaming":
                            assert text == "h" * 2048, "no xhr-streaming prelude"
                            first = False
                            continue
                        self._frame(text)
        finally:
            self.closed.set()

    def _frame(self, text: str) -> None:
        self.raw.append(text)
        kind = text[:1]
        if kind == "o":
            self.opened.set()
        elif kind == "a":
            for message in json.loads(text[1:]):
                self._parser.version = self.version
                for event in self._parser.feed(message.encode()):
                    if isinstance(event, Frame):
                        self.frames.put_nowait(event)
                    elif isinstance(event, ProtocolError):
                        raise AssertionError(f"server sent a broken STOMP frame: {event}")
                    else:
                        assert isinstance(event, Heartbeat)
        elif kind == "c":
            self.close_frame = json.loads(text[1:])
            self.closed.set()

    # -- sending ----------------------------------------------------------------------------------
    async def send_text(self, *messages: str) -> None:
        body = json.dumps(list(messages))
        if self.transport == "websocket":
            assert self._ws is not None
            await self._ws.send_str(body)
            return
        async with self.http.post(self.url + "/xhr_send" + self.query, data=body.encode(),
                                  headers={"Content-Type": "text/plain"}) as r:
            assert r.status == 204, (r.status, await r.text())

    async def send(self, command: str, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        frame = encode(Frame(command, tuple((headers or {}).items()), body), version=self.version)
        await self.send_text(frame.decode())

    async def next(self, command: str | None = None, seconds: float = 5.0) -> Frame:
        frame = await asyncio.wait_for(self.frames.get(), timeout(seconds))
        if command is not None:
            assert frame.command == command, f"expected {command}, got {frame}"
        return frame

    async def connect(self, headers: dict[str, str] | None = None) -> Frame:
        await self.send("CONNECT", {"accept-version": "1.2", "host": "localhost", **(headers or {})})
        connected = await self.next("CONNECTED")
        self.version = connected.get("version") or "1.0"
        return connected

    async def wait_closed(self, seconds: float = 5.0) -> list[Any] | None:
        await asyncio.wait_for(self.closed.wait(), timeout(seconds))
        return self.close_frame

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self.http.close()
