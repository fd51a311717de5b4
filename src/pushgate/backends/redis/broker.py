"""Redis/Valkey broker: the data path. History in lists, fan-out by (sharded) pub/sub.

Publishing is one Lua script per publication (:data:`.scripts.PUBLISH`): it increments the
channel's offset, creates the epoch when the channel's meta key is missing (lost keys mean a new
epoch, so stale positions are detected), appends to the bounded history list and publishes the
envelope, all atomically; the rules are those of :mod:`pushgate.backends.history`. In a cluster
every key of one channel and its topic carry the hash tag ``{channel}``, so the script runs on
one shard and SPUBLISH stays on that shard.

Incoming traffic arrives on pub/sub links that this module does not manage: the
:class:`~.links.LinkPool` decides which link carries which topic and reports their health; the
broker only keeps ``topic -> (kind, name)`` routes to dispatch what arrives (:meth:`_on_message`).

A broker started with ``start(None)`` is publish-only (what :class:`pushgate.Publisher` uses):
it opens no pub/sub connection at all, only the shared command client.

Errors reaching Redis leave every public method as :class:`pushgate.errors.BrokerUnavailable`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Sequence
from typing import Any, Final

from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisClusterException

from pushgate.backends.broker import (
    BrokerHandler,
    ChannelEvent,
    HistoryOptions,
    HistoryResult,
    Publication,
    StreamPosition,
    UserMessage,
)
from pushgate.backends.redis import scripts
from pushgate.backends.redis.connection import (
    UNAVAILABLE_ERRORS,
    RedisClient,
    RedisConnection,
    millis,
    translate_errors,
    unavailable,
)
from pushgate.backends.redis.envelope import (
    PUBLICATION_TAG,
    decode_event,
    decode_user_message,
    encode_event,
    encode_user_message,
)
from pushgate.backends.redis.keys import Keys
from pushgate.backends.redis.link import LinkOptions
from pushgate.backends.redis.links import LinkPool

__all__ = ["RedisBroker"]

log = logging.getLogger(__name__)

_CHANNEL: Final = 0
_USER: Final = 1
_BROADCAST: Final = 2

_TRANSLATED: Final = (*UNAVAILABLE_ERRORS, RedisClusterException)


class RedisBroker:
    """Broker over one Redis/Valkey server or cluster (see the module docstring).

    ``meta_ttl`` is how long a channel's epoch and offset outlive its last publication (at
    least its history ttl): while they live, offsets keep counting and old positions can be
    told apart from lost history. ``links`` tunes the pub/sub links (liveness pings, reconnect
    backoff, timeouts); ``start_timeout`` bounds how long :meth:`start` waits for them.
    """

    def __init__(
        self,
        url: str | RedisConnection,
        *,
        prefix: str = "pg",
        meta_ttl: float = 86400.0,
        links: LinkOptions | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        self._conn = url if isinstance(url, RedisConnection) else RedisConnection(url)
        self._keys = Keys(prefix)
        self._meta_ttl_ms = millis(meta_ttl)
        self._link_options = links if links is not None else LinkOptions()
        self._start_timeout = start_timeout
        self._publish_cmd = "SPUBLISH" if self._conn.cluster else "PUBLISH"
        self._client: RedisClient | None = None
        self._publish_script: AsyncScript | None = None
        self._history_script: AsyncScript | None = None
        self._handler: BrokerHandler | None = None
        self._routes: dict[bytes, tuple[int, str]] = {}
        self._links: LinkPool | None = None
        self._closed = False
        self._publish_queue: list[tuple[tuple[list[Any], list[Any]], asyncio.Future[StreamPosition]]] = []
        self._flusher: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        """The links' health; a publish-only broker is healthy while started (it has no link,
        and a failing command raises BrokerUnavailable on its own)."""
        if self._links is None:
            return self._client is not None
        return self._links.healthy

    @property
    def link_options(self) -> LinkOptions:
        return self._link_options

    # --- lifecycle ----------------------------------------------------------------------------

    @translate_errors
    async def start(self, handler: BrokerHandler | None) -> None:
        """Connect; with a handler also subscribe the broadcast topic and wait (bounded) for the link.

        If Redis is unreachable, start returns anyway with ``healthy`` False (after telling the
        handler ``on_link_state(False)``); the link keeps retrying in the background. With
        ``handler=None`` only the command client is made (publish-only, no pub/sub connection).
        """
        self._handler = handler
        client = self._client = self._conn.acquire()
        self._publish_script = client.register_script(scripts.PUBLISH)
        self._history_script = client.register_script(scripts.HISTORY)
        if isinstance(client, RedisCluster):
            try:
                await client.initialize()
            except BaseException:
                # Not started: give the shared client back, so a failed start leaks nothing.
                self._client = None
                await self._conn.release()
                raise
        if handler is None:
            return
        self._links = LinkPool(
            self._conn, client, self._link_options, on_message=self._on_message, on_health=self._on_health
        )
        topic = self._keys.broadcast_topic
        self._routes[topic] = (_BROADCAST, "")
        if not await self._links.start([topic], self._start_timeout):
            log.warning("broker: Redis link not up after %.1fs; retrying in background", self._start_timeout)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        links, self._links = self._links, None
        if links is not None:
            await links.close()
        self._routes.clear()
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
        if self._links is None:
            raise RuntimeError("RedisBroker: subscribe needs start(handler); this broker is publish-only or closed")
        self._routes[topic] = (kind, name)
        await self._links.add(topic)

    async def _remove_route(self, topic: bytes) -> None:
        if self._routes.pop(topic, None) is None or self._links is None:
            return
        await self._links.remove(topic)

    # --- publishing ---------------------------------------------------------------------------

    async def publish(
        self, channel: str, data: bytes, options: HistoryOptions, *, idempotency_key: str | None = None
    ) -> StreamPosition:
        """Queue the publication for the next pipelined flush and wait for its position.

        Publications are batched automatically: everything published while a flush is in
        flight goes out in the next one, as one pipeline of EVALSHA calls on one connection. That
        keeps the order of publish calls (so offsets follow it, even for one client's stream of
        publishes) and turns N round trips into one under load, while a lone publish still goes
        out at once. Hot path: errors are translated here with a bare try/except, no wrapper.
        """
        fut: asyncio.Future[StreamPosition] = asyncio.get_running_loop().create_future()
        self._publish_queue.append((self._publish_args(channel, data, options), fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_publishes())
        try:
            return await fut
        except _TRANSLATED as exc:
            translated = unavailable(exc)
            if translated is None:
                raise
            raise translated from exc

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
            await client.script_load(scripts.PUBLISH)
        return results

    @translate_errors
    async def publish_event(self, event: ChannelEvent) -> None:
        await self._require_client().execute_command(
            self._publish_cmd, self._keys.channel_topic(event.channel), encode_event(event)
        )

    @translate_errors
    async def send_to_users(self, users: Sequence[str], message: UserMessage) -> None:
        if not users:
            return
        payload = encode_user_message(message)  # encoded once for every recipient
        pipe = self._require_client().pipeline(transaction=False)
        for user in dict.fromkeys(users):
            pipe.execute_command(self._publish_cmd, self._keys.user_topic(user), payload)
        await pipe.execute()

    @translate_errors
    async def broadcast(self, data: bytes) -> None:
        await self._require_client().execute_command(self._publish_cmd, self._keys.broadcast_topic, data)

    # --- history ------------------------------------------------------------------------------

    @translate_errors
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

    def _on_health(self, up: bool) -> None:
        handler = self._handler
        if handler is not None and not self._closed:
            try:
                handler.on_link_state(up)
            except Exception:
                log.exception("broker: on_link_state handler failed")

    # --- helpers ------------------------------------------------------------------------------

    def _require_client(self) -> RedisClient:
        if self._client is None:
            raise RuntimeError("RedisBroker used before start() or after close()")
        return self._client

    def _script(self, script: AsyncScript | None) -> AsyncScript:
        if script is None:
            raise RuntimeError("RedisBroker used before start() or after close()")
        return script
