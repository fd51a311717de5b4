"""One connection's JSON-protocol command loop: decode, call the node, reply.

Commands of one connection are handled in order (the transport awaits each), so a subscribe's
reply, its replayed history and then its live publications reach the client in that order.
No exception escapes: client mistakes become error replies, anything else an ``internal`` one.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import msgspec

from ..app import call_maybe_async
from ..brokers import is_unavailable
from ..brokers.base import StreamPosition
from ..errors import ClientError
from ..hub import Connection, message_outgoing
from ..protocol import jsonwire
from ..protocol.jsonwire import Ping, Presence, Publish, Rpc, Send, Subscribe, Unsubscribe

if TYPE_CHECKING:
    from ..node import Node

log = logging.getLogger(__name__)


class JsonSession:
    def __init__(self, node: Node, conn: Connection) -> None:
        self.node = node
        self.conn = conn

    def _error(self, rid: jsonwire.RequestId, code: str, message: str) -> None:
        self.node.metrics.errors_total.labels(code).inc()
        self.conn.send_payload(jsonwire.error_frame(rid, code, message))

    async def handle(self, frame: str | bytes) -> None:
        self.node.metrics.messages_in.inc()
        cmd = jsonwire.decode_command(frame)
        if isinstance(cmd, jsonwire.DecodeError):
            self._error(cmd.id, cmd.code, cmd.message)
            return
        try:
            await self._dispatch(cmd)
        except ClientError as exc:
            self._error(cmd.id, exc.code, exc.message)
        except Exception as exc:
            if is_unavailable(exc):
                self._error(cmd.id, "unavailable", "broker unavailable, retry later")
                return
            log.exception("command %s of %s failed", type(cmd).__name__, self.conn.id)
            self._error(cmd.id, "internal", "internal error")

    async def _dispatch(self, cmd: jsonwire.Command) -> None:
        node, conn = self.node, self.conn
        if isinstance(cmd, Publish):
            pos = await node.publish(cmd.channel, bytes(cmd.data), conn=conn)
            conn.send_payload(jsonwire.ok_frame(cmd.id, {"epoch": pos.epoch, "offset": pos.offset}))
        elif isinstance(cmd, Subscribe):
            await self._subscribe(cmd)
        elif isinstance(cmd, Unsubscribe):
            await node.unsubscribe(conn, cmd.channel)
            conn.send_payload(jsonwire.ok_frame(cmd.id, {"channel": cmd.channel}))
        elif isinstance(cmd, Send):
            if conn.user is None:
                raise ClientError("permission_denied", "anonymous connections cannot send: no sender to stamp")
            await node.send_to_users(cmd.to, bytes(cmd.data), sender=conn.user)
            conn.send_payload(jsonwire.ok_frame(cmd.id))
        elif isinstance(cmd, Presence):
            p = await node.channel_presence(cmd.channel)
            conn.send_payload(
                jsonwire.ok_frame(cmd.id, {"channel": p.channel, "users": p.users, "connections": p.connections})
            )
        elif isinstance(cmd, Ping):
            conn.send_payload(jsonwire.pong_frame(cmd.id))
        elif isinstance(cmd, Rpc):
            await self._rpc(cmd)

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
        result: Any = await call_maybe_async(
            handler, self.node.client_info(self.conn), msgspec.json.decode(bytes(cmd.data))
        )
        self.conn.send_payload(jsonwire.ok_frame(cmd.id, {"data": result}))
