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

Errors reaching Redis leave every public method as :class:`pushgate.errors.BrokerUnavailable`,
and so does a call that takes longer than the connection's ``timeout`` (``broker_timeout``):
a hung Redis costs a caller that long, never redis-py's retries times its socket timeout.

Publishing with an ``idempotency_key`` is checked and recorded inside the same script (key
``P:idem:{channel}:<key>``, PX = ``idempotency_window``), so a retry within the window returns
the first publication's position, cluster-wide, even when two retries race.

What arrives is checked before it reaches the node (:meth:`RedisBroker._on_message`): a
publication, user message or broadcast whose data is not UTF-8, or an envelope that does not
parse, was not written by pushgate (every door checks data) and would make every subscriber's
client fail its connection (RFC 6455 §8.1). It is dropped and counted (``dropped_messages``),
with one warning per topic per minute. A dropped publication leaves an offset gap that the node
fills from history, and history reads leave such entries out too (rule 7a of
:mod:`pushgate.backends.history`), so a recovering client never receives one either.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from typing import Final

from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import RedisClusterException

from pushgate.backends.broker import (
    BrokerHandler,
    ChannelEvent,
    HistoryOptions,
    HistoryResult,
    Publication,
    StreamPosition,
    UserMessage,
)
from pushgate.backends.idempotency import check_idempotency_key
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
from pushgate.backends.redis.pipe import PublishPipe
from pushgate.backends.redis.publishing import DEFAULT_MAX_IN_FLIGHT, PublishPath

__all__ = ["RedisBroker"]

log = logging.getLogger(__name__)

_CHANNEL: Final = 0
_USER: Final = 1
_BROADCAST: Final = 2

_TRANSLATED: Final = (*UNAVAILABLE_ERRORS, RedisClusterException)
_WARN_EVERY: Final = 60.0  # seconds between two warnings about dropped messages on one topic

class RedisBroker:
    """Broker over one Redis/Valkey server or cluster (see the module docstring).

    ``meta_ttl`` is how long a channel's epoch and offset outlive its last publication (at
    least its history ttl): while they live, offsets keep counting and old positions can be
    told apart from lost history. ``links`` tunes the pub/sub links (liveness pings, reconnect
    backoff, timeouts); ``start_timeout`` bounds how long :meth:`start` waits for them.
    ``idempotency_window`` is how long a publish ``idempotency_key`` is remembered. Every call
    is bounded by the connection's ``timeout`` (``RedisConnection(url, timeout=...)``).
    ``max_in_flight`` bounds the publications queued or awaiting Redis's reply per Redis
    connection (default :data:`~.publishing.DEFAULT_MAX_IN_FLIGHT`); beyond it publishers wait,
    in order, at most ``timeout``.
    """

    def __init__(
        self,
        url: str | RedisConnection,
        *,
        prefix: str = "pg",
        meta_ttl: float = 86400.0,
        links: LinkOptions | None = None,
        start_timeout: float = 10.0,
        idempotency_window: float = 120.0,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        self._conn = url if isinstance(url, RedisConnection) else RedisConnection(url)
        self._keys = Keys(prefix)
        self._meta_ttl_ms = millis(meta_ttl)
        self._idempotency_ms = millis(idempotency_window)
        self._link_options = links if links is not None else LinkOptions()
        self._start_timeout = start_timeout
        self._publish_cmd = "SPUBLISH" if self._conn.cluster else "PUBLISH"
        self._client: RedisClient | None = None
        self._publish_script: AsyncScript | None = None
        self._history_script: AsyncScript | None = None
        self._ack_script: AsyncScript | None = None
        self._rewound_script: AsyncScript | None = None
        self._handler: BrokerHandler | None = None
        self._routes: dict[bytes, tuple[int, str]] = {}
        self._links: LinkPool | None = None
        self._closed = False
        self._max_in_flight = max_in_flight
        self._publishing: PublishPath | None = None
        self._ttl_ms: dict[float, int] = {}  # history ttl seconds -> PX milliseconds (few distinct)
        #: messages that arrived invalid and were not handed to the node (see the module docstring)
        self.dropped_messages = 0
        self._warned: dict[bytes, float] = {}

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

    @property
    def publish_pipes(self) -> list[PublishPipe]:
        """The publish connections (one per Redis server / cluster primary), for metrics:
        ``name``, ``in_flight``, ``max_in_flight``, ``sent``, ``writes``. Empty until started."""
        return self._publishing.pipes if self._publishing is not None else []

    # --- lifecycle ----------------------------------------------------------------------------

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
        self._ack_script = client.register_script(scripts.ACK)
        self._rewound_script = client.register_script(scripts.RESET_IF_REWOUND)
        if isinstance(client, RedisCluster):
            try:
                await self._initialize(client)
            except BaseException:
                # Not started: give the shared client back, so a failed start leaks nothing.
                self._client = None
                await self._conn.release()
                raise
        self._publishing = PublishPath(
            self._conn, client, self._keys, self._publish_script, publish_cmd=self._publish_cmd,
            meta_ttl_ms=self._meta_ttl_ms, idempotency_ms=self._idempotency_ms, max_in_flight=self._max_in_flight,
            backoff_window=(self._link_options.backoff_min, self._link_options.backoff_max),
        )
        if handler is None:
            return
        self._links = LinkPool(
            self._conn, client, self._link_options, on_message=self._on_message, on_health=self._on_health
        )
        topic = self._keys.broadcast_topic
        self._routes[topic] = (_BROADCAST, "")
        if not await self._links.start([topic], self._start_timeout):
            log.warning("broker: Redis link not up after %.1fs; retrying in background", self._start_timeout)

    @translate_errors
    async def _initialize(self, client: RedisCluster) -> None:
        """Learn the cluster's slots, bounded by ``timeout`` (the link wait in :meth:`start` is
        bounded by ``start_timeout`` instead, and does not fail the start)."""
        await client.initialize()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        links, self._links = self._links, None
        if links is not None:
            await links.close()
        publishing, self._publishing = self._publishing, None
        if publishing is not None:
            await publishing.close()
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
        """Send the publication on its server's :class:`~.pipe.PublishPipe` and wait for its position.

        Publications are pipelined automatically: those issued in one loop iteration leave in
        one write per Redis server (per cluster primary), and later ones leave without waiting
        for earlier replies. One connection per server keeps the order of publish calls (so
        offsets follow it, even for one client's stream of publishes). Hot path: errors are
        translated here with a bare try/except, no wrapper (the pipe already raises
        BrokerUnavailable for connection trouble).

        The caller waits at most ``timeout`` (the pipe fails what it holds by then, with one
        timer per connection, not per call), then gets BrokerUnavailable even if Redis is hung.
        Such a publish may still be applied when Redis wakes up (its bytes are in the server's
        socket buffer); a retry with the same ``idempotency_key`` is then answered with that
        publication's position instead of publishing twice.
        """
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)
        path = self._publishing
        if path is None:
            raise RuntimeError("RedisBroker used before start() or after close()")
        ttl_ms = self._ttl_ms.get(options.ttl)
        if ttl_ms is None:
            if len(self._ttl_ms) >= 256:
                self._ttl_ms.clear()
            ttl_ms = self._ttl_ms[options.ttl] = millis(options.ttl) if options.ttl > 0 else 0
        try:
            return await path.publish(channel, data, max(0, options.size), ttl_ms, idempotency_key)
        except _TRANSLATED as exc:
            translated = unavailable(exc)
            if translated is None:
                raise
            raise translated from exc

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
        """Rules 6-8 in the HISTORY script; entries that are not UTF-8 are left out (rule 7a)."""
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
        pubs: list[Publication] = []
        for i, data in enumerate(entries):
            try:
                data.decode()
            except UnicodeDecodeError as exc:
                self._drop(self._keys.history(channel).encode(), "history entry", exc)
                continue
            pubs.append(Publication(channel=channel, data=data, offset=first + i, epoch=epoch))
        return HistoryResult(pubs, StreamPosition(epoch, int(offset)), bool(complete))

    async def position(self, channel: str) -> StreamPosition:
        return (await self.history(channel, limit=0)).position

    # --- acknowledged positions --------------------------------------------------------------

    @translate_errors
    async def ack(self, stream: str, position: StreamPosition, ttl: float) -> StreamPosition:
        """The rules of :meth:`pushgate.backends.broker.Broker.ack`, in one script (``ACK``) on
        the stream's slot: reading the epoch and offset and the compare-and-set of ``P:ack:{stream}``
        are one step, so two nodes acking at once cannot move it back."""
        epoch, offset = await self._script(self._ack_script)(
            keys=[self._keys.meta(stream), self._keys.history(stream), self._keys.ack(stream)],
            args=[
                secrets.token_hex(8),
                self._meta_ttl_ms,
                position.epoch,
                max(0, position.offset),
                millis(ttl) if ttl > 0 else 0,
            ],
        )
        return StreamPosition(epoch.decode(), int(offset))

    @translate_errors
    async def reset_if_rewound(self, channel: str, seen: StreamPosition, data: bytes | None) -> StreamPosition | None:
        """The check and the new epoch in one script (``RESET_IF_REWOUND``) on the channel's slot."""
        reply = await self._script(self._rewound_script)(
            keys=[self._keys.meta(channel), self._keys.history(channel)],
            args=[seen.epoch, max(0, seen.offset), 0 if data is None else 1, b"" if data is None else data,
                  secrets.token_hex(8), self._meta_ttl_ms],
        )
        if not reply:
            return None
        epoch, offset = reply
        return StreamPosition(epoch.decode(), int(offset))

    @translate_errors
    async def acked(self, stream: str) -> StreamPosition | None:
        raw: bytes | None = await self._require_client().execute_command("GET", self._keys.ack(stream))
        if raw is None:
            return None
        offset, _, epoch = raw.decode().partition(":")
        return StreamPosition(epoch, int(offset))

    # --- incoming -----------------------------------------------------------------------------

    def _on_message(self, topic: bytes, payload: bytes) -> None:
        """Dispatch one pub/sub message. Hot path: one dict lookup, one split and one UTF-8
        decode of the data per publication (once per node, not per subscriber; about 2 µs for
        60 KB of ASCII); anything that does not parse or is not UTF-8 is dropped (module docstring)."""
        route = self._routes.get(topic)
        handler = self._handler
        if route is None or handler is None:
            return  # unsubscribed meanwhile: "only if subscribed"
        kind, name = route
        if kind == _CHANNEL:
            if payload and payload[0] == PUBLICATION_TAG:
                try:
                    head, epoch, data = payload[1:].split(b":", 2)
                    data.decode()
                    pub = Publication(name, data, int(head), epoch.decode())
                except ValueError as exc:  # a short split, a bad int, UnicodeDecodeError
                    self._drop(topic, "publication", exc)
                    return
                handler.on_publication(pub)
            else:
                try:
                    event = decode_event(name, payload)
                except ValueError as exc:
                    self._drop(topic, "channel event", exc)
                    return
                if event is not None:
                    handler.on_channel_event(event)
        elif kind == _USER:
            try:
                message = decode_user_message(payload)
                message.data.decode()
            except ValueError as exc:  # msgspec.DecodeError is a ValueError too
                self._drop(topic, "user message", exc)
                return
            handler.on_user_message(name, message)
        else:
            try:
                payload.decode()
            except ValueError as exc:
                self._drop(topic, "broadcast", exc)
                return
            handler.on_broadcast(payload)

    def _drop(self, topic: bytes, what: str, exc: Exception) -> None:
        """Count an invalid message; warn at most once per topic per minute, without a traceback
        (whoever writes garbage into Redis must not be able to flood the log)."""
        self.dropped_messages += 1
        now = time.monotonic()
        warned = self._warned
        last = warned.get(topic)
        if last is not None and now - last < _WARN_EVERY:
            return
        if len(warned) >= 1024:
            warned.clear()  # bounded; at worst a few extra warnings
        warned[topic] = now
        log.warning(
            "broker: dropped an invalid %s on %s (%s: %s); %d dropped in all, next warning for this topic in %ds",
            what, topic.decode(errors="replace"), type(exc).__name__, exc, self.dropped_messages, _WARN_EVERY,
        )

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
