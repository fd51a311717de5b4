"""PublishPath: which :class:`~.pipe.PublishPipe` carries a publication, and the way around a
cluster slot that moved.

On a single server one pipe carries every publication. On a cluster a publication goes to the
pipe of the primary that owns its channel's slot (every key of a channel shares the hash tag
``{channel}``, see :mod:`.keys`), so one loop iteration's publications leave as one write per
primary, and a channel's publications keep their order because they all travel on one
connection.

Slots move (resharding, failover). The old owner answers MOVED/ASK/TRYAGAIN; redis-py's
cluster client knows how to follow that, so a redirected publication takes a *detour*: it is
sent again through redis-py (``EVALSHA`` with NOSCRIPT handled, MOVED/ASK followed). To keep
the channel's order the detour of a slot also takes every later publication to that slot, and
handles them only after every publication sent to the old owner before the detour began has
been answered (those may be redirected too, and must go first). When the detour is empty the
slot map has been refreshed and the slot returns to the fast path, on its new owner's pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from pushgate.backends.broker import StreamPosition
from pushgate.backends.redis import scripts
from pushgate.backends.redis.connection import RedisClient, RedisConnection, timed_out
from pushgate.backends.redis.keys import Keys
from pushgate.backends.redis.pipe import PendingPublish, PublishPipe
from pushgate.backends.redis.resp import PublishTemplates
from pushgate.errors import BrokerUnavailable

__all__ = ["DEFAULT_MAX_IN_FLIGHT", "PublishPath"]

log = logging.getLogger(__name__)

#: Publications queued or awaiting Redis's reply, per Redis connection (per cluster primary);
#: beyond it publishers wait (bounded by ``broker_timeout``). At 50k publications/s and a
#: 1 ms round trip about 50 are in flight; the bound is there for bursts and a slow Redis.
DEFAULT_MAX_IN_FLIGHT = 10_000

_SLOTS = 16384
_EPOCH_BATCH = 0x10000


class _Detour:
    """Publications of one slot taking the slow way (module docstring), in order."""

    def __init__(self, barrier: asyncio.Future[None]) -> None:
        self.barrier = barrier  # every publication sent to the old owner before us is answered
        self.redirected: deque[PendingPublish] = deque()  # in reply order = send order
        self.held: deque[PendingPublish] = deque()  # submitted after the detour began
        self.task: asyncio.Task[None] | None = None


class PublishPath:
    """Publications of one broker: templates, pipes, cluster routing and detours."""

    def __init__(
        self,
        conn: RedisConnection,
        client: RedisClient,
        keys: Keys,
        script: AsyncScript,
        *,
        publish_cmd: str,
        meta_ttl_ms: int,
        idempotency_ms: int,
        max_in_flight: int,
        backoff_window: tuple[float, float],
    ) -> None:
        self._conn = conn
        self._client = client
        self._keys = keys
        self._script = script
        self._publish_cmd = publish_cmd
        self._meta_ttl_ms = meta_ttl_ms
        self._idempotency_ms = idempotency_ms
        self._templates = PublishTemplates(keys, script.sha, publish_cmd, meta_ttl_ms, idempotency_ms)
        self._max_in_flight = max_in_flight
        self._window = backoff_window
        self._timeout = conn.timeout
        self._loop = asyncio.get_running_loop()
        self._cluster = client if isinstance(client, RedisCluster) else None
        self._pipes: dict[str, PublishPipe] = {}
        conn.add_primary_listener(self._primary_moved)
        self._single: PublishPipe | None = None
        if self._cluster is None:
            self._single = self._pipe("redis", None, None)
        self._slot_pipes: list[PublishPipe | None] = [None] * _SLOTS
        self._detours: dict[int, _Detour] = {}
        self._refreshing: asyncio.Task[None] | None = None
        self._epoch_head = b"$16\r\n" + secrets.token_hex(6).encode()
        self._epoch_seq = 0
        self._closed = False

    @property
    def pipes(self) -> list[PublishPipe]:
        return list(self._pipes.values())

    # --- the hot path ----------------------------------------------------------------------------

    async def publish(self, channel: str, data: bytes, size: int, ttl_ms: int, key: str | None) -> StreamPosition:
        """Send one publication; its position, or BrokerUnavailable / a redis-py error."""
        loop = self._loop
        cmd, slot = self._templates.encode(channel, data, size, ttl_ms, self._candidate_epoch(), key)
        fut: asyncio.Future[StreamPosition] = loop.create_future()
        entry = PendingPublish(fut, cmd, slot, loop.time(), channel, data, size, ttl_ms, key)
        if self._detours and slot in self._detours:
            self._detours[slot].held.append(entry)
        else:
            pipe = self._single or self._pipe_for(slot)
            if pipe.full:
                await pipe.wait_for_space(entry.t + self._timeout)
                detour = self._detours.get(slot)
                if detour is not None:  # began while we waited: go behind it
                    detour.held.append(entry)
                    return await fut
            pipe.submit(entry)
        return await fut

    def _candidate_epoch(self) -> bytes:
        """The epoch a publication creates if its channel's meta key is missing, as a RESP bulk.

        Unique per publication (a random base renewed every 65,536, and a counter), so a
        channel whose keys were lost never gets an epoch it had before; 16 hex digits like the
        ``token_hex(8)`` it replaces, for a fraction of the cost."""
        seq = self._epoch_seq = (self._epoch_seq + 1) % _EPOCH_BATCH
        if seq == 0:
            self._epoch_head = b"$16\r\n" + secrets.token_hex(6).encode()
        return b"%b%04x\r\n" % (self._epoch_head, seq)

    # --- pipes and cluster routing ---------------------------------------------------------------

    def _pipe(self, name: str, host: str | None, port: int | None) -> PublishPipe:
        pipe = self._pipes.get(name)
        if pipe is None:
            cluster = self._cluster is not None
            pipe = self._pipes[name] = PublishPipe(
                name,
                lambda: self._conn.resolve(host, port),
                script=scripts.PUBLISH,
                timeout=self._timeout,
                connect_timeout=self._conn.connect_timeout,
                max_in_flight=self._max_in_flight,
                backoff_window=self._window,
                on_redirect=self._redirected if cluster else None,
                on_unreachable=self._schedule_refresh if cluster else self._conn.watch_primary,
                on_readonly=self._conn.suspect_failover,
            )
        return pipe

    def _pipe_for(self, slot: int) -> PublishPipe:
        pipe = self._slot_pipes[slot]
        if pipe is None:
            assert self._cluster is not None
            node = self._cluster.nodes_manager.get_node_from_slot(slot)  # SlotNotCoveredError: translated
            pipe = self._slot_pipes[slot] = self._pipe(node.name, node.host, int(node.port))
        return pipe

    def _schedule_refresh(self) -> None:
        """A primary could not be reached: it may have failed over. Refresh the slot map once."""
        if self._closed or (self._refreshing is not None and not self._refreshing.done()):
            return
        self._refreshing = self._loop.create_task(self._refresh(), name="pushgate-publish-slots")

    async def _refresh(self) -> None:
        assert self._cluster is not None
        try:
            async with asyncio.timeout(self._timeout):
                await self._cluster.nodes_manager.initialize()
        except Exception as exc:
            log.warning("publish: cannot refresh the cluster's slot map: %r", exc)
        self._slot_pipes = [None] * _SLOTS

    # --- detours (cluster only) ------------------------------------------------------------------

    def _redirected(self, pipe: PublishPipe, entry: PendingPublish, message: str) -> None:
        detour = self._detours.get(entry.slot)
        if detour is None:
            detour = self._detours[entry.slot] = _Detour(pipe.when_answered(pipe.sent))
            log.info("publish: slot %d redirected (%s); taking the slow path until the map is refreshed",
                     entry.slot, message)
            detour.task = self._loop.create_task(self._run_detour(entry.slot, detour), name="pushgate-detour")
        detour.redirected.append(entry)

    async def _run_detour(self, slot: int, detour: _Detour) -> None:
        try:
            await self._refresh()
            while True:
                if detour.redirected:
                    entry = detour.redirected.popleft()
                elif not detour.barrier.done():
                    await detour.barrier  # resolved within broker_timeout: pipes fail what they hold by then
                    continue
                elif detour.held:
                    entry = detour.held.popleft()
                else:
                    break
                await self._slow_publish(entry)
        finally:
            del self._detours[slot]
            for entry in (*detour.redirected, *detour.held):  # only when cancelled (close)
                failure = BrokerUnavailable("Redis broker closed")
                failure.__cause__ = ConnectionError("closed")
                entry.fail(failure)

    async def _slow_publish(self, entry: PendingPublish) -> None:
        """One publication through redis-py's cluster client, which follows MOVED/ASK."""
        if entry.fut.done():
            return
        keys = [self._keys.meta(entry.channel), self._keys.history(entry.channel)]
        args: list[Any] = [entry.data, entry.size, entry.ttl_ms, self._meta_ttl_ms, secrets.token_hex(8),
                           self._keys.channel_topic(entry.channel), self._publish_cmd]
        if entry.key is not None:
            keys.append(self._keys.idempotency(entry.channel, entry.key))
            args.append(self._idempotency_ms)
        try:
            async with asyncio.timeout_at(entry.t + self._timeout):
                epoch, offset = await self._script(keys=keys, args=args)
        except TimeoutError as exc:
            failure = timed_out(self._timeout)
            failure.__cause__ = exc
            entry.fail(failure)
        except Exception as exc:  # translated by the broker's publish
            entry.fail(exc)
        else:
            if not entry.fut.done():
                entry.fut.set_result(StreamPosition(epoch.decode(), int(offset)))

    # --- lifecycle -------------------------------------------------------------------------------

    def _primary_moved(self) -> None:
        for pipe in self._pipes.values():
            pipe.retry_now()

    async def close(self) -> None:
        self._closed = True
        self._conn.remove_primary_listener(self._primary_moved)
        tasks = [d.task for d in self._detours.values() if d.task is not None]
        if self._refreshing is not None:
            tasks.append(self._refreshing)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        pipes, self._pipes = list(self._pipes.values()), {}
        for pipe in pipes:
            await pipe.close()
