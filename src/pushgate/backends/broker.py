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
received it and never re-encoded on the way to subscribers.
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
    """

    kind: Literal["direct", "disconnect"]
    sender: str | None = None
    data: bytes = b"null"
    code: int = 0
    reason: str = ""

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
