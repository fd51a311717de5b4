"""Single-node presence: exact counts for one process, which is always live.

The embedded default and the reference the conformance suite holds the Redis store to.
"""

from __future__ import annotations

from collections.abc import Sequence

from pushgate.backends.presence import ChannelPresence, NodeInfo, OnlineCounts

__all__ = ["MemoryPresenceStore"]


class MemoryPresenceStore:
    """Exact presence for one node: the node is always live, nothing ever needs purging."""

    def __init__(self) -> None:
        self._node = ""
        self._connections: dict[str, str | None] = {}
        self._channels: dict[str, dict[str, str | None]] = {}
        self._per_user: dict[str, int] = {}  # user -> connections, kept with _connections

    async def start(self, node_id: str) -> None:
        self._node = node_id

    async def close(self) -> None:
        self._connections.clear()
        self._channels.clear()
        self._per_user.clear()

    async def heartbeat(self) -> None:
        return None

    async def add_connection(self, conn_id: str, user: str | None) -> None:
        if conn_id in self._connections:
            self._uncount(self._connections[conn_id])
        self._connections[conn_id] = user
        if user is not None:
            self._per_user[user] = self._per_user.get(user, 0) + 1

    async def remove_connection(self, conn_id: str, user: str | None) -> None:
        if conn_id in self._connections:
            self._uncount(self._connections.pop(conn_id))  # the stored user, not the caller's

    def _uncount(self, user: str | None) -> None:
        if user is None:
            return
        left = self._per_user.get(user, 0) - 1
        if left > 0:
            self._per_user[user] = left
        else:
            self._per_user.pop(user, None)

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

    async def user_connections(self, users: Sequence[str]) -> dict[str, int]:
        per_user = self._per_user
        return {user: per_user.get(user, 0) for user in users}

    async def nodes(self) -> list[str]:
        return [self._node]

    async def purge_dead_nodes(self) -> list[str]:
        return []

    async def resync(self, connections: dict[str, str | None], channels: dict[str, dict[str, str | None]]) -> None:
        self._connections = dict(connections)
        self._per_user = {}
        for user in connections.values():
            if user is not None:
                self._per_user[user] = self._per_user.get(user, 0) + 1
        self._channels = {ch: dict(members) for ch, members in channels.items() if members}
