"""Redis/Valkey presence: exact, cluster-wide, and self-cleaning when a node dies.

Every entry is stored per node (see the key layout in :mod:`.keys`):
a node's connections and user counts in hashes tagged with the node id, and its members of a
channel in ``P:pres:{channel}:node``. Readers first ask which registered nodes are live (their
``alive`` key exists) and then read only those nodes' entries, so a dead node's users vanish
the moment its ``alive`` key expires, before anyone purges them.

The store keeps a mirror of this node's own entries. When a heartbeat finds this node's
``alive`` key gone (Redis lost its data, or others purged us after a long pause), it rewrites
everything from the mirror, so the node heals without help.

Multi-key work is done per slot (one Lua script per node's keys, pipelines elsewhere), so the
same code runs on a single server and on a cluster. Errors reaching Redis leave every public
method as :class:`pushgate.errors.BrokerUnavailable`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from pushgate.backends.presence import ChannelPresence, NodeInfo, OnlineCounts
from pushgate.backends.redis import scripts
from pushgate.backends.redis.connection import RedisClient, RedisConnection, millis, translate_errors
from pushgate.backends.redis.envelope import decode_user, encode_user
from pushgate.backends.redis.keys import Keys

__all__ = ["RedisPresenceStore"]

log = logging.getLogger(__name__)

_HMGET_CHUNK = 1000
"""Users asked of one node's hash per HMGET: keeps each command's reply bounded."""


class RedisPresenceStore:
    """Presence over one Redis/Valkey server or cluster (see the module docstring).

    ``node_ttl`` is how long a node counts as live after its last :meth:`heartbeat`; the node
    must heartbeat at least every ``node_ttl / 3`` seconds.
    """

    def __init__(self, url: str | RedisConnection, *, prefix: str = "pg", node_ttl: float = 10.0) -> None:
        self._conn = url if isinstance(url, RedisConnection) else RedisConnection(url)
        self._keys = Keys(prefix)
        self._node_ttl_ms = millis(node_ttl)
        self._node = ""
        self._client: RedisClient | None = None
        self._add: AsyncScript | None = None
        self._remove: AsyncScript | None = None
        self._conns: dict[str, str | None] = {}
        self._channels: dict[str, dict[str, str | None]] = {}
        self._beats = 0
        self._lock = asyncio.Lock()

    @property
    def node_id(self) -> str:
        return self._node

    # --- lifecycle ----------------------------------------------------------------------------

    @translate_errors
    async def start(self, node_id: str) -> None:
        """Register ``node_id``, dropping whatever a crashed process with the same id left."""
        self._node = node_id
        client = self._client = self._conn.acquire()
        self._add = client.register_script(scripts.PRESENCE_ADD)
        self._remove = client.register_script(scripts.PRESENCE_REMOVE)
        try:
            if isinstance(client, RedisCluster):
                await client.initialize()
            await self._delete_node(node_id)
            await self._heartbeat()
        except BaseException:
            # Not started: give the shared client back, so a failed start leaks nothing.
            self._client = None
            await self._conn.release()
            raise

    @translate_errors
    async def close(self) -> None:
        if self._client is None:
            return
        try:
            await self._cmd("DEL", self._keys.alive(self._node))
            await self._cmd("SREM", self._keys.nodes, self._node)
            await self._delete_node(self._node)
        finally:
            self._conns.clear()
            self._channels.clear()
            self._client = None
            await self._conn.release()

    @translate_errors
    async def heartbeat(self) -> None:
        await self._heartbeat()

    async def _heartbeat(self) -> None:
        keys = self._keys
        pipe = self._require().pipeline(transaction=False)
        pipe.execute_command("SET", keys.alive(self._node), b"1", "PX", self._node_ttl_ms, "GET")
        pipe.execute_command("SADD", keys.nodes, self._node)
        previous, added = await pipe.execute()
        self._beats += 1
        if self._beats > 1 and (previous is None or added):
            # Our alive key lapsed or we were deregistered: Redis lost data or another node
            # purged us. Our entries cannot be trusted any more; write them again.
            log.warning("presence: node %s lost its registration; rewriting its entries", self._node)
            await self._rewrite()

    # --- connections and channels -------------------------------------------------------------

    @translate_errors
    async def add_connection(self, conn_id: str, user: str | None) -> None:
        self._conns[conn_id] = user
        keys = self._keys
        await self._script(self._add)(
            keys=[keys.node_conns(self._node), keys.node_users(self._node)], args=[conn_id, encode_user(user)]
        )

    @translate_errors
    async def remove_connection(self, conn_id: str, user: str | None) -> None:
        self._conns.pop(conn_id, None)
        keys = self._keys
        await self._script(self._remove)(
            keys=[keys.node_conns(self._node), keys.node_users(self._node)], args=[conn_id]
        )

    @translate_errors
    async def join(self, channel: str, conn_id: str, user: str | None) -> None:
        self._channels.setdefault(channel, {})[conn_id] = user
        keys = self._keys
        pipe = self._require().pipeline(transaction=False)
        pipe.execute_command("HSET", keys.presence(channel, self._node), conn_id, encode_user(user))
        pipe.execute_command("SADD", keys.node_channels(self._node), channel)
        await pipe.execute()

    @translate_errors
    async def leave(self, channel: str, conn_id: str) -> None:
        members = self._channels.get(channel)
        if members is not None:
            members.pop(conn_id, None)
            if not members:
                del self._channels[channel]
        keys = self._keys
        pres = keys.presence(channel, self._node)
        pipe = self._require().pipeline(transaction=False)
        pipe.execute_command("HDEL", pres, conn_id)
        pipe.execute_command("EXISTS", pres)
        _, exists = await pipe.execute()
        if exists:
            return
        # The node's last member left: forget the channel in the node's set. A concurrent join
        # writes its member before adding the channel, so re-check after removing and put the
        # channel back if a member appeared meanwhile.
        await self._cmd("SREM", keys.node_channels(self._node), channel)
        if await self._cmd("EXISTS", pres):
            await self._cmd("SADD", keys.node_channels(self._node), channel)

    # --- reading ------------------------------------------------------------------------------

    @translate_errors
    async def presence(self, channel: str) -> ChannelPresence:
        live = await self.nodes()
        if not live:
            return ChannelPresence(channel=channel, users=[], connections=0)
        pipe = self._require().pipeline(transaction=False)
        for node in live:
            pipe.execute_command("HVALS", self._keys.presence(channel, node))
        results: list[list[bytes]] = await pipe.execute()
        users: set[str] = set()
        connections = 0
        for values in results:
            connections += len(values)
            users.update(u for u in map(decode_user, values) if u is not None)
        return ChannelPresence(channel=channel, users=sorted(users), connections=connections)

    @translate_errors
    async def online(self) -> OnlineCounts:
        live = await self.nodes()
        if not live:
            return OnlineCounts(connections=0, users=0, nodes={})
        pipe = self._require().pipeline(transaction=False)
        for node in live:
            pipe.execute_command("HLEN", self._keys.node_conns(node))
            pipe.execute_command("HKEYS", self._keys.node_users(node))
        results: list[Any] = await pipe.execute()
        nodes: dict[str, NodeInfo] = {}
        all_users: set[bytes] = set()
        total = 0
        for i, node in enumerate(live):
            conns, users = int(results[2 * i]), results[2 * i + 1]
            total += conns
            all_users.update(users)
            nodes[node] = NodeInfo(node=node, connections=conns, users=len(users))
        return OnlineCounts(connections=total, users=len(all_users), nodes=nodes)

    @translate_errors
    async def user_connections(self, users: Sequence[str]) -> dict[str, int]:
        """Two round trips whatever the number of nodes and users: the registered nodes, then
        one pipeline asking each node whether it is alive and reading its ``users`` hash with
        HMGET (at most ``_HMGET_CHUNK`` fields per command); a node that is not alive is left
        out of the sum, so a dead node's users stop counting at once, as in :meth:`presence`."""
        wanted = list(dict.fromkeys(users))
        counts = dict.fromkeys(wanted, 0)
        if not wanted:
            return counts
        registered = await self._registered()
        if not registered:
            return counts
        chunks = [wanted[i : i + _HMGET_CHUNK] for i in range(0, len(wanted), _HMGET_CHUNK)]
        pipe = self._require().pipeline(transaction=False)
        for node in registered:
            pipe.execute_command("EXISTS", self._keys.alive(node))
            for chunk in chunks:
                pipe.execute_command("HMGET", self._keys.node_users(node), *chunk)
        results: list[Any] = await pipe.execute()
        step = 1 + len(chunks)
        for i in range(len(registered)):
            if not results[i * step]:
                continue  # not alive: its entries do not count
            for chunk, values in zip(chunks, results[i * step + 1 : (i + 1) * step], strict=True):
                for user, value in zip(chunk, values, strict=True):
                    if value is not None:
                        counts[user] += max(0, int(value))
        return counts

    @translate_errors
    async def nodes(self) -> list[str]:
        registered = await self._registered()
        alive = await self._alive(registered)
        return sorted(node for node, ok in zip(registered, alive, strict=True) if ok)

    # --- repair -------------------------------------------------------------------------------

    @translate_errors
    async def purge_dead_nodes(self) -> list[str]:
        registered = await self._registered()
        alive = await self._alive(registered)
        dead = sorted(node for node, ok in zip(registered, alive, strict=True) if not ok)
        for node in dead:
            await self._cmd("SREM", self._keys.nodes, node)
            await self._delete_node(node)
            if await self._cmd("EXISTS", self._keys.alive(node)):
                # It heartbeated while we purged it: delete its alive key too, so its next
                # heartbeat notices and rewrites what we just deleted.
                await self._cmd("DEL", self._keys.alive(node))
        return dead

    @translate_errors
    async def resync(self, connections: dict[str, str | None], channels: dict[str, dict[str, str | None]]) -> None:
        self._conns = dict(connections)
        self._channels = {ch: dict(members) for ch, members in channels.items() if members}
        await self._rewrite()

    async def _rewrite(self) -> None:
        """Replace this node's entries in Redis with the mirror (serialized: one at a time)."""
        async with self._lock:
            keys, node = self._keys, self._node
            await self._delete_node(node)
            pipe = self._require().pipeline(transaction=False)
            if self._conns:
                counts: dict[str, int] = {}
                flat: list[str | int] = []
                for user in self._conns.values():
                    if user is not None:
                        counts[user] = counts.get(user, 0) + 1
                pipe.hset(keys.node_conns(node), mapping={c: encode_user(u) for c, u in self._conns.items()})
                if counts:
                    for user, count in counts.items():
                        flat += (user, count)
                    pipe.execute_command("HSET", keys.node_users(node), *flat)
            for channel, members in self._channels.items():
                pipe.hset(keys.presence(channel, node), mapping={c: encode_user(u) for c, u in members.items()})
            if self._channels:
                pipe.execute_command("SADD", keys.node_channels(node), *self._channels)
            pipe.execute_command("SET", keys.alive(node), b"1", "PX", self._node_ttl_ms)
            pipe.execute_command("SADD", keys.nodes, node)
            await pipe.execute()

    async def _delete_node(self, node: str) -> None:
        keys = self._keys
        channels: list[bytes] = await self._cmd("SMEMBERS", keys.node_channels(node))
        pipe = self._require().pipeline(transaction=False)
        for channel in channels:
            pipe.execute_command("DEL", keys.presence(channel.decode(), node))
        for key in (keys.node_conns(node), keys.node_users(node), keys.node_channels(node)):
            pipe.execute_command("DEL", key)
        await pipe.execute()

    # --- helpers ------------------------------------------------------------------------------

    async def _registered(self) -> list[str]:
        members: Iterable[bytes] = await self._cmd("SMEMBERS", self._keys.nodes)
        return sorted(m.decode() for m in members)

    async def _alive(self, nodes: list[str]) -> list[bool]:
        if not nodes:
            return []
        pipe = self._require().pipeline(transaction=False)
        for node in nodes:
            pipe.execute_command("EXISTS", self._keys.alive(node))
        return [bool(r) for r in await pipe.execute()]

    async def _cmd(self, *args: Any) -> Any:
        return await self._require().execute_command(*args)

    def _require(self) -> RedisClient:
        if self._client is None:
            raise RuntimeError("RedisPresenceStore used before start() or after close()")
        return self._client

    def _script(self, script: AsyncScript | None) -> AsyncScript:
        if script is None:
            raise RuntimeError("RedisPresenceStore used before start() or after close()")
        return script
