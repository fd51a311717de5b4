"""The HTTP edge's timeouts, with raw sockets on a real server (issue 7, item 6).

``handshake_timeout``: from accept, a complete request head must arrive within it (a half
request line, or headers trickled a byte at a time, are cut off). ``keepalive_timeout``: an idle
keep-alive connection is closed. Neither touches a normal request or a WebSocket that is idle
for longer than both.
"""

from __future__ import annotations

import asyncio
import time

from .conftest import ServerFactory
from .helpers import timeout, wait_for

HEAD = 1.0  # handshake_timeout in these tests


async def _open(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> float:
    """Seconds until the server closes the connection (reading everything it sends)."""
    started = time.monotonic()
    while await asyncio.wait_for(reader.read(65536), timeout(seconds)):
        pass
    return time.monotonic() - started


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout(5))
    status = int(head.split(b" ", 2)[1])
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return status, await asyncio.wait_for(reader.readexactly(length), timeout(5))


async def test_half_request_line_is_closed_after_handshake_timeout(make_server: ServerFactory) -> None:
    srv = await make_server(handshake_timeout=HEAD, keepalive_timeout=30)
    sockets = [await _open(srv.url) for _ in range(30)]
    for _, writer in sockets:
        writer.write(b"GET /healthz HT")
    elapsed = await asyncio.gather(*(_closed_within(reader, HEAD + 5) for reader, _ in sockets))
    assert min(elapsed) >= HEAD * 0.8, elapsed  # cut by the deadline, not refused at once
    assert max(elapsed) <= HEAD + timeout(2), elapsed
    for _, writer in sockets:
        writer.close()
    # the node keeps serving, and holds none of those sockets any more
    reader, writer = await _open(srv.url)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert (await _response(reader))[0] == 200
    writer.close()
    runner = srv.server.runner
    assert runner is not None and runner.server is not None
    await wait_for(lambda: len(runner.server.connections) <= 1, what="cut connections released")


async def test_trickled_headers_are_cut_off(make_server: ServerFactory) -> None:
    srv = await make_server(handshake_timeout=HEAD, keepalive_timeout=30)
    reader, writer = await _open(srv.url)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    started = time.monotonic()

    async def trickle() -> None:
        # the slowloris itself: one header byte every 0.2 s, never finishing the head
        for byte in b"X-Slow: " + b"a" * 200:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.2)

    trickler = asyncio.create_task(trickle())
    try:
        await _closed_within(reader, HEAD + 5)
    finally:
        trickler.cancel()
        writer.close()
    assert HEAD * 0.8 <= time.monotonic() - started <= HEAD + timeout(2)


async def test_idle_keepalive_is_closed_after_keepalive_timeout(make_server: ServerFactory) -> None:
    keepalive = 1.5
    srv = await make_server(handshake_timeout=HEAD, keepalive_timeout=keepalive)
    reader, writer = await _open(srv.url)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert (await _response(reader))[0] == 200
    answered = time.monotonic()
    await _closed_within(reader, keepalive + 5)
    assert keepalive * 0.8 <= time.monotonic() - answered <= keepalive + timeout(2)
    writer.close()


async def test_keepalive_requests_after_the_head_deadline_are_served(make_server: ServerFactory) -> None:
    """The head deadline is for the first head; a keep-alive connection used again later is fine."""
    srv = await make_server(handshake_timeout=0.5, keepalive_timeout=30)
    reader, writer = await _open(srv.url)
    for _ in range(2):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert (await _response(reader))[0] == 200
        await asyncio.sleep(0.8)  # past the head deadline on purpose
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert (await _response(reader))[0] == 200
    writer.close()


async def test_idle_websocket_outlives_both_timeouts(make_server: ServerFactory) -> None:
    srv = await make_server(handshake_timeout=0.4, keepalive_timeout=0.6)
    client = await srv.client("user=idle")
    await asyncio.sleep(1.5)  # idle for longer than both timeouts, on purpose
    assert not client.closed.is_set()
    reply = await client.request({"type": "ping"})
    assert reply["type"] == "pong"
