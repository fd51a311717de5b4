"""This node's connections, indexed by id, user and channel, and the fan-out over them.

The hub knows nothing about brokers or clusters: the node tells it what to deliver. A
payload is wrapped once in :class:`Outgoing`, which frames it once per transport kind on first
use; every connection then writes those same bytes (no per-connection encoding, no task per
message).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .brokers.base import Publication, StreamPosition
from .protocol import jsonwire, wsframe


class Outgoing:
    """One server frame's JSON payload, with its per-transport encodings made lazily, once."""

    __slots__ = ("_sse", "_sse_chunk", "_ws", "event_id", "payload")

    def __init__(self, payload: bytes, event_id: str | None = None) -> None:
        self.payload = payload
        self.event_id = event_id  # SSE `id:` (epoch:offset of a publication) for Last-Event-ID
        self._ws: bytes | None = None
        self._sse: bytes | None = None
        self._sse_chunk: bytes | None = None

    def ws(self) -> bytes:
        if self._ws is None:
            self._ws = wsframe.server_frame(self.payload)
        return self._ws

    def sse(self) -> bytes:
        if self._sse is None:
            head = b"id: " + self.event_id.encode() + b"\n" if self.event_id else b""
            self._sse = head + b"data: " + self.payload + b"\n\n"
        return self._sse

    def sse_chunk(self) -> bytes:
        """The SSE event as one HTTP/1.1 chunk, for streams with chunked transfer encoding."""
        if self._sse_chunk is None:
            self._sse_chunk = chunk(self.sse())
        return self._sse_chunk


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked HTTP/1.1 body (RFC 9112 §7.1)."""
    return b"%x\r\n" % len(data) + data + b"\r\n"


def message_outgoing(pub: Publication) -> Outgoing:
    """The frame of one publication, for every transport."""
    payload = jsonwire.message_frame(pub.channel, pub.data, pub.offset, pub.epoch)
    return Outgoing(payload, f"{pub.epoch}:{pub.offset}")


class Connection(ABC):
    """A client connection as the hub and node see it; transports subclass it."""

    transport_name = "?"

    def __init__(self, conn_id: str, user: str | None, claims: dict[str, Any] | None = None) -> None:
        self.id = conn_id
        self.user = user
        self.claims = claims
        self.channels: set[str] = set()
        self.closed = False

    @abstractmethod
    def send(self, out: Outgoing) -> None:
        """Queue a frame without blocking. Hot path: must not encode, await or raise."""

    @abstractmethod
    def close(self, code: int, reason: str) -> None:
        """Start closing with ``code`` (see :class:`~pushgate.errors.CloseCode`); returns at once."""

    def send_payload(self, payload: bytes) -> None:
        self.send(Outgoing(payload))

    def flush(self) -> None:  # noqa: B027 - a no-op for transports that write at once
        """Write what :meth:`send` queued (transports that coalesce writes override this)."""


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
