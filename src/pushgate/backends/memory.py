"""Single-node implementations of the broker, presence and lease interfaces.

These are the embedded default (one process, no Redis) and the reference the conformance suite
holds the Redis versions to. Everything is in-process state; delivery to the handler is
synchronous, so a publication reaches the node before :meth:`MemoryBroker.publish` returns.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from pushgate.backends.broker import (
    BrokerHandler,
    ChannelEvent,
    HistoryOptions,
    HistoryResult,
    Publication,
    StreamPosition,
    UserMessage,
)
from pushgate.backends.presence import ChannelPresence, NodeInfo, OnlineCounts

__all__ = ["MemoryBroker", "MemoryLeaseStore", "MemoryPresenceStore", "select_history"]

log = logging.getLogger(__name__)


def select_history(
    kept: Sequence[Publication],
    position: StreamPosition,
    since: StreamPosition | None,
    limit: int | None,
) -> HistoryResult:
    """Apply the history rules shared by every broker to the publications a channel still keeps.

    ``kept`` is oldest first. Without ``since`` the newest ``limit`` are returned. With ``since``
    the result is incomplete when the epoch differs, when ``since`` lies in the future, or when
    something after ``since`` was already trimmed; then whatever is kept is returned instead, so
    the caller can still show the most it has.
    """
    if limit is not None:
        limit = max(0, limit)
    if since is None:
        pubs = list(kept) if limit is None else list(kept[len(kept) - limit :] if limit else [])
        return HistoryResult(pubs, position, True)
    oldest = kept[0].offset if kept else position.offset + 1
    complete = since.epoch == position.epoch and since.offset <= position.offset and since.offset >= oldest - 1
    after = [p for p in kept if p.offset > since.offset] if complete else list(kept)
    if limit is not None:
        after = after[:limit]
    return HistoryResult(after, position, complete)


@dataclass(slots=True)
class _Stream:
    """One channel's history: offsets, and (publication, monotonic time appended) pairs."""

    offset: int = 0
    ttl: float = 0.0
    entries: deque[tuple[Publication, float]] = field(default_factory=deque)

    def expire(self, now: float) -> None:
        """Drop entries older than the channel's ttl (checked lazily on read and append)."""
        while self.entries and now - self.entries[0][1] > self.ttl:
            self.entries.popleft()


class MemoryBroker:
    """In-process broker with bounded, expiring per-channel history.

    The epoch is made when the broker is created: a restarted process has lost its history, so
    clients holding positions from before must learn that they cannot recover from it. Like the
    Redis broker, a failing handler is logged and never reaches the publisher.
    """

    def __init__(self, *, epoch: str | None = None) -> None:
        self._epoch = epoch if epoch is not None else secrets.token_hex(8)
        self._handler: BrokerHandler | None = None
        self._streams: dict[str, _Stream] = {}
        self._channels: set[str] = set()
        self._users: set[str] = set()

    @property
    def epoch(self) -> str:
        return self._epoch

    @property
    def healthy(self) -> bool:
        return True

    async def start(self, handler: BrokerHandler) -> None:
        self._handler = handler

    async def close(self) -> None:
        self._handler = None
        self._channels.clear()
        self._users.clear()

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)

    async def subscribe_user(self, user: str) -> None:
        self._users.add(user)

    async def unsubscribe_user(self, user: str) -> None:
        self._users.discard(user)

    async def publish(self, channel: str, data: bytes, options: HistoryOptions) -> StreamPosition:
        stream = self._streams.get(channel)
        if stream is None:
            stream = self._streams[channel] = _Stream()
        stream.offset += 1
        pub = Publication(channel=channel, data=data, offset=stream.offset, epoch=self._epoch)
        now = time.monotonic()
        stream.ttl = options.ttl
        if options.size > 0 and options.ttl > 0:
            stream.entries.append((pub, now))
            while len(stream.entries) > options.size:
                stream.entries.popleft()
        else:
            stream.entries.clear()
        stream.expire(now)
        handler = self._handler
        if handler is not None and channel in self._channels:
            try:
                handler.on_publication(pub)
            except Exception:
                log.exception("broker: on_publication handler failed")
        return StreamPosition(self._epoch, stream.offset)

    async def publish_event(self, event: ChannelEvent) -> None:
        handler = self._handler
        if handler is not None and event.channel in self._channels:
            try:
                handler.on_channel_event(event)
            except Exception:
                log.exception("broker: on_channel_event handler failed")

    async def send_to_users(self, users: Sequence[str], message: UserMessage) -> None:
        handler = self._handler
        if handler is None:
            return
        for user in dict.fromkeys(users):
            if user in self._users:
                try:
                    handler.on_user_message(user, message)
                except Exception:
                    log.exception("broker: on_user_message handler failed")

    async def broadcast(self, data: bytes) -> None:
        handler = self._handler
        if handler is not None:
            try:
                handler.on_broadcast(data)
            except Exception:
                log.exception("broker: on_broadcast handler failed")

    async def position(self, channel: str) -> StreamPosition:
        stream = self._streams.get(channel)
        return StreamPosition(self._epoch, stream.offset if stream is not None else 0)

    async def history(
        self, channel: str, *, since: StreamPosition | None = None, limit: int | None = None
    ) -> HistoryResult:
        stream = self._streams.get(channel)
        if stream is None:
            return select_history([], StreamPosition(self._epoch, 0), since, limit)
        stream.expire(time.monotonic())
        kept = [pub for pub, _ in stream.entries]
        return select_history(kept, StreamPosition(self._epoch, stream.offset), since, limit)


class MemoryPresenceStore:
    """Exact presence for one node: the node is always live, nothing ever needs purging."""

    def __init__(self) -> None:
        self._node = ""
        self._connections: dict[str, str | None] = {}
        self._channels: dict[str, dict[str, str | None]] = {}

    async def start(self, node_id: str) -> None:
        self._node = node_id

    async def close(self) -> None:
        self._connections.clear()
        self._channels.clear()

    async def heartbeat(self) -> None:
        return None

    async def add_connection(self, conn_id: str, user: str | None) -> None:
        self._connections[conn_id] = user

    async def remove_connection(self, conn_id: str, user: str | None) -> None:
        self._connections.pop(conn_id, None)

    async def join(self, channel: str, conn_id: str, user: str | None) -> None:
        self._channels.setdefault(channel, {})[conn_id] = user

    async def leave(self, channel: str, conn_id: str) -> None:
        members = self._channels.get(channel)
        if members is None:
            return
        members.pop(conn_id, None)
        if not members:
            del self._channels[channel]

    async def presence(self, channel: str) -> ChannelPresence:
        members = self._channels.get(channel, {})
        users = sorted({u for u in members.values() if u is not None})
        return ChannelPresence(channel=channel, users=users, connections=len(members))

    async def online(self) -> OnlineCounts:
        users = len({u for u in self._connections.values() if u is not None})
        conns = len(self._connections)
        info = NodeInfo(node=self._node, connections=conns, users=users)
        return OnlineCounts(connections=conns, users=users, nodes={self._node: info})

    async def nodes(self) -> list[str]:
        return [self._node]

    async def purge_dead_nodes(self) -> list[str]:
        return []

    async def resync(self, connections: dict[str, str | None], channels: dict[str, dict[str, str | None]]) -> None:
        self._connections = dict(connections)
        self._channels = {ch: dict(members) for ch, members in channels.items() if members}


class MemoryLeaseStore:
    """Leases and once-claims in process memory, timed with the monotonic clock."""

    def __init__(self) -> None:
        self._leases: dict[str, tuple[str, float]] = {}
        self._claims: dict[str, float] = {}

    async def acquire(self, name: str, holder: str, ttl: float) -> bool:
        now = time.monotonic()
        current = self._leases.get(name)
        if current is None or current[1] <= now or current[0] == holder:
            self._leases[name] = (holder, now + ttl)
            return True
        return False

    async def release(self, name: str, holder: str) -> None:
        current = self._leases.get(name)
        if current is not None and current[0] == holder:
            del self._leases[name]

    async def claim_once(self, key: str, ttl: float) -> bool:
        now = time.monotonic()
        if len(self._claims) > 1024:
            # Keep the table bounded: forget claims whose window has passed.
            self._claims = {k: exp for k, exp in self._claims.items() if exp > now}
        expires = self._claims.get(key)
        if expires is not None and expires > now:
            return False
        self._claims[key] = now + ttl
        return True
