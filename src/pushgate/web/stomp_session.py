"""One STOMP connection's frames after CONNECTED: dispatch, receipts, errors (STOMP 1.2 §Client Frames).

Frames are handled one at a time, in order, so a RECEIPT confirms everything before it and a
SUBSCRIBE's RECEIPT, its replayed history and its live MESSAGEs reach the client in that order.
Every operation goes through the node (and so the one :class:`~pushgate.auth.Authorizer`, the
hooks, the limits) exactly as a JSON command does; only the framing differs.

Errors: STOMP has no error reply that keeps the connection (§ERROR: the server "MUST then
close the connection just after sending the ERROR frame"), so any refused frame gets an ERROR
(``message`` header, pushgate's error ``code`` header, ``receipt-id`` when the frame asked for a
receipt, the text as body) and the connection closes. Rate limits are applied by reading slower
instead: a frame over the connection's command or byte rate waits for its tokens, which pushes
back on the client through TCP rather than closing a chatty but honest one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import msgspec

from ..app import MessageMapping, SendTo, SendToUser, call_maybe_async
from ..backends.broker import StreamPosition
from ..errors import ClientError, CloseCode
from ..names import user_stream
from ..payload import check_json
from ..protocol.outgoing import message_outgoing
from ..protocol.stomp import Frame, Heartbeat, ProtocolError
from ..ratelimit import TokenBucket
from .errors import classify
from .stomp_connection import ACK_MODES, StompConnection, Subscription, parse_ack_id
from .stomp_destinations import (
    AppDestination,
    ChannelDestination,
    Destinations,
    UserDestination,
    UserSendDestination,
)

if TYPE_CHECKING:
    from ..node import Node
    from .expiry import TokenDeadline

log = logging.getLogger(__name__)

MAX_TRANSACTIONS = 16  # open transactions per connection
#: A SEND to this destination hands the server a fresh token (header ``token``, or
#: ``Authorization: Bearer``) for the same user: the JSON protocol's ``refresh``; STOMP has none.
REFRESH_DESTINATION = "/pushgate/refresh"
TRANSACTIONAL = frozenset({"SEND", "ACK", "NACK"})  # §BEGIN: the frames a transaction can hold


def error_close_code(code: str) -> int:
    """The close code after an ERROR with pushgate error ``code`` (errors.close_action reads it):
    a server-side failure may pass (1011: reconnect with backoff), a refused frame will be refused
    again (4500: do not reconnect as is), a malformed one is a client bug (4501). ``rate_limited``
    here is the node's publish rate (the HTTP API's 429: the per-connection limits read slower
    instead): it passes, so 4004, reconnect with backoff and send less."""
    if code in ("internal", "unavailable"):
        return CloseCode.INTERNAL_ERROR
    if code == "rate_limited":
        return CloseCode.RATE_LIMITED
    if code == "protocol_error":
        return CloseCode.PROTOCOL_VIOLATION
    return CloseCode.DISCONNECTED


class StompSession:
    """The STOMP frames of one connection (see the module docstring)."""

    def __init__(self, node: Node, conn: StompConnection, destinations: Destinations,
                 *, user_since: StreamPosition | None = None) -> None:
        self.node = node
        self.conn = conn
        self.destinations = destinations
        self.user_since = user_since
        self.user_stream_open = False
        self.deadline: TokenDeadline | None = None
        cfg = node.config
        self._commands = TokenBucket(cfg.client_command_rate, cfg.client_command_burst)
        self._data_bytes = TokenBucket(cfg.client_publish_bytes_rate, cfg.client_publish_bytes_burst)
        self._transactions: dict[str, list[Frame]] = {}
        self._transaction_bytes = 0
        self._acked: StreamPosition | None = None  # the highest user-stream position acked (or asked)
        self._ack_task: asyncio.Task[None] | None = None
        self._ack_wanted: StreamPosition | None = None
        conn.on_user_delivered = self._auto_ack

    def close(self) -> None:
        """The connection is over: open transactions are aborted (§DISCONNECT, §BEGIN)."""
        self._transactions.clear()
        self.conn.on_user_delivered = None

    # -- the loop's entry ------------------------------------------------------------------------
    async def handle_events(self, events: Sequence[Frame | Heartbeat | ProtocolError]) -> bool:
        """Handle what the parser produced; False once the connection is closing."""
        for event in events:
            if self.conn.closed:
                return False
            if isinstance(event, Heartbeat):
                continue
            if isinstance(event, ProtocolError):
                self.error(event.message, code="protocol_error", receipt=event.receipt)
                return False
            if not await self.handle(event):
                return False
        return not self.conn.closed

    async def handle(self, frame: Frame) -> bool:
        """One frame; False when it ended the connection (ERROR or DISCONNECT)."""
        node, conn = self.node, self.conn
        node.metrics.messages_in.labels(conn.transport_name).inc()
        await self._throttle(frame)
        receipt = frame.get("receipt")
        try:
            if frame.command == "DISCONNECT":
                # §DISCONNECT: the RECEIPT confirms every earlier frame was processed; then we close
                if receipt is not None:
                    conn.send_frame(Frame("RECEIPT", (("receipt-id", receipt),)))
                conn.close(CloseCode.NORMAL, "DISCONNECT")
                return False
            tx = frame.get("transaction")
            extra: tuple[tuple[str, str], ...] | None = ()
            if tx is not None and frame.command in TRANSACTIONAL:
                self._buffer(tx, frame)
            else:
                extra = await self._dispatch(frame)
        except Exception as exc:
            verdict = classify(exc)
            if verdict.internal:
                log.exception("STOMP %s of %s failed", frame.command, conn.id)
            self.error(verdict.message, code=verdict.code, receipt=receipt)
            return False
        if receipt is not None and extra is not None and not conn.closed:
            conn.send_frame(Frame("RECEIPT", (("receipt-id", receipt), *extra)))
        return not conn.closed

    def error(self, message: str, *, code: str, receipt: str | None = None, close: int | None = None) -> None:
        """ERROR (§ERROR) and close; the message goes in the header and, for humans, the body."""
        conn = self.conn
        if conn.closed:
            return
        self.node.metrics.errors_total.labels(conn.transport_name, code).inc()
        headers = [("message", message[:1000]), ("code", code), ("content-type", "text/plain")]
        if receipt is not None:
            headers.append(("receipt-id", receipt))
        conn.send_frame(Frame("ERROR", tuple(headers), message.encode()))
        conn.close(error_close_code(code) if close is None else close, message)

    async def _throttle(self, frame: Frame) -> None:
        """Wait for this frame's tokens (see the module docstring on rate limits)."""
        cost = len(frame.body) if frame.command == "SEND" else 0
        while not self._commands.take():
            await asyncio.sleep(max(self._commands.retry_after(), 0.001))
        while cost and not self._data_bytes.take(cost):
            await asyncio.sleep(max(self._data_bytes.retry_after(cost), 0.001))

    # -- dispatch --------------------------------------------------------------------------------
    async def _dispatch(self, frame: Frame) -> tuple[tuple[str, str], ...] | None:
        """Carry out one frame; returns extra headers for its RECEIPT (None: already sent)."""
        command = frame.command
        if command == "SEND":
            return await self._send(frame)
        if command == "SUBSCRIBE":
            return await self._subscribe(frame)
        if command == "UNSUBSCRIBE":
            await self._unsubscribe(frame)
        elif command in ("ACK", "NACK"):
            await self._ack(frame, command == "ACK")
        elif command == "BEGIN":
            self._begin(_required(frame, "transaction"))
        elif command == "COMMIT":
            for buffered in self._end(_required(frame, "transaction")):
                await self._dispatch(buffered)  # buffered frames have no receipt (see _buffer)
        elif command == "ABORT":
            self._end(_required(frame, "transaction"))
        else:  # CONNECT/STOMP again: §Connecting allows one per connection
            raise ClientError("protocol_error", f"unexpected {command}: the connection is already established")
        return ()

    # -- SEND ------------------------------------------------------------------------------------
    async def _send(self, frame: Frame) -> tuple[tuple[str, str], ...]:
        node, conn = self.node, self.conn
        destination = _required(frame, "destination")
        if destination == REFRESH_DESTINATION:
            return await self._refresh(frame)
        target = self.destinations.for_send(destination)
        key = frame.get("idempotency-key")
        if isinstance(target, AppDestination):
            await self._app_message(target, frame)
            return ()
        data = self._json_body(frame)
        if isinstance(target, ChannelDestination):
            pos = await node.publish(target.channel, data, conn=conn, idempotency_key=key)
            return (("epoch", pos.epoch), ("offset", str(pos.offset)))
        assert isinstance(target, UserSendDestination)
        positions = await node.send_to_users([target.user], data, sender=conn.user, conn=conn,
                                             idempotency_key=key, destination=target.suffix)
        pos = positions[target.user]
        return (("epoch", pos.epoch), ("offset", str(pos.offset)))

    def _json_body(self, frame: Frame) -> bytes:
        """The SEND body as pushgate data, which is JSON everywhere: a JSON body as is, an empty
        one as ``null``, and a ``text/*`` body that is not JSON as a JSON string (stompjs apps
        often send plain text); anything else that is not JSON is refused."""
        body = frame.body
        if not body.strip():
            return b"null"
        ctype = (frame.get("content-type") or "").lower()
        try:
            return check_json(body, max_depth=self.node.config.max_json_depth)
        except ClientError:
            if not ctype.startswith("text/"):
                raise ClientError("bad_request", "a SEND body must be JSON (or text/* content)") from None
        try:
            return msgspec.json.encode(body.decode("utf-8"))
        except UnicodeDecodeError:
            raise ClientError("bad_request", "a text body must be UTF-8") from None

    async def _app_message(self, target: AppDestination, frame: Frame) -> None:
        """``/app<path>``: the application's handler, then its reply where the mapping says."""
        node, conn = self.node, self.conn
        found = node.app.find_message(target.path)
        if found is None:
            prefix = self.destinations.app_prefix
            raise ClientError("unknown_destination", f"no @app.message handler for {prefix}{target.path}")
        mapping, variables = found
        data = msgspec.json.decode(self._json_body(frame))
        headers: dict[str, str] = {}
        for name, value in frame.headers:
            headers.setdefault(name, value)  # §Repeated Header Entries: the first wins
        # destination variables are keyword arguments, so a plain path's handler keeps its 3 parameters
        handler = partial(mapping.handler, **variables) if variables else mapping.handler
        result = await call_maybe_async(handler, node.client_info(conn), data, headers)
        if result is None:
            return
        for reply in self._replies(mapping, variables, target, result):
            await self._deliver_reply(reply)

    def _replies(self, mapping: MessageMapping, variables: dict[str, str], target: AppDestination,
                 result: Any) -> list[SendTo | SendToUser]:
        if isinstance(result, SendTo | SendToUser):
            return [result]
        if isinstance(result, list) and result and all(isinstance(r, SendTo | SendToUser) for r in result):
            return list(result)
        send_to, send_to_user = mapping.reply_targets(variables)
        if send_to_user is not None:
            return [SendToUser(send_to_user, result)]
        return [SendTo(send_to or "/topic" + target.path, result)]

    async def _deliver_reply(self, reply: SendTo | SendToUser) -> None:
        """A handler's reply is the server's own message: no client rules apply to it."""
        node, conn = self.node, self.conn
        data = msgspec.json.encode(reply.data)
        if isinstance(reply, SendTo):
            found = self.destinations.broker(reply.destination)
            if found is None:
                raise ClientError("internal", f"@app.message reply to unknown destination {reply.destination!r}")
            await node.publish(found.channel, data)
            return
        users = list(reply.users) if reply.users is not None else ([conn.user] if conn.user else [])
        if not users:
            raise ClientError("permission_denied", "anonymous connections have no user destination to reply to")
        await node.send_to_users(users, data, sender=None, destination=reply.destination)

    async def _refresh(self, frame: Frame) -> tuple[tuple[str, str], ...]:
        """A new token for the same user (the JSON ``refresh``): claims apply from the next frame,
        the connection now closes at the new ``exp``. Dev mode: nothing to do."""
        node, conn = self.node, self.conn
        if node.auth.dev_mode:
            return ()
        header = frame.get("Authorization") or ""
        token = header[7:].strip() if header.lower().startswith("bearer ") else frame.get("token")
        if not token:
            raise ClientError("bad_request", f"a SEND to {REFRESH_DESTINATION} carries a `token` header")
        identity = await node.auth.verify(token)
        if identity.user != conn.user:
            raise ClientError("permission_denied", "a refreshed token must name the connection's user")
        conn.claims = identity.claims
        if self.deadline is not None:
            self.deadline.set(identity.expires)
        exp = (identity.claims or {}).get("exp")
        return (("exp", str(exp)),) if exp is not None else ()

    # -- SUBSCRIBE / UNSUBSCRIBE -----------------------------------------------------------------
    async def _subscribe(self, frame: Frame) -> tuple[tuple[str, str], ...] | None:
        node, conn = self.node, self.conn
        destination = _required(frame, "destination")
        # §SUBSCRIBE id: required since 1.1; a 1.0 client may leave it out (then the destination names it)
        sub_id = frame.get("id") or (destination if conn.version == "1.0" else _required(frame, "id"))
        ack = frame.get("ack") or "auto"
        if ack not in ACK_MODES:
            raise ClientError("bad_request", f"ack must be one of {', '.join(ACK_MODES)}")
        if sub_id in conn.subscriptions:
            raise ClientError("already_subscribed", f"subscription id {sub_id!r} is in use")
        if len(conn.subscriptions) >= node.config.max_subscriptions:
            raise ClientError("limit_exceeded", f"at most {node.config.max_subscriptions} subscriptions")
        since = _since(frame.get("since"))
        target = self.destinations.for_subscribe(destination)
        if isinstance(target, UserDestination):
            return await self._subscribe_user(sub_id, destination, target, ack, since, frame.get("receipt"))
        sub = Subscription(sub_id, destination, target.channel, ack)
        if target.channel in conn.channels:
            conn.add(sub)  # another subscription to a channel this connection follows: no replay
            return ()
        result = await node.subscribe(conn, target.channel, since)
        conn.add(sub)
        self._receipt_now(frame.get("receipt"), result.position, result.recovered)
        # No await from here on: RECEIPT, replay, then the held live publications, in this order.
        for pub in (*result.replay, *node.finish_subscribe(conn, target.channel, result)):
            conn.send(message_outgoing(pub))
        return None

    async def _subscribe_user(self, sub_id: str, destination: str, target: UserDestination, ack: str,
                              since: StreamPosition | None, receipt: str | None) -> tuple[tuple[str, str], ...] | None:
        """``/user/queue/<name>``: the first such subscription opens the user's stream (with its
        recovery: ``since``, the handshake's ``user_since``, or what the user has not acked)."""
        node, conn = self.node, self.conn
        if conn.user is None:
            raise ClientError("permission_denied", "anonymous connections have no user destinations")
        channel = user_stream(conn.user)
        sub = Subscription(sub_id, destination, channel, ack, target.suffix)
        if self.user_stream_open:
            conn.add(sub)
            return ()
        result = await node.open_user_stream(conn, since or self.user_since)
        self.user_stream_open = True
        conn.add(sub)
        assert result is not None
        self._receipt_now(receipt, result.position, result.recovered)
        for pub in (*result.replay, *node.finish_subscribe(conn, channel, result)):
            conn.send(message_outgoing(pub))
        return None

    def _receipt_now(self, receipt: str | None, position: StreamPosition, recovered: bool) -> None:
        """A SUBSCRIBE's RECEIPT goes before its replay, carrying the stream's position."""
        if receipt is None:
            return
        self.conn.send_frame(Frame("RECEIPT", (("receipt-id", receipt), ("epoch", position.epoch),
                                               ("offset", str(position.offset)),
                                               ("recovered", "true" if recovered else "false"))))

    async def _unsubscribe(self, frame: Frame) -> None:
        """§UNSUBSCRIBE. An unknown id is not an error (a client may unsubscribe twice)."""
        node, conn = self.node, self.conn
        sub_id = frame.get("id") or (frame.get("destination") if conn.version == "1.0" else None)
        if sub_id is None:
            raise ClientError("bad_request", "UNSUBSCRIBE needs an `id` header")
        sub = conn.subscriptions.get(sub_id)
        if sub is None:
            return
        if conn.remove(sub) and sub.user_suffix is None:
            await node.unsubscribe(conn, sub.channel)
            for hook in node.app.unsubscribe_hooks:
                try:
                    await call_maybe_async(hook, node.client_info(conn), sub.channel)
                except Exception:
                    log.exception("unsubscribe hook failed")

    # -- ACK / NACK ------------------------------------------------------------------------------
    async def _ack(self, frame: Frame, positive: bool) -> None:
        """§ACK/§NACK. On channels they change nothing (pub/sub keeps no per-client state); on a
        ``/user/...`` subscription in a client ack mode an ACK moves the user's acknowledged
        position (the offline inbox, delivery receipts): to the acked message in ``client`` mode
        (cumulative), and in ``client-individual`` mode to the last message before which all are
        acked. A NACK just forgets the message: unacknowledged, it is delivered again to the
        user's next connection that has no position."""
        conn = self.conn
        if conn.version == "1.2":
            value = _required(frame, "id")
        else:
            value = _required(frame, "message-id")
        parsed = parse_ack_id(value)
        if parsed is None:
            return
        sub = conn.subscriptions.get(parsed[0])
        if sub is None or sub.user_suffix is None or sub.ack == "auto" or value not in sub.pending:
            return
        if sub.ack == "client":
            keys = list(sub.pending)
            for key in keys[: keys.index(value) + 1]:
                del sub.pending[key]
            if positive:
                await self._ack_user(parsed[1])
            return
        position = sub.pending.pop(value)
        if not positive:
            return
        first_pending = next(iter(sub.pending.values()), None)
        if first_pending is None or first_pending.offset > position.offset:
            await self._ack_user(position)

    async def _ack_user(self, position: StreamPosition) -> None:
        if self._acked is not None and self._acked.epoch == position.epoch and self._acked.offset >= position.offset:
            return
        self._acked = position
        await self.node.ack(self.conn, position)

    def _auto_ack(self, position: StreamPosition) -> None:
        """``ack: auto`` on a user destination: the message counts as acknowledged once sent
        (§SUBSCRIBE ack), so the user's position moves; coalesced, one ack in flight at a time."""
        self._ack_wanted = position
        if self._ack_task is None or self._ack_task.done():
            self._ack_task = asyncio.get_running_loop().create_task(self._auto_ack_loop())

    async def _auto_ack_loop(self) -> None:
        while self._ack_wanted is not None and not self.conn.closed:
            wanted, self._ack_wanted = self._ack_wanted, None
            try:
                await self._ack_user(wanted)
            except Exception as exc:  # the next message's ack covers this one
                log.warning("auto-ack of %s failed: %s", self.conn.id, exc)

    # -- transactions ----------------------------------------------------------------------------
    def _begin(self, tx: str) -> None:
        """§BEGIN: SEND, ACK and NACK frames naming ``tx`` are held until COMMIT (bounded)."""
        if tx in self._transactions:
            raise ClientError("bad_request", f"transaction {tx!r} is already open")
        if len(self._transactions) >= MAX_TRANSACTIONS:
            raise ClientError("limit_exceeded", f"at most {MAX_TRANSACTIONS} open transactions")
        self._transactions[tx] = []

    def _buffer(self, tx: str, frame: Frame) -> None:
        frames = self._transactions.get(tx)
        if frames is None:
            raise ClientError("bad_request", f"no open transaction {tx!r}")
        if len(frames) >= self.node.config.stomp_transaction_frames:
            raise ClientError("limit_exceeded", f"at most {self.node.config.stomp_transaction_frames} frames "
                              "per transaction")
        if self._transaction_bytes + len(frame.body) > self.node.config.client_publish_bytes_burst:
            raise ClientError("limit_exceeded", "open transactions hold too many bytes")
        self._transaction_bytes += len(frame.body)
        # the frame runs at COMMIT as if sent then, without its transaction (and receipt: the
        # buffered frame's own receipt was answered when it was buffered)
        frames.append(Frame(frame.command, tuple((k, v) for k, v in frame.headers
                                                 if k not in ("transaction", "receipt")), frame.body))

    def _end(self, tx: str) -> list[Frame]:
        frames = self._transactions.pop(tx, None)
        if frames is None:
            raise ClientError("bad_request", f"no open transaction {tx!r}")
        self._transaction_bytes -= sum(len(f.body) for f in frames)
        return frames


def _required(frame: Frame, name: str) -> str:
    value = frame.get(name)
    if value is None or value == "":
        raise ClientError("bad_request", f"{frame.command} needs a `{name}` header")
    return value


def _since(value: str | None) -> StreamPosition | None:
    """A SUBSCRIBE's ``since: <epoch>:<offset>`` (the MESSAGE headers' position), or None."""
    if value is None:
        return None
    epoch, _, offset = value.rpartition(":")
    if not epoch or not offset.isdigit() or len(value) > 200:
        raise ClientError("bad_request", "since must be <epoch>:<offset>")
    return StreamPosition(epoch, int(offset))
