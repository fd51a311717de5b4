"""Server-Sent Events transport (``GET /sse``) for clients that cannot use WebSocket.

``/sse?channel=news&channel=chat&user=alice`` (or a token, as for /ws) opens a one-way stream.
Each event's ``data:`` is the same JSON frame a WebSocket client gets (welcome, message, direct,
broadcast, join/leave), encoded once per publication for every SSE subscriber. Message events
carry ``id: <epoch>:<offset>``; with exactly one channel, the browser's automatic reconnect
sends it back as ``Last-Event-ID`` and the missed publications are replayed. For several
channels pass ``since=<channel>:<epoch>:<offset>`` (repeatable) when reconnecting.
Keep-alive comments every ``sse_ping_interval`` keep proxies from timing out the stream.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from ..app import ClientInfo
from ..backends.broker import StreamPosition
from ..errors import AuthError, ClientError
from ..protocol import jsonwire
from ..protocol.outgoing import Outgoing, chunk, message_outgoing
from .connection import Connection
from .websocket import handshake_credentials

if TYPE_CHECKING:
    from ..node import Node

log = logging.getLogger(__name__)


class SseConnection(Connection):
    transport_name = "sse"

    def __init__(self, node: Node, conn_id: str, user: str | None, claims: dict[str, Any] | None,
                 transport: asyncio.Transport) -> None:
        super().__init__(conn_id, user, claims)
        self._node = node
        self._transport = transport
        self._limit = node.config.write_buffer_limit
        self.done = asyncio.Event()
        # HTTP/1.1 responses without a length are chunked (RFC 9112 §7.1): since we write to the
        # transport directly, each write must carry its own chunk framing.
        self.chunked = False

    def write(self, data: bytes) -> None:
        """Cold-path writes (keep-alives, close event); fan-out goes through :meth:`send`."""
        self._transport.write(chunk(data) if self.chunked else data)

    def send(self, out: Outgoing) -> None:
        if self.closed:
            return
        if self._transport.is_closing():
            self.close(0, "gone")
            return
        self._transport.write(out.sse_chunk() if self.chunked else out.sse())
        if self._transport.get_write_buffer_size() > self._limit:
            self._node.metrics.slow_consumers.inc()
            self.close(4001, "slow consumer")

    def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        if not self._transport.is_closing():
            body = msgspec.json.encode({"code": code, "reason": reason})
            self.write(b"event: close\ndata: " + body + b"\n\n")
        self.done.set()


def _positions(request: web.Request, channels: list[str]) -> dict[str, StreamPosition]:
    out: dict[str, StreamPosition] = {}
    for item in request.query.getall("since", []):
        channel, _, rest = item.rpartition(":")
        channel, _, epoch = channel.rpartition(":")
        try:
            out[channel] = StreamPosition(epoch, int(rest))
        except ValueError as exc:
            raise ClientError("bad_request", "since must be <channel>:<epoch>:<offset>") from exc
    last = request.headers.get("Last-Event-ID")
    if last and len(channels) == 1 and channels[0] not in out:
        epoch, _, offset = last.rpartition(":")
        if epoch and offset.isdigit():
            out[channels[0]] = StreamPosition(epoch, int(offset))
    return out


async def sse_handler(request: web.Request) -> web.StreamResponse:
    from ..server import NODE_KEY

    node: Node = request.app[NODE_KEY]
    error: tuple[int, str, str] | None = None
    if node.draining:
        return web.json_response({"error": {"code": "draining", "message": "node is shutting down"}}, status=503)
    channels = request.query.getall("channel", [])
    try:
        node.auth.check_origin(request.headers.get("Origin"))
        token, user = handshake_credentials(request)
        identity = node.auth.identify(token=token, user=user)
        since = _positions(request, channels)
        node.check_capacity()
        conn_id = node.new_connection_id()
        await node.run_connect_hooks(ClientInfo(conn_id, identity.user, node.id, "sse", identity.claims))
    except AuthError as exc:
        error = (exc.status, "unauthorized" if exc.status == 401 else "forbidden", str(exc))
    except ClientError as exc:
        status = {"rejected": 403, "connection_limit": 503}.get(exc.code, 400)
        error = (status, exc.code, exc.message)
    except Exception:
        log.exception("connect hook failed")
        error = (500, "internal", "connect hook failed")
    if error is not None:
        status, code, message = error
        return web.json_response({"error": {"code": code, "message": message}}, status=status)

    resp = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    transport = request.transport
    assert transport is not None
    conn = SseConnection(node, conn_id, identity.user, identity.claims, transport)
    conn.chunked = resp.headers.get("Transfer-Encoding", "").lower() == "chunked"
    try:
        await node.register(conn)
        conn.send_payload(jsonwire.welcome_frame(conn.id, conn.user, node.id))
        for channel in channels:
            try:
                result = await node.subscribe(conn, channel, since.get(channel))
            except ClientError as exc:
                conn.send_payload(jsonwire.error_frame(None, exc.code, f"{channel}: {exc.message}"))
                continue
            for pub in (*result.replay, *node.finish_subscribe(conn, channel, result)):
                conn.send(message_outgoing(pub))
        while not conn.closed:
            try:
                await asyncio.wait_for(conn.done.wait(), node.config.sse_ping_interval)
            except TimeoutError:
                if transport.is_closing():
                    break
                conn.write(b": ping\n\n")
    finally:
        conn.closed = True
        await node.unregister(conn)
    return resp
