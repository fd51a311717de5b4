"""This node's connections, indexed by id, user and channel, and the fan-out over them.

The hub knows nothing about brokers or clusters: the node tells it what to deliver. A
payload is wrapped once in :class:`Outgoing`, which frames it once per transport kind on first
use; every connection then writes those same bytes (no per-connection encoding, no task per
message).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .backends.broker import Publication, StreamPosition
from .protocol.outgoing import Outgoing

if TYPE_CHECKING:
    from .web.connection import Connection


@dataclass(slots=True)
class ChannelState:
    """Local subscribers of one channel and where its stream stands on this node."""

    subscribers: set[Connection] = field(default_factory=set)
    # connections replaying history: live publications are held for them until the replay is sent
    pending: dict[Connection, list[Publication]] = field(default_factory=dict)
    last: StreamPosition | None = None  # newest publication delivered here
    filling: list[Publication] | None = None  # set while the node fills a gap from history


class Hub:
    """Local connection indexes and fan-out.

    Write coalescing: transports that buffer (:class:`WsConnection`) queue frames and ask the hub
    to flush them; the hub flushes every such connection once, at the end of the current loop
    iteration. Under load many publications arrive in one iteration (one broker read holds
    many), and each connection then gets one ``write()`` for all of them instead of one per
    frame; the system call is most of a delivery's cost.
    """

    def __init__(self) -> None:
        self.connections: dict[str, Connection] = {}
        self.users: dict[str, set[Connection]] = {}
        self.channels: dict[str, ChannelState] = {}
        self.delivered = 0  # frames handed to transports, for metrics
        self._dirty: list[Connection] = []
        self._flush_scheduled = False

    def want_flush(self, conn: Connection) -> None:
        """Flush ``conn`` at the end of this loop iteration (call once per pending batch)."""
        self._dirty.append(conn)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.flush()

    def add(self, conn: Connection) -> bool:
        """Register ``conn``; True if it is its user's first connection on this node."""
        self.connections[conn.id] = conn
        if conn.user is None:
            return False
        conns = self.users.get(conn.user)
        if conns is None:
            self.users[conn.user] = {conn}
            return True
        conns.add(conn)
        return False

    def remove(self, conn: Connection) -> bool:
        """Forget ``conn``; True if it was its user's last connection on this node."""
        if self.connections.pop(conn.id, None) is None or conn.user is None:
            return False
        conns = self.users.get(conn.user)
        if conns is None:
            return False
        conns.discard(conn)
        if not conns:
            del self.users[conn.user]
            return True
        return False

    def user_count(self) -> int:
        return len(self.users)

    def subscription_count(self) -> int:
        return sum(len(st.subscribers) + len(st.pending) for st in self.channels.values())

    # -- fan-out (hot path) --
    def fanout(self, conns: Iterable[Connection], out: Outgoing) -> int:
        n = 0
        for conn in conns:
            conn.send(out)
            n += 1
        self.delivered += n
        return n

    def to_channel(self, st: ChannelState, pub: Publication, out: Outgoing) -> int:
        """Deliver one publication of ``st``'s channel; held for subscribers still replaying history."""
        for held in st.pending.values():
            held.append(pub)
        return self.fanout(st.subscribers, out)

    def to_user(self, user: str, out: Outgoing) -> int:
        conns = self.users.get(user)
        return self.fanout(tuple(conns), out) if conns else 0

    def to_all(self, out: Outgoing) -> int:
        return self.fanout(tuple(self.connections.values()), out)
