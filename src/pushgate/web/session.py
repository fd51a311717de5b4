"""One connection's JSON-protocol command loop: decode, call the node, reply.

Commands of one connection are handled in order, so a subscribe's reply, its replayed history
and then its live publications reach the client in that order, and replies come back in the
order of the commands. Publishes are the exception that keeps that promise cheaply: a run of
publishes is started without waiting for each one's broker round trip (the broker keeps their
order and batches them), their replies are sent in order as they complete, and any other
command first waits for the publishes before it. At most ``MAX_INFLIGHT_PUBLISHES`` are in
flight per connection; past that the reader waits, which pushes back on the client.
A token with ``exp`` closes the connection with 4005 at that moment (:class:`TokenDeadline`, armed
here so every transport that runs a session gets it) unless a ``refresh`` command brought a new
token for the same user first. No exception escapes: every failure becomes an error reply classified by
:func:`pushgate.web.errors.classify` (the same codes the HTTP API answers); a server bug is an
``internal`` reply without detail, and is logged with its traceback.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import TYPE_CHECKING, Any

import msgspec

from ..app import call_maybe_async
from ..auth import token_expiry
from ..backends.broker import StreamPosition
from ..errors import ClientError, CloseCode
from ..payload import check_data
from ..protocol import jsonwire
from ..protocol.jsonwire import Ack, Ping, Presence, Publish, Refresh, Rpc, Send, Subscribe, Unsubscribe
from ..protocol.outgoing import message_outgoing
from ..ratelimit import TokenBucket
from .connection import Connection
from .errors import classify
from .expiry import TokenDeadline

if TYPE_CHECKING:
    from ..node import Node

log = logging.getLogger(__name__)


MAX_INFLIGHT_PUBLISHES = 256


class JsonSession:
    """The JSON protocol on one connection, whatever carries its frames (today WebSocket)."""

    def __init__(self, node: Node, conn: Connection) -> None:
        self.node = node
        self.conn = conn
        # A list, not a deque: an empty deque allocates a 64-slot block (~0.7 KB) on every idle
        # connection, and at most MAX_INFLIGHT_PUBLISHES entries make pop(0) cheap enough.
        self._inflight: list[tuple[jsonwire.RequestId, asyncio.Task[StreamPosition]]] = []
        cfg = node.config
        # Bounded everything: one client's flood must not cost everyone else their latency.
        self._commands = TokenBucket(cfg.client_command_rate, cfg.client_command_burst)
        self._data_bytes = TokenBucket(cfg.client_publish_bytes_rate, cfg.client_publish_bytes_burst)
        self._strikes = 0  # rate_limited replies in a row
        self._deadline = TokenDeadline(conn)
        self._deadline.set(token_expiry(conn.claims))
        # The transport may drop the session without calling close(): the timer goes with it.
        weakref.finalize(self, self._deadline.cancel)

    def close(self) -> None:
        """The connection is over: cancel the token deadline (the transport calls this)."""
        self._deadline.cancel()

    def _error(self, rid: jsonwire.RequestId, code: str, message: str) -> None:
        self.node.metrics.errors_total.labels(self.conn.transport_name, code).inc()
        self.conn.send_payload(jsonwire.error_frame(rid, code, message))

    async def handle(self, frame: str | bytes) -> None:
        self.node.metrics.messages_in.labels(self.conn.transport_name).inc()
        cmd = jsonwire.decode_command(frame)
        if not self._commands.take() or (
            isinstance(cmd, Publish | Send) and not self._data_bytes.take(len(cmd.data))
        ):
            await self._rate_limited(cmd)
            return
        self._strikes = 0
        if isinstance(cmd, Publish) and not self.node.app.publish_hooks:
            self._start_publish(cmd)
            if len(self._inflight) >= MAX_INFLIGHT_PUBLISHES:
                await asyncio.wait([self._inflight[0][1]])
            return
        if self._inflight:
            await self._settle_publishes()
        if isinstance(cmd, jsonwire.DecodeError):
            self._error(cmd.id, cmd.code, cmd.message)
            return
        try:
            await self._dispatch(cmd)
        except Exception as exc:
            verdict = classify(exc)
            if verdict.internal:
                log.exception("command %s of %s failed", type(cmd).__name__, self.conn.id)
            self._error(cmd.id, verdict.code, verdict.message)

    async def _rate_limited(self, cmd: jsonwire.Command | jsonwire.DecodeError) -> None:
        """Refuse one command over the limit; close a client that keeps sending regardless."""
        if self._inflight:
            await self._settle_publishes()  # replies stay in command order
        self._strikes += 1
        close_after = self.node.config.rate_limit_close_after
        if close_after and self._strikes > close_after:
            self.conn.close(CloseCode.RATE_LIMITED, "rate limit exceeded: reconnect later and send less")
            return
        wait = max(self._commands.retry_after(), 0.001)
        self._error(cmd.id, "rate_limited", f"too many commands or bytes: retry in {wait:.3f}s")

    def _start_publish(self, cmd: Publish) -> None:
        # Tasks start in creation order and node.publish reaches the broker's queue before its
        # first await (no hooks here), so the broker sees the client's publishes in order.
        task = asyncio.get_running_loop().create_task(
            self.node.publish(cmd.channel, bytes(cmd.data), conn=self.conn, idempotency_key=cmd.idempotency_key)
        )
        self._inflight.append((cmd.id, task))
        task.add_done_callback(self._reply_publishes)

    def _reply_publishes(self, _task: object = None) -> None:
        """Send the replies of finished publishes, oldest first, stopping at one still running."""
        while self._inflight and self._inflight[0][1].done():
            rid, task = self._inflight.pop(0)
            exc = task.exception()
            if exc is None:
                pos = task.result()
                self.conn.send_payload(jsonwire.ok_frame(rid, {"epoch": pos.epoch, "offset": pos.offset}))
                continue
            verdict = classify(exc)
            if verdict.internal:
                log.error("publish of %s failed", self.conn.id, exc_info=exc)
            self._error(rid, verdict.code, verdict.message)

    async def _settle_publishes(self) -> None:
        await asyncio.wait([task for _, task in self._inflight])
        self._reply_publishes()

    async def _dispatch(self, cmd: jsonwire.Command) -> None:
        node, conn = self.node, self.conn
        if isinstance(cmd, Publish):
            pos = await node.publish(cmd.channel, bytes(cmd.data), conn=conn, idempotency_key=cmd.idempotency_key)
            conn.send_payload(jsonwire.ok_frame(cmd.id, {"epoch": pos.epoch, "offset": pos.offset}))
        elif isinstance(cmd, Subscribe):
            await self._subscribe(cmd)
        elif isinstance(cmd, Unsubscribe):
            await node.unsubscribe(conn, cmd.channel)
            conn.send_payload(jsonwire.ok_frame(cmd.id, {"channel": cmd.channel}))
            for hook in node.app.unsubscribe_hooks:  # as for STOMP's UNSUBSCRIBE; a failing hook is logged
                try:
                    await call_maybe_async(hook, node.client_info(conn), cmd.channel)
                except Exception:
                    log.exception("unsubscribe hook failed")
        elif isinstance(cmd, Send):
            # with conn= the node's Authorizer decides (anonymous connections cannot send) and the
            # sender is stamped from the connection, whatever the client wrote in "from"
            positions = await node.send_to_users(
                cmd.to, bytes(cmd.data), sender=conn.user, conn=conn, idempotency_key=cmd.idempotency_key,
                destination=cmd.destination,
            )
            fields = {u: {"epoch": p.epoch, "offset": p.offset} for u, p in positions.items()}
            conn.send_payload(jsonwire.ok_frame(cmd.id, {"positions": fields}))
        elif isinstance(cmd, Presence):
            p = await node.channel_presence(cmd.channel, conn=conn)
            conn.send_payload(
                jsonwire.ok_frame(cmd.id, {"channel": p.channel, "users": p.users, "connections": p.connections})
            )
        elif isinstance(cmd, Ping):
            conn.send_payload(jsonwire.pong_frame(cmd.id))
        elif isinstance(cmd, Rpc):
            await self._rpc(cmd)
        elif isinstance(cmd, Refresh):
            await self._refresh(cmd)
        elif isinstance(cmd, Ack):
            acked = await node.ack(conn, StreamPosition(cmd.epoch, cmd.offset))
            conn.send_payload(jsonwire.ok_frame(cmd.id, {"epoch": acked.epoch, "offset": acked.offset}))

    async def _refresh(self, cmd: Refresh) -> None:
        """Adopt a new token for the same user: its claims apply from the next command on, and the
        deadline moves to its ``exp``. A refused token changes nothing (the old deadline stays)."""
        node, conn = self.node, self.conn
        if node.auth.dev_mode:  # tokens mean nothing here and nothing expires
            conn.send_payload(jsonwire.ok_frame(cmd.id, {"exp": None}))
            return
        identity = await node.auth.verify(cmd.token)  # AuthError: `unauthorized`
        if identity.user != conn.user:
            raise ClientError("permission_denied", "a refreshed token must name the connection's user")
        if conn.closed:
            return
        conn.claims = identity.claims
        self._deadline.set(identity.expires)
        conn.send_payload(jsonwire.ok_frame(cmd.id, {"exp": (identity.claims or {}).get("exp")}))

    async def _subscribe(self, cmd: Subscribe) -> None:
        node, conn = self.node, self.conn
        since = StreamPosition(cmd.since.epoch, cmd.since.offset) if cmd.since else None
        result = await node.subscribe(conn, cmd.channel, since)
        fields = {
            "channel": cmd.channel,
            "epoch": result.position.epoch,
            "offset": result.position.offset,
            "recovered": result.recovered,
        }
        # No await from here on: reply, replay, then held live publications, in this order.
        conn.send_payload(jsonwire.ok_frame(cmd.id, fields))
        for pub in (*result.replay, *node.finish_subscribe(conn, cmd.channel, result)):
            conn.send(message_outgoing(pub))

    async def _rpc(self, cmd: Rpc) -> None:
        handler = self.node.app.rpc_handlers.get(cmd.method)
        if handler is None:
            raise ClientError("unknown_method", f"no rpc handler for {cmd.method!r}")
        data = check_data(bytes(cmd.data), max_depth=self.node.config.max_json_depth)
        result: Any = await call_maybe_async(handler, self.node.client_info(self.conn), msgspec.json.decode(data))
        self.conn.send_payload(jsonwire.ok_frame(cmd.id, {"data": result}))
