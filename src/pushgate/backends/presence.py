"""The presence interface: who is connected and subscribed where, cluster-wide.

Memory (``presence_memory``) and Redis/Valkey (``redis/presence``) implement it; one conformance
suite runs over both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ChannelPresence:
    """Who is subscribed to a channel, cluster-wide."""

    channel: str
    users: list[str]  # distinct, sorted; anonymous connections are counted but not listed
    connections: int


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One live node and its local counts."""

    node: str
    connections: int
    users: int


@dataclass(frozen=True, slots=True)
class OnlineCounts:
    """Cluster-wide online figures: distinct users across all nodes, and per node."""

    connections: int
    users: int
    nodes: dict[str, NodeInfo] = field(default_factory=dict)


class PresenceStore(Protocol):
    """Who is connected and subscribed where, cluster-wide, exact even when a node dies.

    Connection ids are globally unique (they start with the node id). A node registers itself
    with :meth:`heartbeat` at least every ``node_ttl / 3`` seconds; entries of a node whose
    heartbeat lapsed stop counting at once and are purged by :meth:`purge_dead_nodes`.
    """

    async def start(self, node_id: str) -> None: ...

    async def close(self) -> None:
        """Clean shutdown: remove this node and all its entries at once."""

    async def heartbeat(self) -> None: ...

    async def add_connection(self, conn_id: str, user: str | None) -> None: ...

    async def remove_connection(self, conn_id: str, user: str | None) -> None: ...

    async def join(self, channel: str, conn_id: str, user: str | None) -> None: ...

    async def leave(self, channel: str, conn_id: str) -> None: ...

    async def presence(self, channel: str) -> ChannelPresence: ...

    async def online(self) -> OnlineCounts: ...

    async def user_connections(self, users: Sequence[str]) -> dict[str, int]:
        """How many connections each of ``users`` has right now, on all live nodes.

        Every requested user is a key (0 when not connected; duplicates count once). What
        ``/api/send`` reports as reached live; like the rest of presence, a dead node's
        connections stop counting as soon as its heartbeat lapses."""
        ...

    async def nodes(self) -> list[str]:
        """Ids of live nodes, sorted."""
        ...

    async def purge_dead_nodes(self) -> list[str]:
        """Remove every entry of nodes whose heartbeat lapsed; return their ids."""
        ...

    async def resync(
        self, connections: dict[str, str | None], channels: dict[str, dict[str, str | None]]
    ) -> None:
        """Re-register all of this node's entries (after a link loss or a purge by others).

        ``connections``: conn_id → user; ``channels``: channel → {conn_id: user}.
        """
