"""Redis/Valkey broker: history in lists, fan-out by pub/sub (sharded pub/sub on a cluster).

Publishing is one Lua script per publication: it increments the channel's offset, creates the
epoch when the channel's meta key is missing (lost keys mean a new epoch, so stale positions are
detected), appends to the bounded history list and publishes the envelope, all atomically. In
a cluster every key of one channel and its topic carry the hash tag ``{channel}``, so the script
runs on one shard and SPUBLISH stays on that shard.

redis-py 8.1 does have a sharded ``ClusterPubSub``, but it polls its per-node connections
round-robin and, like plain ``PubSub``, reconnects and resubscribes silently. This broker needs
to know when its link dropped (to report ``on_link_state`` and let the node recover from
history), so it keeps its own :class:`~pushgate.backends.redis_pubsub.PubSubLink` per server, or
per cluster primary, and maps each topic to the primary that owns its slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Sequence
from typing import Any, Final

from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.crc import key_slot
from redis.exceptions import NoScriptError

from pushgate.backends.broker import (
    BrokerHandler,
    ChannelEvent,
    HistoryOptions,
    HistoryResult,
    Publication,
    StreamPosition,
    UserMessage,
)
from pushgate.backends.redis_common import (
    PUBLICATION_TAG,
    Keys,
    RedisClient,
    RedisConnection,
    decode_event,
    decode_user_message,
    encode_event,
    encode_user_message,
    millis,
)
from pushgate.backends.redis_pubsub import PubSubLink

__all__ = ["RedisBroker"]

log = logging.getLogger(__name__)

_CHANNEL: Final = 0
_USER: Final = 1
_BROADCAST: Final = 2

# KEYS: meta, history. ARGV: data, size, ttl ms, meta ttl ms, candidate epoch, topic, publish cmd.
_PUBLISH_LUA = """
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[5]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch)
end
local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
local size = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
if size > 0 and ttl > 0 then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  redis.call('LTRIM', KEYS[2], -size, -1)
  redis.call('PEXPIRE', KEYS[2], ttl)
else
  redis.call('DEL', KEYS[2])
end
local meta_ttl = tonumber(ARGV[4])
if ttl > meta_ttl then meta_ttl = ttl end
redis.call('PEXPIRE', KEYS[1], meta_ttl)
redis.call(ARGV[7], ARGV[6], 'P' .. offset .. ':' .. epoch .. ':' .. ARGV[1])
return {epoch, offset}
"""

# The history list always holds a contiguous run of offsets ending at the meta offset (every
# publish appends or deletes it, and the meta key outlives it), so list index i holds offset
# ``oldest + i``. KEYS: meta, history. ARGV: candidate epoch, meta ttl ms, has since (0/1),
# since epoch, since offset, limit (-1 = all). Returns {epoch, offset, complete, first, entries}.
_HISTORY_LUA = """
local epoch = redis.call('HGET', KEYS[1], 'e')
local offset = 0
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  offset = tonumber(redis.call('HGET', KEYS[1], 'o') or '0')
end
local llen = redis.call('LLEN', KEYS[2])
local oldest = offset - llen + 1
local limit = tonumber(ARGV[6])
local complete = 1
local first = 0
if ARGV[3] == '1' then
  local since = tonumber(ARGV[5])
  if ARGV[4] == epoch and since <= offset and since >= oldest - 1 then
    first = since + 1 - oldest
  else
    complete = 0
  end
elseif limit >= 0 and limit < llen then
  first = llen - limit
end
local last = llen - 1
if limit >= 0 and first + limit - 1 < last then last = first + limit - 1 end
local entries = {}
if first <= last then entries = redis.call('LRANGE', KEYS[2], first, last) end
return {epoch, offset, complete, oldest + first, entries}
"""


class RedisBroker:
    """Broker over one Redis/Valkey server or cluster (see the module docstring).

    ``meta_ttl`` is how long a channel's epoch and offset outlive its last publication (at
    least its history ttl): while they live, offsets keep counting and old positions can be
    told apart from lost history. ``ping_interval``/``ping_timeout`` detect a silently dead
    pub/sub link; ``backoff_min``/``backoff_max`` bound the reconnect delays.
    """

    def __init__(
        self,
        url: str | RedisConnection,
        *,
        prefix: str = "pg",
        meta_ttl: float = 86400.0,
        ping_interval: float = 5.0,
        ping_timeout: float = 3.0,
        backoff_min: float = 0.1,
        backoff_max: float = 5.0,
        confirm_timeout: float = 5.0,
        start_timeout: float = 10.0,
    ) -> None:
        self._conn = url if isinstance(url, RedisConnection) else RedisConnection(url)
        self._keys = Keys(prefix)
        self._meta_ttl_ms = millis(meta_ttl)
        self._link_opts: dict[str, Any] = {
            "ping_interval": ping_interval,
            "ping_timeout": ping_timeout,
            "backoff_min": backoff_min,
            "backoff_max": backoff_max,
            "confirm_timeout": confirm_timeout,
            "connect_timeout": self._conn.connect_timeout,
        }
        self._start_timeout = start_timeout
        self._publish_cmd = "SPUBLISH" if self._conn.cluster else "PUBLISH"
        self._client: RedisClient | None = None
        self._publish_script: AsyncScript | None = None
        self._history_script: AsyncScript | None = None
        self._handler: BrokerHandler | None = None
        self._routes: dict[bytes, tuple[int, str]] = {}
        self._links: dict[str, PubSubLink] = {}
        self._healthy = False
        self._announce = False
        self._up_event = asyncio.Event()
        self._rebalance_task: asyncio.Task[None] | None = None
        self._rebalance_again = False
        self._orphans: set[bytes] = set()
        self._moving = False
        self._closed = False
        self._publish_queue: list[tuple[tuple[list[Any], list[Any]], asyncio.Future[StreamPosition]]] = []
        self._flusher: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        return self._healthy

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self, handler: BrokerHandler) -> None:
        """Connect, subscribe the broadcast topic and wait (bounded) until the link is up.

        If Redis is unreachable, start returns anyway with ``healthy`` False (after telling the
        handler ``on_link_state(False)``); the link keeps retrying in the background.
        """
        self._handler = handler
        client = self._client = self._conn.acquire()
        self._publish_script = client.register_script(_PUBLISH_LUA)
        self._history_script = client.register_script(_HISTORY_LUA)
        if isinstance(client, RedisCluster):
            await client.initialize()
        topic = self._keys.broadcast_topic
        self._routes[topic] = (_BROADCAST, "")
        await self._link_for(topic).add(topic, wait=False)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._up_event.wait(), self._start_timeout)
        self._announce = True
        if not self._healthy:
            log.warning("broker: Redis link not up after %.1fs; retrying in background", self._start_timeout)
            self._notify(False)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._announce = False
        if self._rebalance_task is not None:
            self._rebalance_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rebalance_task
        links, self._links = list(self._links.values()), {}
        await asyncio.gather(*(link.close() for link in links))
        self._routes.clear()
        self._healthy = False
        if self._client is not None:
            self._client = None
            await self._conn.release()

    # --- subscriptions ------------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        await self._add_route(self._keys.channel_topic(channel), _CHANNEL, channel)

    async def unsubscribe(self, channel: str) -> None:
        await self._remove_route(self._keys.channel_topic(channel))

    async def subscribe_user(self, user: str) -> None:
        await self._add_route(self._keys.user_topic(user), _USER, user)

    async def unsubscribe_user(self, user: str) -> None:
        await self._remove_route(self._keys.user_topic(user))

    async def _add_route(self, topic: bytes, kind: int, name: str) -> None:
        self._routes[topic] = (kind, name)
        await self._link_for(topic).add(topic)

    async def _remove_route(self, topic: bytes) -> None:
        if self._routes.pop(topic, None) is None:
            return
        for link in self._links.values():
            if topic in link.topics:
                await link.remove(topic)

    # --- publishing ---------------------------------------------------------------------------

    async def publish(self, channel: str, data: bytes, options: HistoryOptions) -> StreamPosition:
        """Queue the publication for the next pipelined flush and wait for its position.

        Publications are batched automatically: everything published while a flush is in
        flight goes out in the next one, as one pipeline of EVALSHA calls on one connection. That
        keeps the order of publish calls (so offsets follow it, even for one client's stream of
        publishes) and turns N round trips into one under load, while a lone publish still goes
        out at once.
        """
        fut: asyncio.Future[StreamPosition] = asyncio.get_running_loop().create_future()
        self._publish_queue.append((self._publish_args(channel, data, options), fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_publishes())
        return await fut

    def _publish_args(self, channel: str, data: bytes, options: HistoryOptions) -> tuple[list[Any], list[Any]]:
        keys = [self._keys.meta(channel), self._keys.history(channel)]
        args = [
            data,
            max(0, options.size),
            millis(options.ttl) if options.ttl > 0 else 0,
            self._meta_ttl_ms,
            secrets.token_hex(8),
            self._keys.channel_topic(channel),
            self._publish_cmd,
        ]
        return keys, args

    async def _flush_publishes(self) -> None:
        while self._publish_queue:
            batch, self._publish_queue = self._publish_queue, []
            try:
                results = await self._run_publish_batch([item for item, _ in batch])
            except Exception as exc:
                results = [exc] * len(batch)
            for (_, fut), result in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    epoch, offset = result
                    fut.set_result(StreamPosition(epoch.decode(), int(offset)))

    async def _run_publish_batch(self, batch: list[tuple[list[Any], list[Any]]]) -> list[Any]:
        script = self._script(self._publish_script)
        client = self._require_client()
        if len(batch) == 1 or isinstance(client, RedisCluster):
            # A cluster pipeline may spread commands over shards and connections; run them one
            # by one there so each channel's publications keep their order.
            out: list[Any] = []
            for keys, args in batch:
                try:
                    out.append(await script(keys=keys, args=args))
                except Exception as exc:
                    out.append(exc)
            return out
        for _attempt in range(2):
            pipe = client.pipeline(transaction=False)
            for keys, args in batch:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            results: list[Any] = await pipe.execute(raise_on_error=False)
            if not any(isinstance(r, NoScriptError) for r in results):
                return results
            # The script cache was flushed (e.g. a Redis restart): nothing ran; load and redo.
            await client.script_load(_PUBLISH_LUA)
        return results

    async def publish_event(self, event: ChannelEvent) -> None:
        await self._require_client().execute_command(
            self._publish_cmd, self._keys.channel_topic(event.channel), encode_event(event)
        )

    async def send_to_users(self, users: Sequence[str], message: UserMessage) -> None:
        if not users:
            return
        payload = encode_user_message(message)  # encoded once for every recipient
        pipe = self._require_client().pipeline(transaction=False)
        for user in dict.fromkeys(users):
            pipe.execute_command(self._publish_cmd, self._keys.user_topic(user), payload)
        await pipe.execute()

    async def broadcast(self, data: bytes) -> None:
        await self._require_client().execute_command(self._publish_cmd, self._keys.broadcast_topic, data)

    # --- history ------------------------------------------------------------------------------

    async def history(
        self, channel: str, *, since: StreamPosition | None = None, limit: int | None = None
    ) -> HistoryResult:
        script = self._script(self._history_script)
        epoch_raw, offset, complete, first, entries = await script(
            keys=[self._keys.meta(channel), self._keys.history(channel)],
            args=[
                secrets.token_hex(8),
                self._meta_ttl_ms,
                0 if since is None else 1,
                "" if since is None else since.epoch,
                0 if since is None else since.offset,
                -1 if limit is None else max(0, limit),
            ],
        )
        epoch = epoch_raw.decode()
        first = int(first)
        pubs = [
            Publication(channel=channel, data=data, offset=first + i, epoch=epoch) for i, data in enumerate(entries)
        ]
        return HistoryResult(pubs, StreamPosition(epoch, int(offset)), bool(complete))

    async def position(self, channel: str) -> StreamPosition:
        return (await self.history(channel, limit=0)).position

    # --- incoming -----------------------------------------------------------------------------

    def _on_message(self, topic: bytes, payload: bytes) -> None:
        route = self._routes.get(topic)
        handler = self._handler
        if route is None or handler is None:
            return  # unsubscribed meanwhile: "only if subscribed"
        kind, name = route
        if kind == _CHANNEL:
            if payload and payload[0] == PUBLICATION_TAG:
                head, epoch, data = payload[1:].split(b":", 2)
                handler.on_publication(Publication(name, data, int(head), epoch.decode()))
            else:
                event = decode_event(name, payload)
                if event is not None:
                    handler.on_channel_event(event)
        elif kind == _USER:
            handler.on_user_message(name, decode_user_message(payload))
        else:
            handler.on_broadcast(payload)

    # --- links --------------------------------------------------------------------------------

    def _link_for(self, topic: bytes) -> PubSubLink:
        client = self._require_client()
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
                lambda: self._conn.pubsub_connection(host, port),
                sharded=cluster,
                on_message=self._on_message,
                on_state=self._update_health,
                on_misrouted=self._on_misrouted if cluster else None,
                on_connect_failed=self._schedule_rebalance if cluster else None,
                **self._link_opts,
            )
            self._links[name] = link
            link.start()
        return link

    def _update_health(self) -> None:
        # A link making its first connection (a cluster shard we just started to use) is not a
        # loss: counting it as down would make the node refill every channel for nothing.
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
            self._notify(up)

    def _notify(self, up: bool) -> None:
        if self._announce and self._handler is not None and not self._closed:
            try:
                self._handler.on_link_state(up)
            except Exception:
                log.exception("broker: on_link_state handler failed")

    def _on_misrouted(self, topic: bytes) -> None:
        """A shard refused or dropped ``topic`` (its link already forgot it): find its new home."""
        if topic in self._routes:
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
        client = self._require_client()
        assert isinstance(client, RedisCluster)
        delay = 0.05
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
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _move_topics(self) -> None:
        moves: list[tuple[PubSubLink | None, PubSubLink, bytes]] = []
        for link in list(self._links.values()):
            for topic in list(link.topics):
                target = self._link_for(topic)
                if target is not link:
                    moves.append((link, target, topic))
        orphans = [t for t in self._orphans if t in self._routes]
        self._orphans.clear()
        moves += [(None, self._link_for(topic), topic) for topic in orphans]
        if not moves:
            return
        # Publications sent while a topic was between shards are lost: report a link loss, so
        # that once the topics are subscribed again the node fills the gaps from history.
        self._moving = True
        if self._healthy:
            self._healthy = False
            self._notify(False)
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

    # --- helpers ------------------------------------------------------------------------------

    def _require_client(self) -> RedisClient:
        if self._client is None:
            raise RuntimeError("RedisBroker used before start() or after close()")
        return self._client

    def _script(self, script: AsyncScript | None) -> AsyncScript:
        if script is None:
            raise RuntimeError("RedisBroker used before start() or after close()")
        return script
