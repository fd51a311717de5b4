"""Test helpers: a protocol-level WebSocket client, bounded waits, free ports.

Every wait is bounded; ``PUSHGATE_TEST_TIMEOUT_SCALE`` multiplies all of them on slow machines.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

SCALE = float(os.environ.get("PUSHGATE_TEST_TIMEOUT_SCALE", "1"))


def timeout(seconds: float) -> float:
    return seconds * SCALE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for(predicate: Callable[[], Awaitable[bool] | bool], seconds: float = 5.0,
                   interval: float = 0.02, what: str = "condition") -> None:
    """Poll ``predicate`` until true, bounded by ``seconds`` (scaled)."""
    deadline = time.monotonic() + timeout(seconds)
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)


class WsClient:
    """A thin JSON-protocol client for tests: requests with ids, and a queue of pushes."""

    _ids = itertools.count(1)

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session: aiohttp.ClientSession) -> None:
        self.ws = ws
        self.session = session
        self.pushes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.replies: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self.close_code: int | None = None
        self.closed = asyncio.Event()
        self.welcome: dict[str, Any] = {}
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, url: str, **kwargs: Any) -> WsClient:
        session = aiohttp.ClientSession()
        try:
            ws = await session.ws_connect(url, autoping=True, **kwargs)
        except BaseException:
            await session.close()
            raise
        client = cls(ws, session)
        client.welcome = await client.next("welcome")
        return client

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    obj = json.loads(msg.data)
                    rid = obj.get("id")
                    fut = self.replies.pop(rid, None) if rid is not None else None
                    if fut is not None and not fut.done():
                        fut.set_result(obj)
                    else:
                        self.pushes.put_nowait(obj)
        finally:
            self.close_code = self.ws.close_code
            self.closed.set()

    async def send_raw(self, text: str) -> None:
        await self.ws.send_str(text)

    async def request(self, cmd: dict[str, Any], seconds: float = 5.0) -> dict[str, Any]:
        rid = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.replies[rid] = fut
        await self.ws.send_str(json.dumps({**cmd, "id": rid}))
        return await asyncio.wait_for(fut, timeout(seconds))

    async def ok(self, cmd: dict[str, Any]) -> dict[str, Any]:
        reply = await self.request(cmd)
        assert reply["type"] == "ok", reply
        return reply

    async def next(self, type_: str | None = None, seconds: float = 5.0) -> dict[str, Any]:
        """The next push (of ``type_``, skipping others), bounded in time."""
        deadline = time.monotonic() + timeout(seconds)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {type_ or 'push'} within {seconds}s")
            obj = await asyncio.wait_for(self.pushes.get(), left)
            if type_ is None or obj.get("type") == type_:
                return obj

    async def messages(self, n: int, seconds: float = 5.0) -> list[dict[str, Any]]:
        return [await self.next("message", seconds) for _ in range(n)]

    async def nothing_more(self, seconds: float = 0.2) -> None:
        """Assert no push arrives in a short window (used after an event proved delivery order)."""
        try:
            obj = await asyncio.wait_for(self.pushes.get(), seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected push {obj}")

    async def wait_closed(self, seconds: float = 10.0) -> int | None:
        await asyncio.wait_for(self.closed.wait(), timeout(seconds))
        return self.close_code

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self.session.close()


def direct_body(frame: dict[str, Any]) -> dict[str, Any]:
    """A ``direct`` frame without its user-stream position, after checking the position is there:
    every direct message carries ``offset`` (>= 1) and ``epoch`` of the recipient's stream."""
    assert frame.get("type") == "direct", frame
    assert isinstance(frame.get("offset"), int) and frame["offset"] >= 1, frame
    assert isinstance(frame.get("epoch"), str) and frame["epoch"], frame
    return {k: v for k, v in frame.items() if k not in ("offset", "epoch")}
