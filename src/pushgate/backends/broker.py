"""The broker interface: how publications move between nodes, with per-channel history.

A *broker* moves publications between nodes. It never knows about connections: it hands what
arrives to a :class:`BrokerHandler` (the node implements it). History lives with the broker
because a publication's offset must be assigned atomically with its append to history and its
fan-out; :class:`HistoryStore` is the read side of that, usable on its own (e.g. by the HTTP API).

Every implementation has a memory version (``broker_memory``, the single-node default and the
reference in tests) and a Redis/Valkey version (``redis/broker``); one conformance suite
(``tests/backends``) runs over each. The history rules both follow are in ``history``.

Errors: a broker that cannot reach its backing service raises
:class:`pushgate.errors.BrokerUnavailable` (translated once, at the backend boundary).

Data (``data`` fields) is always *raw JSON bytes*: it is parsed once at the edge that
received it and never re-encoded on the way to subscribers (the one exception is the ``ack``
notification, whose ``data`` is the acknowledged position, see :func:`ack_message`).

User streams are ordinary streams under an internal name (``"!u:" + user``, see
:mod:`pushgate.names`): publishing, history, offsets and fan-out need nothing new. What is
new is the *acknowledged position* of a stream (:meth:`Broker.ack`, :meth:`Broker.acked`),
kept by the broker next to the stream so every node sees the same one; the rules are written
once in :meth:`Broker.ack` and implemented in Python (:mod:`.ack_memory`) and in Lua
(``redis/scripts.py`` ``ACK``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """Where a channel's history stands: ``offset`` of the newest publication within ``epoch``.

    The epoch changes whenever history is lost (restart of a memory node, expiry or loss of the
    Redis keys), so an offset is only comparable within one epoch.
    """

    epoch: str
    offset: int

@dataclass(frozen=True, slots=True)
class Publication:
    """One message published to a channel, as every subscriber will see it."""

    channel: str
    data: bytes  # raw JSON
    offset: int
    epoch: str

@dataclass(frozen=True, slots=True)
class ChannelEvent:
    """A join or leave of ``user`` in ``channel`` (sent only where the namespace enables it)."""

    channel: str
    kind: Literal["join", "leave"]
    user: str | None

@dataclass(frozen=True, slots=True)
class UserMessage:
    """Something addressed to every connection of one user, wherever it landed.

    ``kind == "direct"``: a client-to-client or API message; ``sender`` is stamped by the
    server (None when the server/API sent it), ``data`` is raw JSON.
    ``kind == "disconnect"``: close the user's connections with ``code`` and ``reason``.
    ``kind == "ack"``: a connection of the user acknowledged its stream up to a position;
    ``sender`` is that connection's id, ``data`` is ``b"<epoch>:<offset>"`` (build it with
    :func:`ack_message`, read it with :func:`parse_ack`). It reaches every node holding a
    connection of the user, so a node waiting for a delivery receipt learns of it wherever the
    ack was made.
    """

    kind: Literal["direct", "disconnect", "ack"]
    sender: str | None = None
    data: bytes = b"null"
    code: int = 0
    reason: str = ""

def ack_message(sender: str, position: StreamPosition) -> UserMessage:
    """The ``ack`` notification that connection ``sender`` acknowledged ``position``."""
    return UserMessage("ack", sender=sender, data=f"{position.epoch}:{position.offset}".encode())


def parse_ack(data: bytes) -> StreamPosition:
    """The position carried by an ``ack`` notification's ``data``; ValueError if malformed.

    Epochs never contain ``:`` (they are hex, or hex plus ``.n``), so the last ``:`` separates."""
    epoch, sep, offset = data.decode().rpartition(":")
    if not sep or not epoch or not offset.isdigit():
        raise ValueError(f"not an ack position: {data[:80]!r}")
    return StreamPosition(epoch, int(offset))


@dataclass(frozen=True, slots=True)
class HistoryResult:
    """Publications after a position, oldest first, and where the stream stands now.

    ``complete`` is False when the requested ``since`` could not be honoured (the epoch
    changed, or publications after ``since`` were trimmed): rule 7 of :mod:`.history`.
    """

    publications: list[Publication]
    position: StreamPosition
    complete: bool = True

@dataclass(frozen=True, slots=True)
class HistoryOptions:
    """How much history a channel keeps: newest ``size`` publications for ``ttl`` seconds."""

    size: int = 100
    ttl: float = 300.0

class BrokerHandler(Protocol):
    """What a broker calls when traffic arrives. Implemented by the node; must not block."""

    def on_publication(self, pub: Publication) -> None: ...

    def on_channel_event(self, event: ChannelEvent) -> None: ...

    def on_user_message(self, user: str, message: UserMessage) -> None: ...

    def on_broadcast(self, data: bytes) -> None: ...

    def on_link_state(self, up: bool) -> None:
        """The broker lost (False) or regained (True) its link; after True, all upstream
        subscriptions are back in place and the node should fill gaps from history."""

class HistoryStore(Protocol):
    """Read side of per-channel history."""

    async def history(
        self, channel: str, *, since: StreamPosition | None = None, limit: int | None = None
    ) -> HistoryResult:
        """What a reader gets from the channel's history: rules 6-8 of :mod:`.history`."""
        ...

    async def position(self, channel: str) -> StreamPosition: ...

class Broker(HistoryStore, Protocol):
    """Moves publications between nodes; assigns offsets and keeps history as it publishes."""

    async def start(self, handler: BrokerHandler | None) -> None:
        """Connect and hand incoming traffic to ``handler``.

        ``None`` starts a *publish-only* broker (what :class:`pushgate.Publisher` uses): it can
        publish, send, broadcast and read history, opens no subscription link, and refuses
        :meth:`subscribe`/:meth:`subscribe_user` with RuntimeError.
        """

    async def close(self) -> None: ...

    @property
    def healthy(self) -> bool:
        """False while the link to the backing service is down (``/readyz`` reports it)."""
        ...

    async def subscribe(self, channel: str) -> None:
        """Start receiving ``channel``'s publications and events on this node."""

    async def unsubscribe(self, channel: str) -> None: ...

    async def subscribe_user(self, user: str) -> None:
        """Start receiving messages routed to ``user`` (first local connection of the user)."""

    async def unsubscribe_user(self, user: str) -> None: ...

    async def publish(
        self, channel: str, data: bytes, options: HistoryOptions, *, idempotency_key: str | None = None
    ) -> StreamPosition:
        """Append to history (when ``options.size`` > 0) and deliver to every subscribed node.

        With ``idempotency_key``, a publish to the same channel with the same key within the
        idempotency window is not applied again: it returns the first one's position."""
        ...

    async def publish_event(self, event: ChannelEvent) -> None:
        """Deliver a join/leave to every node subscribed to its channel; not kept in history."""

    async def send_to_users(self, users: Sequence[str], message: UserMessage) -> None:
        """Deliver ``message`` to every node holding a connection of each user."""

    async def broadcast(self, data: bytes) -> None:
        """Deliver ``data`` to every node (every connection); not kept in history."""

    async def ack(self, stream: str, position: StreamPosition, ttl: float) -> StreamPosition:
        """Record that ``stream``'s reader has processed everything up to ``position``.

        The acknowledged position is one per stream and cluster-wide (a user's devices on any
        node share it). The rules, the same on every broker:

        * The stream's *current* position is what :meth:`position` would answer (reading
          creates the epoch, rule 8 of :mod:`.history`).
        * An ack in another epoch than the current one is ignored: offsets of different epochs
          cannot be compared, and an old epoch's history is gone anyway.
        * An ack beyond the current offset is clamped to it (a client cannot acknowledge what
          was not published); a negative offset counts as 0.
        * Acks only move forward: the stored offset becomes the larger of the stored one and
          the ack's. A stored ack of an older epoch counts as none (it acknowledges nothing of
          the current stream) and is replaced.
        * Every ack that is not ignored restarts the stored ack's lifetime: it is forgotten
          ``ttl`` seconds after the last one (with ``ttl <= 0`` nothing is stored, and what was
          stored is dropped).

        Returns the acknowledged position after the call, always in the current epoch:
        ``StreamPosition(current_epoch, 0)`` when nothing of the current epoch is acknowledged.
        """
        ...

    async def reset_if_rewound(self, channel: str, seen: StreamPosition, data: bytes | None) -> StreamPosition | None:
        """Start a new epoch if the stream went *back* behind what this node has seen.

        A failover to a replica that had not yet received the last writes of the old primary
        (asynchronous replication) leaves the stream's offset below offsets that nodes and
        clients already hold; the next publications would then reuse those offsets and be
        dropped everywhere as duplicates, silently. ``seen`` is the newest position this node
        handed out and ``data`` that publication's data (None if unknown). The stream is
        *rewound* when, still in ``seen.epoch``, its newest offset is below ``seen.offset``, or
        the publication it keeps at ``seen.offset`` is not ``data`` (the offset was already
        reused). Then, in one atomic step (only if that still holds), it gets a new epoch with
        no history, as after a restart without persistence, so every node and client sees an
        epoch change and resyncs in-band. Returns the new position, or None when nothing was
        done (not rewound, already another epoch, or a broker that cannot rewind: memory).
        """
        ...

    async def acked(self, stream: str) -> StreamPosition | None:
        """The stored acknowledged position of ``stream``, or None (never acked, or expired).

        It is returned as stored: its epoch may be older than the stream's current one (history
        was lost since), in which case it acknowledges nothing of what the stream keeps now."""
        ...
