"""A node: one process's hub wired to the broker, presence store, lease store and scheduler.

The node orchestrates; the parts decide. Client operations arrive here from every transport
(and, without a connection, from the HTTP API and embedding code); each asks the
:class:`~pushgate.auth.Authorizer` first. The node is also the broker's
:class:`~pushgate.backends.broker.BrokerHandler`: a publication that arrives goes through its
channel's :class:`~pushgate.stream.ChannelStream` (order, dedupe, held replays, gap fills),
and what the stream says to deliver is framed once and handed to the :class:`~pushgate.hub.Hub`.
The node carries out the stream's other answers: read history for a fill, release subscribers
that waited for it, and tell subscribers in-band to resync when history cannot fill a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
import weakref
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass
from itertools import count
from typing import Any, cast

import msgspec

from .app import App, ClientInfo, call_maybe_async
from .auth import Authenticator, Authorizer
from .backends import create_stores
from .backends.broker import (
    Broker,
    ChannelEvent,
    HistoryOptions,
    HistoryResult,
    Publication,
    StreamPosition,
    UserMessage,
    ack_message,
    parse_ack,
)
from .backends.idempotency import check_idempotency_key
from .backends.lease import LeaseStore
from .backends.presence import ChannelPresence, OnlineCounts, PresenceStore
from .config import Config
from .errors import ClientError, CloseCode, Reject
from .gcprobe import GcPolicy
from .hub import Hub
from .metrics import NodeMetrics
from .names import is_internal, user_stream, valid_channel, valid_destination, valid_users
from .payload import check_data
from .protocol import jsonwire
from .protocol.outgoing import Outgoing, message_outgoing, resync_outgoing
from .ratelimit import TokenBucket
from .receipts import AckWaiter, Receipts
from .scheduler import Scheduler
from .stream import DELIVER, ChannelStream, FillOutcome, SharedRead, StartFill, newer
from .web.connection import Connection

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SubscribeResult:
    """What a subscribe settled: the position to report and the publications to replay first."""

    position: StreamPosition
    recovered: bool
    replay: list[Publication]


class Node:
    """One pushgate process. Create, ``await start()``, serve, ``await drain()``, ``await stop()``."""

    def __init__(
        self,
        config: Config,
        *,
        app: App | None = None,
        broker: Broker | None = None,
        presence: PresenceStore | None = None,
        leases: LeaseStore | None = None,
    ) -> None:
        self.config = config
        self.id = config.node_id or f"{socket.gethostname()}-{os.getpid()}"
        if broker is None or presence is None or leases is None:
            b, p, le = create_stores(
                config.broker,
                prefix=config.redis_prefix,
                node_ttl=config.node_ttl,
                broker_timeout=config.broker_timeout,
                idempotency_window=config.idempotency_window,
                history_max_channels=config.history_max_channels,
                history_max_bytes=config.history_max_bytes,
                publish_max_in_flight=config.broker_publish_max_in_flight,
            )
            broker, presence, leases = broker or b, presence or p, leases or le
        self.broker: Broker = broker
        self.presence: PresenceStore = presence
        self.leases: LeaseStore = leases
        self.app = app or App()
        self.auth = Authenticator(config)
        self.authorizer = Authorizer(config, self.app)
        self.hub = Hub(flush_window=config.flush_window, flush_pacing=config.flush_pacing)
        self.gc_policy = GcPolicy(enabled=config.gc_freeze, refreeze_connections=config.gc_refreeze_connections)
        self.draining = False
        self.started = False
        self.metrics = NodeMetrics(self.hub, lambda: self.ready, self.broker)
        self.scheduler = Scheduler(config.schedule, self.leases, self.id, config.lease_ttl, self.publish)
        #: channels this node is subscribed to upstream, each with its stream state
        self._streams: dict[str, ChannelStream] = {}
        #: users whose control topic this node follows, and how many reasons it has to
        self._user_routes: dict[str, int] = {}
        self._routed: set[str] = set()  # connections holding a user route
        #: senders waiting for delivery receipts, per recipient
        self._ack_waiters: dict[str, set[AckWaiter]] = {}
        #: recovery reads in flight, one per channel at most (see ChannelStream.shared_read)
        self._reads: dict[SharedRead, asyncio.Task[None]] = {}
        #: publications per second this node accepts, from every door (a bound on broker load)
        self._publish_rate = TokenBucket(config.node_publish_rate, config.node_publish_rate)
        self._boot = secrets.token_hex(3)
        self._seq = count(1)
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._heartbeat_task: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        await self.presence.start(self.id)
        await self.broker.start(self)
        self.app.bind(self)
        self._heartbeat_task = asyncio.create_task(self._heartbeat_loop(), name="pushgate-heartbeat")
        self.scheduler.start()
        self.gc_policy.start()  # its one full collection precedes serving: not a pause anyone waits on
        self.metrics.gc.install()
        self.started = True
        log.info("node %s started (broker %s)", self.id, self.config.broker.split("@")[-1])

    async def stop(self) -> None:
        """Close everything; presence entries of this node are removed at once."""
        self.draining = True
        self.metrics.gc.uninstall()
        self.gc_policy.stop()
        await self.scheduler.stop()
        if self._heartbeat_task:
            self._heartbeat_task.cancel()
            await asyncio.gather(self._heartbeat_task, return_exceptions=True)
        for conn in list(self.hub.connections.values()):
            conn.close(CloseCode.SERVICE_RESTART, "server stopping")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for step in (self.presence.close, self.broker.close):
            try:
                await step()
            except Exception:
                log.exception("error while stopping node %s", self.id)
        self.started = False

    async def drain(self, period: float | None = None) -> None:
        """Graceful drain: refuse new connections, close open ones with 1012 in paced batches."""
        self.draining = True
        period = self.config.drain_period if period is None else period
        conns = list(self.hub.connections.values())
        if conns:
            steps = max(1, min(len(conns), int(period / 0.05)))
            per_step = -(-len(conns) // steps)
            pause = period / steps
            for i in range(0, len(conns), per_step):
                for conn in conns[i : i + per_step]:
                    conn.close(CloseCode.SERVICE_RESTART, "server restart: reconnect")
                if i + per_step < len(conns):
                    await asyncio.sleep(pause)
        deadline = time.monotonic() + 5.0
        while self.hub.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    @property
    def ready(self) -> bool:
        return self.started and not self.draining and self.broker.healthy

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    async def _heartbeat_loop(self) -> None:
        interval = self.config.node_ttl / 3
        last_purge = time.monotonic()
        while True:
            try:
                await self.presence.heartbeat()
                if time.monotonic() - last_purge >= self.config.node_ttl / 2:
                    last_purge = time.monotonic()
                    dead = await self.presence.purge_dead_nodes()
                    if dead:
                        log.warning("purged presence of dead nodes: %s", ", ".join(dead))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("presence heartbeat failed: %s", exc)
            await asyncio.sleep(interval)

    # -- connections ------------------------------------------------------------------------
    def new_connection_id(self) -> str:
        return f"{self.id}.{self._boot}.{next(self._seq):x}"

    def client_info(self, conn: Connection) -> ClientInfo:
        return ClientInfo(conn.id, conn.user, self.id, conn.transport_name, conn.claims, conn.address)

    def check_capacity(self, *, user: str | None = None, address: str | None = None) -> None:
        """Refuse a new connection over the node, per-user or per-address limit.

        Checked at the handshake, before the connection is registered: handshakes that are in
        flight at the same moment may overshoot a limit by their number, never more.
        """
        cfg, hub = self.config, self.hub
        if cfg.max_connections and len(hub.connections) >= cfg.max_connections:
            raise ClientError("connection_limit", "node is at its connection limit")
        per_user = cfg.max_connections_per_user
        if per_user and user is not None and len(hub.users.get(user, ())) >= per_user:
            raise ClientError("too_many_connections", f"at most {per_user} connections per user")
        per_ip = cfg.max_connections_per_ip
        if per_ip and address is not None and hub.addresses.get(address, 0) >= per_ip:
            raise ClientError("too_many_connections", f"at most {per_ip} connections per client address")

    async def run_connect_hooks(self, info: ClientInfo) -> None:
        for hook in self.app.connect_hooks:
            await call_maybe_async(hook, info)

    async def register(self, conn: Connection) -> None:
        """Make ``conn`` known: the user's route, presence, then the local indexes.

        The hub learns of ``conn`` last and nothing awaits after that, so a caller that sends
        its first frame right after this returns is sure no broadcast got there before it, and
        cluster-wide presence already counts ``conn`` when it is told it is connected.
        """
        self.metrics.opened(conn)
        log.debug("connect %s user=%s transport=%s from %s", conn.id, conn.user, conn.transport_name, conn.address)
        if conn.user is not None:
            await self._route_user(conn.user)
            self._routed.add(conn.id)
        await self.presence.add_connection(conn.id, conn.user)
        self.hub.add(conn)
        self.gc_policy.connected()

    async def unregister(self, conn: Connection) -> None:
        """Undo everything ``conn`` set up; tolerant of a broker that is down."""
        for channel in list(conn.channels):
            try:
                await self.unsubscribe(conn, channel)
            except Exception as exc:
                log.warning("cleanup of %s in %s failed: %s", conn.id, channel, exc)
        if conn.id in self.hub.connections:
            self.gc_policy.disconnected(conn.cyclic_garbage)
        self.hub.remove(conn)
        try:
            if conn.id in self._routed and conn.user is not None:
                self._routed.discard(conn.id)
                await self._unroute_user(conn.user)
            await self.presence.remove_connection(conn.id, conn.user)
        except Exception as exc:
            log.warning("cleanup of %s failed: %s (resync on reconnect fixes it)", conn.id, exc)
        for hook in self.app.disconnect_hooks:
            try:
                await call_maybe_async(hook, self.client_info(conn))
            except Exception:
                log.exception("disconnect hook failed")
        ended = self.metrics.closed(conn)
        if ended is not None:
            code, reason, duration = ended
            log.debug("close %s user=%s transport=%s code=%s reason=%r duration=%.3fs", conn.id, conn.user,
                      conn.transport_name, "client" if code is None else code, reason, duration)

    async def _route_user(self, user: str) -> None:
        """Receive ``user``'s control messages (disconnects, ack notices) on this node; counted,
        because connections and senders waiting for receipts both need the route."""
        count = self._user_routes.get(user, 0)
        self._user_routes[user] = count + 1
        if count == 0:
            await self.broker.subscribe_user(user)

    async def _unroute_user(self, user: str) -> None:
        count = self._user_routes.get(user, 0) - 1
        if count > 0:
            self._user_routes[user] = count
            return
        self._user_routes.pop(user, None)
        await self.broker.unsubscribe_user(user)

    # -- channels ---------------------------------------------------------------------------
    def _lock(self, channel: str) -> asyncio.Lock:
        lock = self._locks.get(channel)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[channel] = lock
        return lock

    async def _acquire(self, channel: str) -> ChannelStream:
        """The channel's stream, subscribing upstream on its first local subscriber."""
        async with self._lock(channel):
            stream = self._streams.get(channel)
            if stream is None:
                await self.broker.subscribe(channel)
                try:
                    position = await self.broker.position(channel)
                except Exception:
                    await self.broker.unsubscribe(channel)
                    raise
                stream = ChannelStream(position, gap_fill=self.config.history_for(channel)[0] > 0)
                self._streams[channel] = stream
            return stream

    async def _release(self, channel: str) -> None:
        """Unsubscribe upstream after the last local subscriber (live or replaying) left."""
        async with self._lock(channel):
            stream = self._streams.get(channel)
            if stream is not None and not stream.held and channel not in self.hub.channels:
                del self._streams[channel]
                await self.broker.unsubscribe(channel)

    async def subscribe(
        self, conn: Connection, channel: str, since: StreamPosition | None = None
    ) -> SubscribeResult:
        """Subscribe ``conn``; it stays *held* until :meth:`finish_subscribe` is called.

        Between the two calls live publications are held for ``conn``, so the caller can send
        its reply and the replay, then the held publications, with nothing lost or reordered.
        """
        valid_channel(channel)
        if channel in conn.channels:
            raise ClientError("already_subscribed", f"already subscribed to {channel!r}")
        own = 1 if conn.user is not None and user_stream(conn.user) in conn.channels else 0
        if len(conn.channels) - own >= self.config.max_subscriptions:
            raise ClientError("limit_exceeded", f"at most {self.config.max_subscriptions} subscriptions")
        await self.authorizer.subscribe(self.client_info(conn), channel)
        ns = self.config.namespace(channel)
        stream = await self._hold(conn, channel)
        try:
            result = await self._recover(channel, stream, since)
            if ns.presence:
                await self.presence.join(channel, conn.id, conn.user)
            if ns.join_leave:
                await self.broker.publish_event(ChannelEvent(channel, "join", conn.user))
        except BaseException:
            await self._unhold(conn, channel, stream)
            raise
        self.metrics.subscriptions_total.inc()
        log.debug("subscribe %s %s since=%s recovered=%s replay=%d", conn.id, channel, since, result.recovered,
                  len(result.replay))
        return result

    async def _hold(self, conn: Connection, channel: str) -> ChannelStream:
        """Add ``conn`` to ``channel`` as a held subscriber (live traffic kept for it)."""
        conn.channels.add(channel)
        try:
            stream = await self._acquire(channel)
        except BaseException:
            conn.channels.discard(channel)
            raise
        stream.begin(conn)
        return stream

    async def _unhold(self, conn: Connection, channel: str, stream: ChannelStream) -> None:
        """Undo :meth:`_hold` after a failed subscribe."""
        stream.cancel(conn)
        conn.channels.discard(channel)
        await self._release(channel)

    async def open_user_stream(self, conn: Connection, since: StreamPosition | None) -> SubscribeResult | None:
        """Make ``conn`` follow its user's stream (direct messages); None for anonymous ``conn``.

        Like :meth:`subscribe` (``conn`` is held until :meth:`finish_subscribe`), but for the
        server's own stream: no rules, hooks or presence, and recovery is best effort — from
        ``since``, or without one from what the user has acknowledged, whatever history still
        keeps is delivered (an offline inbox), with ``recovered`` saying whether it is all.
        """
        if conn.user is None:
            return None
        channel = user_stream(conn.user)
        stream = await self._hold(conn, channel)
        try:
            if since is None:  # a new device or a fresh start: everything not yet acknowledged
                since = await self.broker.acked(channel) or StreamPosition(stream.last.epoch, 0)
            return await self._recover(channel, stream, since, best_effort=True)
        except BaseException:
            await self._unhold(conn, channel, stream)
            raise

    async def _recover(
        self, channel: str, stream: ChannelStream, since: StreamPosition | None, *, best_effort: bool = False
    ) -> SubscribeResult:
        """What a subscriber with ``since`` missed, from one history read shared by everyone who
        recovers this channel around the same time (a mass reconnect costs one read)."""
        if since is None:
            return SubscribeResult(stream.last, False, [])
        if since == stream.last:
            return SubscribeResult(since, True, [])  # nothing missed: no history read at all
        loop = asyncio.get_running_loop()
        shared, start = stream.shared_read(loop.time())
        if start:
            task = loop.create_task(self._shared_read(channel, stream, shared), name=f"history-{channel}")
            self._reads[shared] = task
            self._tasks.add(task)  # cancelled at stop; its failure is the waiters' to report
            task.add_done_callback(self._tasks.discard)
        read = self._reads.get(shared)
        if read is not None:
            await asyncio.shield(read)  # raises what the read raised: the subscribe fails with it
        served = stream.recover(shared, since, best_effort=best_effort)
        if served is not None:
            return SubscribeResult(*served)
        self.metrics.history_reads.labels("recover").inc()
        res = await self.broker.history(channel, since=since)  # the shared tail overflowed
        keep = res.complete or best_effort
        return SubscribeResult(res.position, res.complete, res.publications if keep else [])

    async def _shared_read(self, channel: str, stream: ChannelStream, shared: SharedRead) -> None:
        try:
            self.metrics.history_reads.labels("recover").inc()
            result = await self.broker.history(channel)
        except BaseException:
            stream.read_failed(shared)
            raise
        finally:
            self._reads.pop(shared, None)
        stream.read_done(shared, result, asyncio.get_running_loop().time())

    def finish_subscribe(self, conn: Connection, channel: str, result: SubscribeResult) -> list[Publication]:
        """Make ``conn`` a live subscriber; returns held publications newer than the replay.

        While the node fills a gap in this channel, ``conn`` stays held and gets its catch-up
        when the fill ends (see :meth:`ChannelStream.finish`).
        """
        stream = self._streams.get(channel)
        if stream is None:
            return []
        last = result.replay[-1] if result.replay else None
        replay_end = StreamPosition(last.epoch, last.offset) if last else result.position
        catch_up = stream.finish(conn, replay_end)
        if catch_up is None:
            return []
        self.hub.add_sub(channel, conn)
        return catch_up

    async def unsubscribe(self, conn: Connection, channel: str) -> None:
        if channel not in conn.channels:
            raise ClientError("not_subscribed", f"not subscribed to {channel!r}")
        conn.channels.discard(channel)
        stream = self._streams.get(channel)
        if stream is not None:
            stream.cancel(conn)
        self.hub.remove_sub(channel, conn)
        if is_internal(channel):
            await self._release(channel)
            return
        ns = self.config.namespace(channel)
        try:
            if ns.presence:
                await self.presence.leave(channel, conn.id)
            if ns.join_leave:
                await self.broker.publish_event(ChannelEvent(channel, "leave", conn.user))
        finally:
            await self._release(channel)

    # -- publishing -------------------------------------------------------------------------
    async def publish(
        self, channel: str, data: bytes, *, conn: Connection | None = None, idempotency_key: str | None = None
    ) -> StreamPosition:
        """Publish raw JSON ``data``. With ``conn`` it is a client publish: permissions and hooks apply.

        A retry with the same ``idempotency_key`` (within ``idempotency_window``, cluster-wide) is
        not applied twice: it answers the first publication's position."""
        valid_channel(channel)
        check_data(data, max_depth=self.config.max_json_depth)
        if conn is not None:
            self.authorizer.publish(conn, channel)  # no await before the broker: keeps client order
            if self.app.publish_hooks:
                data = await self._run_publish_hooks(conn, channel, data)
            if conn.user is not None and self.config.namespace(channel).stamp_publisher:
                data = jsonwire.stamp(conn.user, data)  # subscribers see who published ("from")
        if not self._publish_rate.take():
            raise ClientError("rate_limited", "this node is at its publish rate limit: retry shortly")
        size, ttl = self.config.history_for(channel)
        started = time.perf_counter()
        position = await self.broker.publish(channel, data, HistoryOptions(size, ttl), idempotency_key=idempotency_key)
        self.metrics.publish_latency.observe(time.perf_counter() - started)
        self.metrics.published_total.inc()
        return position

    async def _run_publish_hooks(self, conn: Connection, channel: str, data: bytes) -> bytes:
        value = msgspec.json.decode(data)
        changed = False
        for hook in self.app.publish_hooks:
            result = await call_maybe_async(hook, self.client_info(conn), channel, value)
            if result is not None:
                value, changed = result, True
        return msgspec.json.encode(value) if changed else data

    async def send_to_users(
        self,
        users: Sequence[str],
        data: bytes,
        *,
        sender: str | None,
        conn: Connection | None = None,
        idempotency_key: str | None = None,
        destination: str | None = None,
    ) -> dict[str, StreamPosition]:
        """Append to each user's stream: every connection of the user gets it now, wherever it
        is, and a connection that opens later within retention gets it then (the offline
        inbox). ``sender`` is server-stamped. Returns each message's position in each stream.

        With ``conn`` it is a client's send: the authorizer decides, and the sender is the
        connection's user whatever the caller passed. An ``idempotency_key`` makes a retry
        safe: within the window each user's stream applies the same key once. ``destination``
        (``/queue/<name>``) is where STOMP clients of the user receive it (``/user/queue/<name>``).
        """
        if conn is not None:
            self.authorizer.send(conn, users)
            sender = conn.user
        targets = valid_users(users)
        check_data(data, max_depth=self.config.max_json_depth)
        if conn is not None and self.app.send_hooks:
            await self.authorizer.send_hooks(self.client_info(conn), targets, msgspec.json.decode(data))
        if not self._publish_rate.take():
            raise ClientError("rate_limited", "this node is at its publish rate limit: retry shortly")
        if destination is not None:
            valid_destination(destination)
        envelope = jsonwire.direct_envelope(sender, data, destination)
        options = HistoryOptions(self.config.user_history_size, self.config.user_history_ttl)
        positions = await asyncio.gather(
            *(self.broker.publish(user_stream(u), envelope, options, idempotency_key=idempotency_key) for u in targets)
        )
        self.metrics.published_total.inc()
        return dict(zip(targets, positions, strict=True))

    @contextlib.asynccontextmanager
    async def receipts(self, users: Sequence[str]) -> AsyncIterator[Receipts]:
        """Listen for ``users``' acknowledgements — open it *before* sending, so that an ack
        arriving before the send even returns is seen, with the connection that sent it::

            async with node.receipts(users) as receipts:
                positions = await node.send_to_users(users, data, sender=None)
                acked = await receipts.wait(positions, timeout=10)

        Ack notices arrive on each user's control topic from whichever node the acking device
        is on; the stored acks are read as well (then every half second), so a notice missed
        while a route was being set up cannot turn a delivered message into a timeout.
        """
        waiters = {user: AckWaiter() for user in dict.fromkeys(users)}
        routed: list[str] = []
        try:
            for user, waiter in waiters.items():
                self._ack_waiters.setdefault(user, set()).add(waiter)
                await self._route_user(user)
                routed.append(user)
            yield Receipts(self.broker, waiters, self.config.max_ack_wait)
        finally:
            for user, waiter in waiters.items():
                group = self._ack_waiters.get(user)
                if group is not None:
                    group.discard(waiter)
                    if not group:
                        del self._ack_waiters[user]
            for user in routed:
                try:
                    await self._unroute_user(user)
                except Exception as exc:
                    log.warning("receipt route of %s not removed: %s", user, exc)

    async def wait_for_acks(
        self, positions: dict[str, StreamPosition], timeout: float
    ) -> dict[str, list[str] | None]:
        """:meth:`receipts` for messages already sent (an ack that came first is found stored)."""
        async with self.receipts(list(positions)) as receipts:
            return await receipts.wait(positions, timeout)

    async def ack(self, conn: Connection, position: StreamPosition) -> StreamPosition:
        """The connection's user has processed its stream up to ``position``: record it
        cluster-wide (forward only) and tell senders waiting for a receipt. Returns the user's
        acknowledged position."""
        if conn.user is None:
            raise ClientError("permission_denied", "anonymous connections have no user stream to acknowledge")
        stored = await self.broker.ack(user_stream(conn.user), position, self.config.user_history_ttl)
        await self.broker.send_to_users([conn.user], ack_message(conn.id, stored))
        return stored

    async def broadcast(self, data: bytes, *, idempotency_key: str | None = None) -> bool:
        """Deliver ``data`` to every connection on every node (not kept). With an
        ``idempotency_key`` a retry within ``idempotency_window`` is not delivered again,
        cluster-wide (a once-only claim in the lease store). Returns whether it was sent now."""
        check_data(data, max_depth=self.config.max_json_depth)
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)
            if not await self.leases.claim_once(f"idem:b:{idempotency_key}", self.config.idempotency_window):
                return False
        await self.broker.broadcast(data)
        self.metrics.published_total.inc()
        return True

    async def disconnect_user(
        self, user: str, code: int = CloseCode.DISCONNECTED, reason: str = "disconnected by server"
    ) -> None:
        targets = valid_users([user])
        await self.broker.send_to_users(targets, UserMessage("disconnect", code=code, reason=reason))

    # JSON conveniences for embedding code (App.publish etc.)
    async def publish_json(self, channel: str, data: Any) -> StreamPosition:
        return await self.publish(channel, msgspec.json.encode(data))

    async def broadcast_json(self, data: Any) -> None:
        await self.broadcast(msgspec.json.encode(data))

    async def send_json(
        self, users: Sequence[str], data: Any, *, sender: str | None = None
    ) -> dict[str, StreamPosition]:
        return await self.send_to_users(users, msgspec.json.encode(data), sender=sender)

    # -- queries ----------------------------------------------------------------------------
    async def channel_presence(self, channel: str, *, conn: Connection | None = None) -> ChannelPresence:
        valid_channel(channel)
        if conn is not None:
            self.authorizer.presence(conn, channel)
        return await self.presence.presence(channel)

    async def online(self) -> OnlineCounts:
        return await self.presence.online()

    async def history(
        self,
        channel: str,
        since: StreamPosition | None = None,
        limit: int | None = None,
        *,
        conn: Connection | None = None,
    ) -> HistoryResult:
        valid_channel(channel)
        if conn is not None:
            self.authorizer.history(conn, channel)
        return await self.broker.history(channel, since=since, limit=limit)

    async def position(self, channel: str) -> StreamPosition:
        """Where ``channel``'s history stands (the name is checked before the broker is asked)."""
        return await self.broker.position(valid_channel(channel))

    def local_channels(self) -> dict[str, int]:
        """Channels with local subscribers (live or replaying) and how many each has."""
        return {
            name: len(self.hub.channels.get(name, ())) + stream.held
            for name, stream in self._streams.items()
            if not is_internal(name)
        }

    # -- BrokerHandler: traffic arriving from the broker ------------------------------------
    def on_publication(self, pub: Publication) -> None:
        """Hot path: the stream decides; a delivery is framed once for every local subscriber."""
        stream = self._streams.get(pub.channel)
        if stream is None:
            return
        action = stream.publication(pub)
        if action is DELIVER:
            self.hub.to_channel(pub.channel, message_outgoing(pub))
        elif isinstance(action, StartFill):
            self.spawn(self._fill(pub.channel, stream, action), f"fill-{pub.channel}")

    async def _fill(self, channel: str, stream: ChannelStream, fill: StartFill) -> None:
        """Read what this node missed (offset gap or link loss) from history, then resume live.

        After a link loss it first makes sure the stream did not go back (a broker failover
        that lost writes this node delivered): see :meth:`Broker.reset_if_rewound`."""
        res: HistoryResult | None = None
        if fill.verify:
            try:
                reset = await self.broker.reset_if_rewound(channel, fill.since, fill.data)
            except Exception as exc:
                log.warning("cannot check %s for writes lost by the broker: %s", channel, exc)
            else:
                if reset is not None:
                    self.metrics.broker_rewinds.inc()
                    log.warning("%s: the broker no longer holds what this node delivered up to %s (writes lost "
                                "in a failover); new epoch %s, subscribers resync", channel, fill.since, reset.epoch)
        try:
            self.metrics.history_reads.labels("fill").inc()
            res = await self.broker.history(channel, since=fill.since)
        except Exception as exc:
            log.warning("gap fill of %s failed: %s", channel, exc)
        if self._streams.get(channel) is not stream:
            return  # the channel was released meanwhile; nobody is left to deliver to
        self._apply_fill(channel, stream.fill_done(res), fill.since)

    def _apply_fill(self, channel: str, outcome: FillOutcome, since: StreamPosition) -> None:
        at = outcome.resync_at
        if at is None:
            for pub in outcome.deliver:
                self.hub.to_channel(channel, message_outgoing(pub))
            for sub, catch_up in outcome.release:
                conn = cast(Connection, sub)
                for pub in catch_up:
                    conn.send(message_outgoing(pub))
                self.hub.add_sub(channel, conn)
            self.metrics.gap_fills_total.inc()
            return
        # History cannot prove what was missed: say so in-band instead of closing everyone (a
        # reconnect storm); each subscriber goes on from ``at`` and tells its app it lost some.
        log.warning("cannot fill gap in %s since %s: subscribers resync at %s", channel, since, at)
        resync = resync_outgoing(channel, at)
        self.hub.to_channel(channel, resync)
        for sub, catch_up in outcome.release:
            conn = cast(Connection, sub)
            for pub in catch_up:
                if not newer(pub, at):
                    conn.send(message_outgoing(pub))
            conn.send(resync)
            self.hub.add_sub(channel, conn)
        for pub in outcome.deliver:
            self.hub.to_channel(channel, message_outgoing(pub))
        self.metrics.resyncs_total.inc()

    def on_channel_event(self, event: ChannelEvent) -> None:
        if event.channel in self.hub.channels:
            out = Outgoing(jsonwire.channel_event_frame(event.kind, event.channel, event.user))
            self.hub.to_channel(event.channel, out)

    def on_user_message(self, user: str, message: UserMessage) -> None:
        if message.kind == "direct":
            self.hub.to_user(user, Outgoing(jsonwire.direct_frame(message.sender, message.data)))
        elif message.kind == "disconnect":
            for conn in list(self.hub.users.get(user, ())):
                conn.close(message.code or CloseCode.DISCONNECTED, message.reason)
        elif message.kind == "ack":
            waiters = self._ack_waiters.get(user)
            if waiters:
                try:
                    acked = parse_ack(message.data)
                except ValueError:
                    return
                for waiter in waiters:
                    waiter.notice(acked, message.sender)

    def on_broadcast(self, data: bytes) -> None:
        self.hub.to_all(Outgoing(jsonwire.broadcast_frame(data)))

    def on_link_state(self, up: bool) -> None:
        if not up:
            self.metrics.broker_link_losses.inc()
            log.warning("broker link lost: /readyz is 503 until it is back")
            return
        log.info("broker link restored: filling gaps from history and resyncing presence")
        for channel, stream in list(self._streams.items()):
            fill = stream.link_restored()
            if fill is not None:
                self.spawn(self._fill(channel, stream, fill), f"fill-{channel}")
        self.spawn(self._resync_presence(), "presence-resync")

    async def _resync_presence(self) -> None:
        connections = {c.id: c.user for c in self.hub.connections.values()}
        channels: dict[str, dict[str, str | None]] = {}
        for name, stream in self._streams.items():
            if self.config.namespace(name).presence:
                members = [*self.hub.channels.get(name, ()), *map(_as_connection, stream.held_subscribers())]
                channels[name] = {c.id: c.user for c in members}
        await self.presence.resync(connections, channels)


def _as_connection(sub: object) -> Connection:
    return cast(Connection, sub)


__all__ = ["Node", "Reject", "SubscribeResult"]
