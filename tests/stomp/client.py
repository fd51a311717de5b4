"""A raw STOMP-over-WebSocket test client: frames in, frames out, nothing hidden."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from pushgate.protocol.stomp import SERVER_COMMANDS, Frame, FrameParser, Heartbeat, ProtocolError, encode

from ..helpers import timeout


class StompClient:
    """Send frames with :meth:`send`; read them, in order, with :meth:`next`."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session: aiohttp.ClientSession) -> None:
        self.ws = ws
        self.session = session
        self.frames: asyncio.Queue[Frame] = asyncio.Queue()
        self.heartbeats = 0
        self.errors: list[ProtocolError] = []
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.version = "1.2"
        self._held: list[Frame] = []  # frames read past while waiting for a RECEIPT, in order
        self._parser = FrameParser(commands=SERVER_COMMANDS, max_frame_size=1 << 22)
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str, *, protocols: tuple[str, ...] = ("v12.stomp",), **kwargs: Any) -> StompClient:
        session = aiohttp.ClientSession()
        try:
            ws = await session.ws_connect(url, protocols=protocols, autoping=True, **kwargs)
        except BaseException:
            await session.close()
            raise
        return cls(ws, session)

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                data = msg.data.encode() if msg.type is aiohttp.WSMsgType.TEXT else msg.data
                self._parser.version = self.version
                for event in self._parser.feed(data):
                    if isinstance(event, Heartbeat):
                        self.heartbeats += event.count
                    elif isinstance(event, ProtocolError):
                        self.errors.append(event)
                    else:
                        await self.frames.put(event)
        finally:
            self.close_code = self.ws.close_code
            self.closed.set()

    async def send(self, command: str, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        await self.ws.send_bytes(encode(Frame(command, tuple((headers or {}).items()), body), version=self.version))

    async def send_raw(self, data: bytes | str) -> None:
        if isinstance(data, str):
            await self.ws.send_str(data)
        else:
            await self.ws.send_bytes(data)

    async def next(self, command: str | None = None, seconds: float = 5.0) -> Frame:
        if self._held:
            frame = self._held.pop(0)
        else:
            frame = await asyncio.wait_for(self.frames.get(), timeout(seconds))
        if command is not None:
            assert frame.command == command, f"expected {command}, got {frame}"
        return frame

    async def connect(self, headers: dict[str, str] | None = None) -> Frame:
        await self.send("CONNECT", {"accept-version": "1.2", "host": "localhost", **(headers or {})})
        connected = await self.next("CONNECTED")
        self.version = connected.get("version") or "1.0"
        return connected

    async def request(self, command: str, headers: dict[str, str], body: bytes = b"") -> Frame:
        """Send with a receipt and wait for the RECEIPT (frames before it stay queued)."""
        rid = f"r-{id(headers)}-{command}"
        await self.send(command, {**headers, "receipt": rid}, body)
        pending: list[Frame] = []
        while True:
            frame = await asyncio.wait_for(self.frames.get(), timeout(5.0))
            if frame.command == "RECEIPT" and frame.get("receipt-id") == rid:
                self._held.extend(pending)  # the other frames keep their order
                return frame
            if frame.command == "ERROR":
                raise AssertionError(f"ERROR instead of RECEIPT: {frame}")
            pending.append(frame)

    async def nothing_more(self, seconds: float = 0.2) -> None:
        await asyncio.sleep(timeout(seconds))
        assert not self._held and self.frames.empty(), f"unexpected frame {self.frames.get_nowait()}"

    async def wait_closed(self, seconds: float = 5.0) -> int | None:
        await asyncio.wait_for(self.closed.wait(), timeout(seconds))
        return self.close_code

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self.session.close()
