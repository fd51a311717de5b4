"""A STOMP connection as the hub sees it: publications in, MESSAGE frames out (STOMP 1.2 §MESSAGE).

The hub hands every connection the same :class:`~pushgate.protocol.outgoing.Outgoing`; a STOMP
connection turns it into one MESSAGE frame per matching subscription. Encode once still holds:
the frame differs between connections only by the subscription's id, destination and ack mode
(and the version's escaping), so it is built once per (publication, that key), WebSocket-framed
once, cached on the ``Outgoing`` and written as the same bytes by every connection that shares
the key (stompjs names its subscriptions ``sub-0``, ``sub-1``..., so most do).

User-stream publications (``!u:<user>``) carry the stored envelope ``{"from","destination",
"data"}``; the connection reads the destination (cold enough: a user's few devices) and delivers
to its ``/user<destination>`` subscriptions, ``stomp_user_destination`` when the sender gave none.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import msgspec

from ..backends.broker import Publication, StreamPosition
from ..errors import CloseCode
from ..protocol import wsframe
from ..protocol.jsonwire import unstamp
from ..protocol.outgoing import Outgoing
from ..protocol.stomp import HEARTBEAT, Frame, encode
from .websocket import WsConnection

if TYPE_CHECKING:
    from aiohttp import web

    from ..hub import Hub
    from ..metrics import NodeMetrics
    from .stomp_destinations import Destinations

log = logging.getLogger(__name__)

ACK_MODES = ("auto", "client", "client-individual")  # STOMP 1.2 §SUBSCRIBE ack Header
HEARTBEAT_WS = wsframe.server_frame(HEARTBEAT)


@dataclass(slots=True, eq=False)
class Subscription:
    """One STOMP subscription: ``channel`` is a channel, or the user's stream for ``/user/...``."""

    id: str
    destination: str
    channel: str
    ack: str = "auto"
    user_suffix: str | None = None  # /queue/<name> for user destinations
    #: client-ack user subscriptions: positions delivered and not yet acknowledged, in order
    pending: dict[str, StreamPosition] = field(default_factory=dict)


class _Envelope(msgspec.Struct, frozen=True):
    """What a user stream stores per message (``jsonwire.direct_envelope``)."""

    data: msgspec.Raw
    sender: str | None = msgspec.field(default=None, name="from")
    destination: str | None = None


_envelope_decoder = msgspec.json.Decoder(_Envelope)
MAX_PENDING_ACKS = 10000  # per subscription: a client that never acks must not grow us forever


def ack_id(sub_id: str, epoch: str, offset: int) -> str:
    """The ``message-id`` and ``ack`` of a MESSAGE: unique on the connection (one subscription
    sees a position once), and enough to find the subscription and position again from the 1.2
    ``ACK id`` alone, or from the 1.0/1.1 ``message-id``."""
    return f"{sub_id}:{epoch}:{offset}"


def parse_ack_id(value: str) -> tuple[str, StreamPosition] | None:
    if value.count(":") < 2:
        return None
    sub_id, epoch, offset = value.rsplit(":", 2)
    if not sub_id or not epoch or not offset.isdigit():
        return None
    return sub_id, StreamPosition(epoch, int(offset))


def message_frame(sub: Subscription, version: str, pub: Publication, body: bytes,
                  sender: str | None = None) -> bytes:
    """One MESSAGE (§MESSAGE), WebSocket-framed: body = the publication's raw JSON data.

    ``epoch`` and ``offset`` are pushgate's: the position a client passes as ``since`` on a
    later SUBSCRIBE to recover what it missed.
    """
    mid = ack_id(sub.id, pub.epoch, pub.offset)
    headers = [("subscription", sub.id), ("message-id", mid), ("destination", sub.destination),
               ("content-type", "application/json"), ("epoch", pub.epoch), ("offset", str(pub.offset))]
    if sub.ack != "auto" and version != "1.0":
        headers.append(("ack", mid))  # §MESSAGE: required for client ack modes (1.2)
    if sender is not None:
        headers.append(("sender", sender))
    return wsframe.server_frame(encode(Frame("MESSAGE", tuple(headers), body), version=version))


def _channel_message(sub: Subscription, version: str, pub: Publication) -> bytes:
    sender, data = unstamp(pub.data)  # the publisher, stamped by the node, goes in a header
    return message_frame(sub, version, pub, data, sender)


def _user_message(sub: Subscription, version: str, data: bytes, sender: str | None, pub: Publication) -> bytes:
    return message_frame(sub, version, pub, data, sender)


class StompConnection(WsConnection):
    """A WebSocket that speaks STOMP; the session fills its subscription tables."""

    transport_name = "stomp"

    def __init__(
        self,
        conn_id: str,
        user: str | None,
        claims: dict[str, Any] | None,
        *,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport,
        hub: Hub,
        write_limit: int,
        metrics: NodeMetrics,
        version: str,
        destinations: Destinations,
    ) -> None:
        super().__init__(conn_id, user, claims, ws=ws, transport=transport, hub=hub, write_limit=write_limit,
                         metrics=metrics)
        self.version = version
        self.destinations = destinations
        self.subscriptions: dict[str, Subscription] = {}
        self.by_channel: dict[str, list[Subscription]] = {}
        self.by_user_suffix: dict[str, list[Subscription]] = {}
        self.wrote = False  # anything queued since the last heart-beat check
        #: called with the highest user-stream position delivered to an auto-ack subscription
        self.on_user_delivered: Callable[[StreamPosition], None] | None = None

    # -- the subscription tables ----------------------------------------------------------------
    def add(self, sub: Subscription) -> None:
        self.subscriptions[sub.id] = sub
        if sub.user_suffix is None:
            self.by_channel.setdefault(sub.channel, []).append(sub)
        else:
            self.by_user_suffix.setdefault(sub.user_suffix, []).append(sub)

    def remove(self, sub: Subscription) -> bool:
        """Forget ``sub``; True when no other subscription of this connection follows its channel."""
        self.subscriptions.pop(sub.id, None)
        table = self.by_channel if sub.user_suffix is None else self.by_user_suffix
        key = sub.channel if sub.user_suffix is None else sub.user_suffix
        subs = table.get(key, [])
        if sub in subs:
            subs.remove(sub)
        if not subs:
            table.pop(key, None)
        if sub.user_suffix is None:
            return sub.channel not in self.by_channel
        return not self.by_user_suffix

    # -- writing --------------------------------------------------------------------------------
    def queue(self, framed: bytes) -> None:
        self.wrote = True
        super().queue(framed)

    def send_frame(self, frame: Frame) -> None:
        """Queue one frame of this connection's own (CONNECTED, RECEIPT, ERROR): cold path."""
        self.queue(wsframe.server_frame(encode(frame, version=self.version)))

    def send(self, out: Outgoing) -> None:
        # Hot path: the subscriptions that match, each with the shared encoding for its key.
        if self.closed:
            return
        pub = out.pub
        if pub is None:
            self._send_other(out)
            return
        if pub.channel[:1] == "!":
            self._send_user(out, pub)
            return
        subs = self.by_channel.get(pub.channel)
        if not subs:
            return
        version = self.version
        for sub in subs:
            key = (version, sub.id, sub.destination, sub.ack)
            self.queue(out.encoded(key, partial(_channel_message, sub, version)))

    def _send_user(self, out: Outgoing, pub: Publication) -> None:
        """A user-stream message: to the ``/user<destination>`` subscriptions (see module doc)."""
        try:
            envelope = _envelope_decoder.decode(pub.data)
        except msgspec.DecodeError:
            log.warning("undecodable user message %s:%s on %s", pub.epoch, pub.offset, self.id)
            return
        suffix = self.destinations.user_suffix(envelope.destination)
        subs = self.by_user_suffix.get(suffix)
        if not subs:
            return
        version, data, sender = self.version, bytes(envelope.data), envelope.sender
        position = StreamPosition(pub.epoch, pub.offset)
        auto = False
        for sub in subs:
            key = (version, sub.id, sub.destination, sub.ack)
            self.queue(out.encoded(key, partial(_user_message, sub, version, data, sender)))
            if sub.ack == "auto":
                auto = True
            else:
                if len(sub.pending) >= MAX_PENDING_ACKS:
                    sub.pending.pop(next(iter(sub.pending)))
                sub.pending[ack_id(sub.id, pub.epoch, pub.offset)] = position
        if auto and self.on_user_delivered is not None:
            self.on_user_delivered(position)

    def _send_other(self, out: Outgoing) -> None:
        """Frames that carry no publication (cold path). A ``resync`` becomes a MESSAGE with a
        ``resync: true`` header on each subscription it concerns, so the client learns the
        position its stream goes on from; broadcasts and join/leave have no STOMP destination
        and are not delivered (docs/stomp.md)."""
        if out.resync is None:
            return
        channel, position = out.resync
        if channel[:1] == "!":  # the user's own stream: every /user/... subscription
            subs = [s for group in self.by_user_suffix.values() for s in group]
        else:
            subs = list(self.by_channel.get(channel, ()))
        epoch, offset = position.epoch, str(position.offset)
        for sub in subs:
            headers = (("subscription", sub.id), ("message-id", f"{sub.id}:resync:{epoch}:{offset}"),
                       ("destination", sub.destination), ("content-type", "application/json"),
                       ("resync", "true"), ("epoch", epoch), ("offset", offset))
            self.send_frame(Frame("MESSAGE", headers, out.payload))

    def _close(self, code: int, reason: str) -> None:
        """Close, first telling the client why where STOMP has a frame for it (see :meth:`last_words`)."""
        self.last_words(code, reason)
        super()._close(code, reason)

    def last_words(self, code: int, reason: str) -> None:
        """An ERROR frame before a close the session did not decide (§ERROR: "the server MUST
        then close"; a STOMP client shows the frame, while a close reason most clients drop).

        The session's own ERRORs are queued before they close; the token deadline
        (:mod:`.expiry`) closes with no frame of its own, so a STOMP client would only see a bare
        4005. A slow consumer gets nothing: its buffer is what is full. Subclasses that replace
        :meth:`close` (SockJS) call this first."""
        if self.closed or code != CloseCode.TOKEN_EXPIRED:
            return
        self.send_frame(Frame("ERROR", (("message", reason), ("code", "token_expired"),
                                        ("content-type", "text/plain")), reason.encode()))

    def heartbeat(self) -> None:
        """Queue one EOL heart-beat (§Heart-beating)."""
        self.queue(HEARTBEAT_WS)
