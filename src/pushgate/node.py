"""A node: one process's hub wired to the broker, presence store, lease store and scheduler.

The node is the broker's :class:`~pushgate.backends.broker.BrokerHandler`: publications arrive
here in per-channel offset order, are framed once and handed to the hub. It also keeps each
channel's stream whole on this node: an offset gap (a lost pub/sub message) or a broker link
loss is filled from history before live traffic continues, and if history cannot fill it the
channel's subscribers are told to reconnect and recover (close 4002).

Transports (WebSocket, SSE) call the node's client operations; the HTTP API calls the same
operations without a connection.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
import secrets
import socket
import time
import weakref
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from itertools import count
from typing import Any

import msgspec

from .app import App, ClientInfo, call_maybe_async
from .auth import Authenticator
from .backends import create_stores
from .backends.broker import (
    Broker,
    ChannelEvent,
    HistoryOptions,
    HistoryResult,
    Publication,
    StreamPosition,
    UserMessage,
)
from .backends.lease import LeaseStore
from .backends.presence import ChannelPresence, OnlineCounts, PresenceStore
from .config import Config
from .errors import ClientError, CloseCode, Reject
from .hub import ChannelState, Hub
from .metrics import NodeMetrics
from .names import valid_channel, valid_users
from .protocol import jsonwire
from .protocol.outgoing import Outgoing, message_outgoing
from .scheduler import Scheduler
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
            b, p, le = create_stores(config.broker, prefix=config.redis_prefix, node_ttl=config.node_ttl)
            broker, presence, leases = broker or b, presence or p, leases or le
        self.broker: Broker = broker
        self.presence: PresenceStore = presence
        self.leases: LeaseStore = leases
        self.app = app or App()
        self.auth = Authenticator(config)
        self.hub = Hub()
        self.draining = False
        self.started = False
        self.metrics = NodeMetrics(self)
        self.scheduler = Scheduler(self)
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
        self.started = True
        log.info("node %s started (broker %s)", self.id, self.config.broker.split("@")[-1])

    async def stop(self) -> None:
        """Close everything; presence entries of this node are removed at once."""
        self.draining = True
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
        return ClientInfo(conn.id, conn.user, self.id, conn.transport_name, conn.claims)

    def check_capacity(self) -> None:
        limit = self.config.max_connections
        if limit and len(self.hub.connections) >= limit:
            raise ClientError("connection_limit", "node is at its connection limit")

    async def run_connect_hooks(self, info: ClientInfo) -> None:
        for hook in self.app.connect_hooks:
            await call_maybe_async(hook, info)

    async def register(self, conn: Connection) -> None:
        """Make ``conn`` reachable: local indexes, the user's route, presence."""
        if self.hub.add(conn) and conn.user is not None:
            await self.broker.subscribe_user(conn.user)
        self.metrics.connections_total.inc()
        await self.presence.add_connection(conn.id, conn.user)

    async def unregister(self, conn: Connection) -> None:
        """Undo everything ``conn`` set up; tolerant of a broker that is down."""
        for channel in list(conn.channels):
            try:
                await self.unsubscribe(conn, channel)
            except Exception as exc:
                log.warning("cleanup of %s in %s failed: %s", conn.id, channel, exc)
        last = self.hub.remove(conn)
        try:
            if last and conn.user is not None:
                await self.broker.unsubscribe_user(conn.user)
            await self.presence.remove_connection(conn.id, conn.user)
        except Exception as exc:
            log.warning("cleanup of %s failed: %s (resync on reconnect fixes it)", conn.id, exc)
        for hook in self.app.disconnect_hooks:
            try:
                await call_maybe_async(hook, self.client_info(conn))
            except Exception:
                log.exception("disconnect hook failed")

    # -- channels ---------------------------------------------------------------------------
    def _lock(self, channel: str) -> asyncio.Lock:
        lock = self._locks.get(channel)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[channel] = lock
        return lock

    async def _acquire(self, channel: str) -> ChannelState:
        """The channel's local state, subscribing upstream on its first local subscriber."""
        lock = self._lock(channel)
        async with lock:
            st = self.hub.channels.get(channel)
            if st is None:
                await self.broker.subscribe(channel)
                try:
                    position = await self.broker.position(channel)
                except Exception:
                    await self.broker.unsubscribe(channel)
                    raise
                st = ChannelState(last=position)
                self.hub.channels[channel] = st
            return st

    async def _release(self, channel: str) -> None:
        """Unsubscribe upstream after the last local subscriber left."""
        lock = self._lock(channel)
        async with lock:
            st = self.hub.channels.get(channel)
            if st is not None and not st.subscribers and not st.pending:
                del self.hub.channels[channel]
                await self.broker.unsubscribe(channel)

    async def subscribe(
        self, conn: Connection, channel: str, since: StreamPosition | None = None
    ) -> SubscribeResult:
        """Subscribe ``conn``; it stays *pending* until :meth:`finish_subscribe` is called.

        Between the two calls live publications are held for ``conn``, so the caller can send
        its reply and the replay, then the held publications, with nothing lost or reordered.
        """
        valid_channel(channel)
        if channel in conn.channels:
            raise ClientError("already_subscribed", f"already subscribed to {channel!r}")
        if len(conn.channels) >= self.config.max_subscriptions:
            raise ClientError("limit_exceeded", f"at most {self.config.max_subscriptions} subscriptions")
        ns = self.config.namespace(channel)
        if ns.subscribe == "authenticated" and conn.user is None:
            raise ClientError("permission_denied", "this namespace needs an authenticated user")
        patterns = (conn.claims or {}).get("channels")
        if isinstance(patterns, list) and not any(_match(channel, p) for p in patterns):
            raise ClientError("permission_denied", f"token does not allow {channel!r}")
        for hook in self.app.subscribe_hooks:
            await call_maybe_async(hook, self.client_info(conn), channel)
        conn.channels.add(channel)
        try:
            st = await self._acquire(channel)
        except BaseException:
            conn.channels.discard(channel)
            raise
        st.pending[conn] = []
        try:
            result = await self._recover(channel, st, since)
            if ns.presence:
                await self.presence.join(channel, conn.id, conn.user)
            if ns.join_leave:
                await self.broker.publish_event(ChannelEvent(channel, "join", conn.user))
        except BaseException:
            st.pending.pop(conn, None)
            conn.channels.discard(channel)
            await self._release(channel)
            raise
        self.metrics.subscriptions_total.inc()
        return result

    async def _recover(
        self, channel: str, st: ChannelState, since: StreamPosition | None
    ) -> SubscribeResult:
        assert st.last is not None
        if since is None:
            return SubscribeResult(st.last, False, [])
        res = await self.broker.history(channel, since=since)
        if res.complete:
            return SubscribeResult(res.position, True, res.publications)
        return SubscribeResult(res.position, False, [])

    def finish_subscribe(self, conn: Connection, channel: str, result: SubscribeResult) -> list[Publication]:
        """Make ``conn`` a live subscriber; returns held publications newer than the replay."""
        st = self.hub.channels.get(channel)
        if st is None or conn not in st.pending:
            return []
        held = st.pending.pop(conn)
        st.subscribers.add(conn)
        last = result.replay[-1] if result.replay else None
        base_epoch = last.epoch if last else result.position.epoch
        base_offset = last.offset if last else result.position.offset
        return [p for p in held if p.epoch != base_epoch or p.offset > base_offset]

    async def unsubscribe(self, conn: Connection, channel: str) -> None:
        if channel not in conn.channels:
            raise ClientError("not_subscribed", f"not subscribed to {channel!r}")
        conn.channels.discard(channel)
        st = self.hub.channels.get(channel)
        if st is not None:
            st.subscribers.discard(conn)
            st.pending.pop(conn, None)
        ns = self.config.namespace(channel)
        try:
            if ns.presence:
                await self.presence.leave(channel, conn.id)
            if ns.join_leave:
                await self.broker.publish_event(ChannelEvent(channel, "leave", conn.user))
        finally:
            await self._release(channel)

    # -- publishing -------------------------------------------------------------------------
    async def publish(self, channel: str, data: bytes, *, conn: Connection | None = None) -> StreamPosition:
        """Publish raw JSON ``data``. With ``conn`` it is a client publish: permissions and hooks apply."""
        valid_channel(channel)
        if conn is not None:
            if not self.config.client_may_publish(channel):
                raise ClientError("permission_denied", f"clients may not publish to {channel!r}")
            if self.app.publish_hooks:
                data = await self._run_publish_hooks(conn, channel, data)
        size, ttl = self.config.history_for(channel)
        started = time.perf_counter()
        position = await self.broker.publish(channel, data, HistoryOptions(size, ttl))
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

    async def send_to_users(self, users: Sequence[str], data: bytes, *, sender: str | None) -> None:
        """Deliver to every connection of each user, wherever it is; ``sender`` is server-stamped."""
        targets = valid_users(users)
        await self.broker.send_to_users(targets, UserMessage("direct", sender=sender, data=data))
        self.metrics.published_total.inc()

    async def broadcast(self, data: bytes) -> None:
        await self.broker.broadcast(data)
        self.metrics.published_total.inc()

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

    async def send_json(self, users: Sequence[str], data: Any, *, sender: str | None = None) -> None:
        await self.send_to_users(users, msgspec.json.encode(data), sender=sender)

    # -- queries ----------------------------------------------------------------------------
    async def channel_presence(self, channel: str) -> ChannelPresence:
        return await self.presence.presence(valid_channel(channel))

    async def online(self) -> OnlineCounts:
        return await self.presence.online()

    async def history(
        self, channel: str, since: StreamPosition | None = None, limit: int | None = None
    ) -> HistoryResult:
        return await self.broker.history(valid_channel(channel), since=since, limit=limit)

    def local_channels(self) -> dict[str, int]:
        return {name: len(st.subscribers) + len(st.pending) for name, st in self.hub.channels.items()}

    # -- BrokerHandler: traffic arriving from the broker ------------------------------------
    def on_publication(self, pub: Publication) -> None:
        st = self.hub.channels.get(pub.channel)
        if st is None:
            return
        if st.filling is not None:
            st.filling.append(pub)
            return
        last = st.last
        if last is not None and pub.epoch == last.epoch:
            if pub.offset <= last.offset:
                return  # already delivered (e.g. by a gap fill)
            if pub.offset > last.offset + 1 and self.config.history_for(pub.channel)[0] > 0:
                st.filling = [pub]
                self.spawn(self._fill_gap(pub.channel, st), f"fill-{pub.channel}")
                return
        self._deliver(st, pub)

    def _deliver(self, st: ChannelState, pub: Publication) -> None:
        """Hot path: frame once, hand the same bytes to every local subscriber."""
        st.last = StreamPosition(pub.epoch, pub.offset)
        self.hub.to_channel(st, pub, message_outgoing(pub))

    async def _fill_gap(self, channel: str, st: ChannelState) -> None:
        """Deliver what this node missed (offset gap or link loss) from history, then resume live."""
        since = st.last
        res: HistoryResult | None = None
        try:
            if since is not None:
                res = await self.broker.history(channel, since=since)
        except Exception as exc:
            log.warning("gap fill of %s failed: %s", channel, exc)
        buffered, st.filling = st.filling or [], None
        if self.hub.channels.get(channel) is not st:
            return
        if res is None or not res.complete:
            log.warning("cannot fill gap in %s since %s: asking subscribers to recover", channel, since)
            for conn in list(st.subscribers):
                conn.close(CloseCode.INSUFFICIENT_STATE, "missed messages: reconnect and recover")
            if res is not None:
                st.last = res.position
            for pub in buffered:
                if st.last is None or pub.epoch != st.last.epoch or pub.offset > st.last.offset:
                    self._deliver(st, pub)
            return
        for pub in [*res.publications, *buffered]:
            last = st.last
            if last is None or pub.epoch != last.epoch or pub.offset > last.offset:
                self._deliver(st, pub)
        self.metrics.gap_fills_total.inc()

    def on_channel_event(self, event: ChannelEvent) -> None:
        st = self.hub.channels.get(event.channel)
        if st is not None:
            out = Outgoing(jsonwire.channel_event_frame(event.kind, event.channel, event.user))
            self.hub.fanout(st.subscribers, out)

    def on_user_message(self, user: str, message: UserMessage) -> None:
        if message.kind == "direct":
            self.hub.to_user(user, Outgoing(jsonwire.direct_frame(message.sender, message.data)))
        elif message.kind == "disconnect":
            for conn in list(self.hub.users.get(user, ())):
                conn.close(message.code or CloseCode.DISCONNECTED, message.reason)

    def on_broadcast(self, data: bytes) -> None:
        self.hub.to_all(Outgoing(jsonwire.broadcast_frame(data)))

    def on_link_state(self, up: bool) -> None:
        if not up:
            log.warning("broker link lost: /readyz is 503 until it is back")
            return
        log.info("broker link restored: filling gaps from history and resyncing presence")
        for channel, st in list(self.hub.channels.items()):
            if st.filling is None:
                st.filling = []
                self.spawn(self._fill_gap(channel, st), f"fill-{channel}")
        self.spawn(self._resync_presence(), "presence-resync")

    async def _resync_presence(self) -> None:
        connections = {c.id: c.user for c in self.hub.connections.values()}
        channels: dict[str, dict[str, str | None]] = {}
        for name, st in self.hub.channels.items():
            if self.config.namespace(name).presence:
                channels[name] = {c.id: c.user for c in (*st.subscribers, *st.pending)}
        await self.presence.resync(connections, channels)


def _match(channel: str, pattern: Any) -> bool:
    return isinstance(pattern, str) and fnmatch.fnmatchcase(channel, pattern)


__all__ = ["Node", "Reject", "SubscribeResult"]
