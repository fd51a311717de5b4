"""Server-Sent Events transport (``GET /sse``) for clients that cannot use WebSocket.

``/sse?channel=news&channel=chat&user=alice`` (or a token, as for /ws) opens a one-way stream.
Each event's ``data:`` is the same JSON frame a WebSocket client gets (welcome, message, direct,
broadcast, join/leave), encoded once per publication for every SSE subscriber. Message events
carry ``id: <epoch>:<offset>``; with exactly one channel, the browser's automatic reconnect
sends it back as ``Last-Event-ID`` and the missed publications are replayed. For several
channels pass ``since=<channel>:<epoch>:<offset>`` (repeatable) when reconnecting.
Keep-alive comments every ``sse_ping_interval`` keep proxies from timing out the stream.
A token with ``exp`` ends the stream at that moment with a close event (code 4005): the stream is
one-way, so there is no ``refresh``; the client reconnects with a fresh token.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from ..auth import token_expiry
from ..backends.broker import StreamPosition
from ..errors import ClientError, CloseCode
from ..protocol import jsonwire
from ..protocol.outgoing import Outgoing, chunk, message_outgoing
from .connection import TransportConnection
from .errors import classify, error_response
from .expiry import TokenDeadline
from .handshake import Refusal, accept, open_session, user_since
from .request_view import RequestView

if TYPE_CHECKING:
    from ..metrics import NodeMetrics
    from ..node import Node

log = logging.getLogger(__name__)


class SseConnection(TransportConnection):
    transport_name = "sse"

    def __init__(self, conn_id: str, user: str | None, claims: dict[str, Any] | None, *,
                 transport: asyncio.Transport, write_limit: int, metrics: NodeMetrics) -> None:
        super().__init__(conn_id, user, claims, transport=transport, write_limit=write_limit, metrics=metrics)
        self.done = asyncio.Event()
        # HTTP/1.1 responses without a length are chunked (RFC 9112 §7.1): since we write to the
        # transport directly, each write must carry its own chunk framing.
        self.chunked = False

    def write(self, data: bytes) -> None:
        """Cold-path writes (keep-alives, close event); fan-out goes through :meth:`send`."""
        self._transport.write(chunk(data) if self.chunked else data)

    def send(self, out: Outgoing) -> None:
        # Hot path: the event bytes (with chunk framing) are encoded once per publication.
        if self.closed:
            return
        if self._transport.is_closing():
            self.close(0, "gone")
            return
        self._transport.write(out.sse_chunk() if self.chunked else out.sse())
        if self._transport.get_write_buffer_size() > self._limit:
            self.cut_slow_consumer()

    def _close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        if not self._transport.is_closing():
            body = msgspec.json.encode({"code": code, "reason": reason})
            self.write(b"event: close\ndata: " + body + b"\n\n")
        self.done.set()


def positions(request: web.Request, channels: list[str]) -> dict[str, StreamPosition]:
    """Where each channel resumes: ``since=<channel>:<epoch>:<offset>``, else ``Last-Event-ID``
    when there is exactly one channel. Raises :class:`ClientError` ``bad_request``."""
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


class SseHandler:
    """``GET /sse``: aiohttp handler object holding the node it serves (mount it anywhere)."""

    def __init__(self, node: Node) -> None:
        self.node = node

    async def handle(self, request: web.Request) -> web.StreamResponse:
        node = self.node
        channels = request.query.getall("channel", [])
        try:
            # the request is parsed before admission, so connect hooks only see well-formed ones
            since = positions(request, channels)
        except ClientError as exc:
            return error_response(*classify(exc))
        admitted = await accept(node, RequestView.of(request), SseConnection.transport_name)
        if isinstance(admitted, Refusal):
            return admitted.response()  # no upgrade to close after: a full node is a plain 503

        resp = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        transport = request.transport
        assert transport is not None
        conn = SseConnection(admitted.client, admitted.user, admitted.claims, transport=transport,
                             write_limit=node.config.write_buffer_limit, metrics=node.metrics)
        conn.address = admitted.address
        conn.chunked = resp.headers.get("Transfer-Encoding", "").lower() == "chunked"
        deadline = TokenDeadline(conn)
        try:
            try:
                await open_session(node, conn, user_since(request))
            except Exception as exc:
                log.warning("cannot register %s: %r", conn.id, exc)
                conn.close(CloseCode.INTERNAL_ERROR, "broker unavailable")
                return resp
            deadline.set(token_expiry(conn.claims))
            await self._subscribe_all(conn, channels, since)
            await self._keep_alive(conn, transport)
        finally:
            deadline.cancel()
            conn.closed = True
            await node.unregister(conn)
        return resp

    async def _subscribe_all(self, conn: SseConnection, channels: list[str],
                             since: dict[str, StreamPosition]) -> None:
        """Subscribe to each requested channel; a refused one is an error event, the rest go on."""
        node = self.node
        for channel in channels:
            try:
                result = await node.subscribe(conn, channel, since.get(channel))
            except ClientError as exc:
                conn.send_payload(jsonwire.error_frame(None, exc.code, f"{channel}: {exc.message}"))
                continue
            for pub in (*result.replay, *node.finish_subscribe(conn, channel, result)):
                conn.send(message_outgoing(pub))

    async def _keep_alive(self, conn: SseConnection, transport: asyncio.Transport) -> None:
        """Wait for the close, writing a comment every ``sse_ping_interval`` so proxies keep the stream."""
        interval = self.node.config.sse_ping_interval
        while not conn.closed:
            try:
                await asyncio.wait_for(conn.done.wait(), interval)
            except TimeoutError:
                if transport.is_closing():
                    break
                conn.write(b": ping\n\n")
