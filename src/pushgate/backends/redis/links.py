"""The pub/sub topology of one broker: which link carries which topic, and whether all are up.

On a single server one :class:`~.link.PubSubLink` carries every topic. On a cluster, sharded
pub/sub (SSUBSCRIBE) only works on the primary that owns a topic's slot, so the pool keeps one
link per primary and sends each topic to the owner of its slot. redis-py 8.1's sharded
``ClusterPubSub`` would do the routing, but it polls its per-node connections round-robin and,
like plain ``PubSub``, reconnects and resubscribes silently; a push gateway must know when its
link dropped, because publications sent meanwhile are lost and must be filled from history.

Slots move (resharding, failover). A shard that no longer owns a topic refuses the SSUBSCRIBE
(MOVED) or drops it with an unsolicited SUNSUBSCRIBE, and a failed-over primary stops answering;
the links report that (``on_misrouted``, ``on_connect_failed``) and the pool refreshes the slot
map and moves the affected topics to their new owners (debounced, retried with the shared
backoff of :mod:`pushgate.backoff`). While topics are between shards publications can be lost,
so the pool reports itself unhealthy until they are subscribed again.

Health is the AND of every link being up, with one nuance: once announced, a link still making
its *first* connection (a shard we just started to use) counts as up, because nothing was lost
on it yet; counting it as down would make the node refill every channel for nothing.

Nothing here touches the message path: links hand messages straight to the broker's callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from pushgate.backends.redis.connection import RedisClient, RedisConnection
from pushgate.backends.redis.link import LinkOptions, PubSubLink
from pushgate.backoff import backoff

__all__ = ["LinkPool"]

log = logging.getLogger(__name__)

# Pauses between slot-map refreshes while a moved topic has no owner yet (gossip lags a moment).
_REBALANCE_WINDOW = (0.05, 2.0)


class LinkPool:
    """Pub/sub links of one broker, the topic -> link routing and their aggregated health.

    ``on_message(topic, payload)`` is given to every link as is (the hot path does not pass
    through the pool). ``on_health(up)`` is called on every change of :attr:`healthy` after
    :meth:`start` returned, and once with False from :meth:`start` when the links are not up in
    time.
    """

    def __init__(
        self,
        conn: RedisConnection,
        client: RedisClient,
        options: LinkOptions,
        *,
        on_message: Callable[[bytes, bytes], None],
        on_health: Callable[[bool], None],
    ) -> None:
        self._conn = conn
        self._client = client
        self._options = options
        self._on_message = on_message
        self._on_health = on_health
        self._links: dict[str, PubSubLink] = {}
        self._wanted: set[bytes] = set()
        self._healthy = False
        self._announce = False
        self._up_event = asyncio.Event()
        self._rebalance_task: asyncio.Task[None] | None = None
        self._rebalance_again = False
        self._orphans: set[bytes] = set()
        self._moving = False
        self._closed = False
        conn.add_failover_listener(self._check_primaries)
        conn.add_primary_listener(self._primary_moved)

    @property
    def healthy(self) -> bool:
        return self._healthy

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self, topics: Iterable[bytes], timeout: float) -> bool:
        """Subscribe ``topics``, wait (bounded) until every link is up, then start reporting.

        Returns :attr:`healthy`; when False the links keep retrying in the background and
        ``on_health(False)`` has been called.
        """
        for topic in topics:
            self._wanted.add(topic)
            await self._link_for(topic).add(topic, wait=False)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._up_event.wait(), timeout)
        self._announce = True
        if not self._healthy:
            self._report(False)
        return self._healthy

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._announce = False
        self._conn.remove_failover_listener(self._check_primaries)
        self._conn.remove_primary_listener(self._primary_moved)
        if self._rebalance_task is not None:
            self._rebalance_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rebalance_task
        links, self._links = list(self._links.values()), {}
        await asyncio.gather(*(link.close() for link in links))
        self._wanted.clear()
        self._healthy = False

    # --- topics -------------------------------------------------------------------------------

    async def add(self, topic: bytes, *, wait: bool = True) -> None:
        """Subscribe ``topic`` on the link that owns it (see :meth:`PubSubLink.add` for ``wait``)."""
        self._wanted.add(topic)
        await self._link_for(topic).add(topic, wait=wait)

    async def remove(self, topic: bytes) -> None:
        if topic not in self._wanted:
            return
        self._wanted.discard(topic)
        self._orphans.discard(topic)
        for link in list(self._links.values()):
            if topic in link.topics:
                await link.remove(topic)

    # --- routing ------------------------------------------------------------------------------

    def _link_for(self, topic: bytes) -> PubSubLink:
        client = self._client
        if isinstance(client, RedisCluster):
            node = client.nodes_manager.get_node_from_slot(key_slot(topic))
            return self._link(node.name, node.host, int(node.port))
        return self._link("redis", None, None)

    def _link(self, name: str, host: str | None, port: int | None) -> PubSubLink:
        link = self._links.get(name)
        if link is None:
            cluster = self._conn.cluster
            link = PubSubLink(
                name,
                lambda: self._conn.resolve(host, port),
                sharded=cluster,
                on_message=self._on_message,
                on_state=self._update_health,
                on_misrouted=self._on_misrouted if cluster else None,
                on_connect_failed=self._schedule_rebalance if cluster else self._conn.watch_primary,
                is_primary=self._conn.is_current_primary if self._conn.sentinel is not None else None,
                options=self._options,
            )
            self._links[name] = link
            link.start()
        return link

    def _primary_moved(self) -> None:
        """The sentinels name a new primary: links waiting to reconnect go at once."""
        for link in self._links.values():
            link.retry_now()

    def _check_primaries(self) -> None:
        """A sign of failover (the publish pipe got READONLY): every link checks its server now."""
        for link in self._links.values():
            link.check_primary()

    # --- health -------------------------------------------------------------------------------

    def _update_health(self) -> None:
        links = list(self._links.values())
        all_up = bool(links) and all(link.up for link in links)
        if all_up:
            self._up_event.set()
        else:
            self._up_event.clear()
        up = all_up
        if self._announce:
            up = bool(links) and all(link.up or link.pending for link in links) and not self._moving
        if up != self._healthy:
            self._healthy = up
            self._report(up)

    def _report(self, up: bool) -> None:
        if self._announce and not self._closed:
            self._on_health(up)

    # --- cluster rebalancing ------------------------------------------------------------------

    def _on_misrouted(self, topic: bytes) -> None:
        """A shard refused or dropped ``topic`` (its link already forgot it): find its new home."""
        if topic in self._wanted:
            self._orphans.add(topic)
        self._schedule_rebalance()

    def _schedule_rebalance(self) -> None:
        """Refresh the cluster's slot map and move topics whose slot changed owner (debounced)."""
        if self._closed:
            return
        if self._rebalance_task is not None and not self._rebalance_task.done():
            self._rebalance_again = True
            return
        self._rebalance_task = asyncio.create_task(self._rebalance(), name="pushgate-rebalance")

    async def _rebalance(self) -> None:
        client = self._client
        assert isinstance(client, RedisCluster)
        pauses = backoff(*_REBALANCE_WINDOW)
        while True:
            self._rebalance_again = False
            try:
                await client.nodes_manager.initialize()
            except Exception as exc:
                log.warning("broker: cannot refresh cluster slots: %r", exc)
                if not self._orphans:
                    return  # a failing link retries and asks again
            else:
                await self._move_topics()
            if not self._rebalance_again and not self._orphans:
                return
            # The slot map may lag behind the shard that dropped a topic (gossip takes a
            # moment): ask again after a growing pause instead of spinning.
            await asyncio.sleep(next(pauses))

    async def _move_topics(self) -> None:
        moves: list[tuple[PubSubLink | None, PubSubLink, bytes]] = []
        for link in list(self._links.values()):
            for topic in list(link.topics):
                target = self._link_for(topic)
                if target is not link:
                    moves.append((link, target, topic))
        orphans = [t for t in self._orphans if t in self._wanted]
        self._orphans.clear()
        moves += [(None, self._link_for(topic), topic) for topic in orphans]
        if not moves:
            return
        # Publications sent while a topic was between shards are lost: report a link loss, so
        # that once the topics are subscribed again the node fills the gaps from history.
        self._moving = True
        if self._healthy:
            self._healthy = False
            self._report(False)
        try:
            for source, _target, topic in moves:
                if source is not None:
                    await source.remove(topic)
            await asyncio.gather(*(target.add(topic) for _, target, topic in moves))
            for name, link in list(self._links.items()):
                if not link.topics:
                    del self._links[name]
                    await link.close()
        finally:
            self._moving = False
        self._update_health()
