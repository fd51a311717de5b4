"""One pub/sub connection to one Redis/Valkey server, kept alive by its own reader task.

redis-py's ``PubSub`` reconnects and resubscribes silently inside ``get_message``; a push
gateway must instead *know* when its link dropped, because publications sent meanwhile are lost
and every subscriber has to fill the gap from history. So this module drives its own connection
(:mod:`.wire`: an asyncio Protocol, hiredis's ``Reader``; redis-py only describes where to
connect):

* written for speed on purpose: every message one socket read brings is parsed in C and handed
  to ``on_message`` in one go, with no await and no timeout object per message (reading through
  redis-py cost the subscribing node about half its CPU per publication, and a ``write`` per
  message to each client, since the hub flushes once per loop iteration); a bad message or a
  failing handler never kills the link;
* replies to our SUBSCRIBE/UNSUBSCRIBE/PING commands come back in order, so a FIFO of what we
  sent tells solicited unsubscribes from the ones a cluster sends when a slot migrates away;
* a PING goes out whenever the link has been quiet for ``ping_interval``; no byte back within
  ``ping_timeout`` means the link is silently dead (TCP keepalive alone takes minutes);
* after a drop it reconnects with the shared backoff policy (:mod:`pushgate.backoff`),
  resubscribes every topic it holds, and only reports itself up once every SUBSCRIBE is confirmed;
* with Sentinel it follows the primary: where to connect is asked (of the sentinels) at every
  connect, and while connected it asks again every ``ping_interval`` (and at once when
  :meth:`PubSubLink.check_primary` is called, e.g. after a READONLY on the publish pipe)
  whether its server is still the primary. A failover that leaves the old primary reachable
  (``SENTINEL FAILOVER``, a network split) demotes it to a replica, and a link still
  subscribed there would silently miss what is published on the new primary until the
  replica resynchronises; so the link drops that connection and reconnects, and its owner
  fills the gap from history as after any link loss. Why not ``ROLE`` on the link itself: a
  RESP2 connection in subscribed mode may only send (P|S)SUBSCRIBE, UNSUBSCRIBE, PING, QUIT and
  RESET. Why not the sentinels' ``+switch-master`` channel: one more connection per node to
  keep alive, and a missed event (the watched sentinel restarting) would go unnoticed, while
  asking on the ping cycle costs one small query per interval and cannot miss a change.

Which link carries which topic is not this module's business: that is :mod:`.links`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, cast

import hiredis
from redis.asyncio.connection import AbstractConnection

from pushgate.backends.redis.resp import command
from pushgate.backends.redis.wire import handshake, open_wire
from pushgate.backoff import backoff
from pushgate.errors import BrokerUnavailable

__all__ = ["LinkOptions", "PubSubLink"]

log = logging.getLogger(__name__)

_IsPrimary = Callable[[AbstractConnection], Awaitable["bool | None"]]
_Expect = tuple[Literal["sub", "unsub", "ping", "ctl"], bytes]
_PING = command("PING")
_MESSAGE_KINDS = (b"message", b"smessage")
_SUBSCRIBE_KINDS = (b"subscribe", b"ssubscribe")
_UNSUBSCRIBE_KINDS = (b"unsubscribe", b"sunsubscribe")


@dataclass(frozen=True, slots=True)
class LinkOptions:
    """How every pub/sub link of a broker keeps itself alive (one value shared by all links).

    * ``ping_interval``: a PING goes out after this long without any byte from the server;
      ``ping_timeout``: no reply within it means the link is silently dead (TCP keepalive
      alone takes minutes to notice a frozen server or a dropped route). With Sentinel the
      link also asks the sentinels this often whether its server is still the primary.
    * ``backoff_min``/``backoff_max``: the reconnect window of :func:`pushgate.backoff.backoff`;
      tighter than a client's (0.5 .. 20 s) because a node sits next to its Redis.
    * ``confirm_timeout``: how long a subscribe waits for the server's confirmation.
    * ``connect_timeout``: bound of one connect + handshake (a frozen server accepts TCP
      connections and never answers).
    """

    ping_interval: float = 5.0
    ping_timeout: float = 3.0
    backoff_min: float = 0.1
    backoff_max: float = 5.0
    confirm_timeout: float = 5.0
    connect_timeout: float = 5.0

    def __post_init__(self) -> None:
        if self.ping_interval <= 0 or self.ping_timeout <= 0:
            raise ValueError("ping_interval and ping_timeout must be > 0")
        if self.confirm_timeout <= 0 or self.connect_timeout <= 0:
            raise ValueError("confirm_timeout and connect_timeout must be > 0")
        if not 0 < self.backoff_min <= self.backoff_max:
            raise ValueError("need 0 < backoff_min <= backoff_max")


class _LinkDead(Exception):
    """No reply to our PING within ``ping_timeout``: the connection is silently gone."""


class _PrimaryMoved(Exception):
    """The sentinels name another server as the primary: this connection follows a replica."""


class PubSubLink:
    """Subscriptions to a set of topics over one connection (one per server or cluster shard).

    ``topics`` is what this link *should* be subscribed to; it survives reconnects. Callbacks:
    ``on_message(topic, payload)`` for every delivered message, ``on_state()`` whenever
    :attr:`up` changes, ``on_misrouted(topic)`` when the server refuses or drops a topic that
    belongs to another shard, ``on_connect_failed()`` after a failed (re)connect attempt.

    ``factory()`` is awaited at every connect for where to connect (with Sentinel it asks the
    sentinels). ``is_primary(desc)``, when given, is asked every ``ping_interval`` while
    connected (module docstring): False makes the link reconnect, None (cannot tell) keeps it.
    """

    def __init__(
        self,
        name: str,
        factory: Callable[[], Awaitable[AbstractConnection]],
        *,
        sharded: bool,
        on_message: Callable[[bytes, bytes], None],
        on_state: Callable[[], None],
        on_misrouted: Callable[[bytes], None] | None = None,
        on_connect_failed: Callable[[], None] | None = None,
        is_primary: _IsPrimary | None = None,
        options: LinkOptions,
    ) -> None:
        self.name = name
        self.topics: set[bytes] = set()
        self.up = False
        self._factory = factory
        self._sub_cmd = "SSUBSCRIBE" if sharded else "SUBSCRIBE"
        self._unsub_cmd = "SUNSUBSCRIBE" if sharded else "UNSUBSCRIBE"
        self._on_message = on_message
        self._on_state = on_state
        self._on_misrouted = on_misrouted
        self._on_connect_failed = on_connect_failed
        self._ping_interval = options.ping_interval
        self._ping_timeout = options.ping_timeout
        self._backoff = (options.backoff_min, options.backoff_max)
        self._confirm_timeout = options.confirm_timeout
        self._connect_timeout = options.connect_timeout
        self._wire: _LinkWire | None = None  # the current connection, once connected
        self._reader = hiredis.Reader()
        self._last_rx = 0.0  # loop time of the last byte from the server
        self._ping_sent: float | None = None
        self._expect: deque[_Expect] = deque()
        self._waiters: dict[bytes, deque[asyncio.Future[None]]] = {}
        self._unconfirmed: set[bytes] = set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._first_attempt = asyncio.Event()
        self._is_primary = is_primary
        self._check_now = asyncio.Event()
        self._retry_now = asyncio.Event()  # set: the pause before the next connect ends at once

    @property
    def pending(self) -> bool:
        """Still in its first connection attempt: neither up nor failed yet."""
        return not self.up and not self._first_attempt.is_set()

    # --- public -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"pushgate-pubsub-{self.name}")

    async def close(self) -> None:
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    def check_primary(self) -> None:
        """Ask now (not at the next interval) whether the server is still the primary."""
        self._check_now.set()

    async def add(self, topic: bytes, *, wait: bool = True) -> None:
        """Subscribe to ``topic``; with ``wait``, return once the server confirmed it (bounded).

        While the link is down the topic is only recorded: it is subscribed on reconnect, and
        the owner hears about the gap through ``on_state``. A link still making its first
        connection is waited for (bounded), since nothing was lost yet.
        """
        if topic in self.topics:
            return
        self.topics.add(topic)
        wire = self._wire
        if wire is None:
            if wait and self.pending:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._first_attempt.wait(), self._confirm_timeout)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(topic, deque()).append(fut)
        self._send(wire, "sub", topic)
        if not wait:
            return
        try:
            await asyncio.wait_for(asyncio.shield(fut), self._confirm_timeout)
        except TimeoutError:
            log.warning("pub/sub %s: no confirmation for %r within %.1fs", self.name, topic, self._confirm_timeout)

    async def remove(self, topic: bytes) -> None:
        if topic not in self.topics:
            return
        self.topics.discard(topic)
        self._unconfirmed.discard(topic)
        wire = self._wire
        if wire is not None:
            self._send(wire, "unsub", topic)
        self._maybe_up()

    # --- internals ----------------------------------------------------------------------------

    def _send(self, wire: _LinkWire, kind: Literal["sub", "unsub"], topic: bytes) -> None:
        # The expectation is queued with the write, so the FIFO order matches the wire's.
        self._expect.append((kind, topic))
        wire.write(command(self._sub_cmd if kind == "sub" else self._unsub_cmd, topic))

    async def _run(self) -> None:
        delays = backoff(*self._backoff)
        loop = asyncio.get_running_loop()
        while not self._closing:
            wire = _LinkWire(self)
            follower: asyncio.Task[None] | None = None
            self._retry_now.clear()  # set from now on (the primary moved): skip the next pause
            try:
                desc = await self._factory()
                await open_wire(desc, wire, self._connect_timeout)
                self._reader = hiredis.Reader()
                self._last_rx, self._ping_sent = loop.time(), None
                self._wire = wire
                for what, cmd in handshake(desc):  # pipelined; a refusal kills the link
                    self._expect.append(("ctl", what.encode()))
                    wire.write(cmd)
                self._resubscribe(wire)
                if self._is_primary is not None:
                    follower = asyncio.create_task(self._follow_primary(wire, desc, self._is_primary),
                                                   name=f"pushgate-pubsub-{self.name}-primary")
                await self._watch(wire)  # returns only by raising
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self._closing:
                    log.warning("pub/sub %s: link lost: %s", self.name, _describe(exc))
            finally:
                if follower is not None:
                    follower.cancel()
                was_up = self.up
                self._wire = None
                self._went_down(wire)
            if self._closing:
                break
            if not self._first_attempt.is_set():
                self._first_attempt.set()
                self._on_state()  # the owner now counts this link as down
            if was_up:
                delays = backoff(*self._backoff)
            elif self._on_connect_failed is not None:
                self._on_connect_failed()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._retry_now.wait(), next(delays))

    def retry_now(self) -> None:
        """The primary moved (:meth:`.connection.RedisConnection.watch_primary`): a link waiting
        to reconnect does so at once."""
        self._retry_now.set()

    async def _follow_primary(self, wire: _LinkWire, desc: AbstractConnection, is_primary: _IsPrimary) -> None:
        """Every ``ping_interval`` (or at once on :meth:`check_primary`), ask whether the server
        is still the primary; fail the connection when it is not (module docstring)."""
        self._check_now.clear()
        while not wire.lost.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._check_now.wait(), self._ping_interval)
            self._check_now.clear()
            try:
                verdict = await is_primary(desc)
            except Exception as exc:  # never kill the link over a failed check: ask again later
                log.warning("pub/sub %s: cannot check the primary: %r", self.name, exc)
                verdict = None
            if verdict is False:
                where = f"{getattr(desc, 'host', '?')}:{getattr(desc, 'port', '?')}"
                wire.fail(_PrimaryMoved(f"{where} is no longer the primary (failover)"))
                return

    def _resubscribe(self, wire: _LinkWire) -> None:
        topics = list(self.topics)
        self._unconfirmed = set(topics)
        if topics:
            self._expect.extend(("sub", t) for t in topics)
            # One write for all of them: a node may hold thousands of channels.
            wire.write(b"".join(command(self._sub_cmd, t) for t in topics))
        self._maybe_up()

    async def _watch(self, wire: _LinkWire) -> None:
        """Liveness: a PING after ``ping_interval`` of silence, dead after ``ping_timeout``
        without a byte back, or when the connection closes. Wakes once per interval or so;
        the traffic itself is handled by :meth:`_on_data`, without this task."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            if self._ping_sent is None:
                wait = self._last_rx + self._ping_interval - now
                if wait <= 0:
                    self._expect.append(("ping", b""))
                    wire.write(_PING)
                    self._ping_sent = now
                    continue
            else:
                wait = self._ping_sent + self._ping_timeout - now
                if wait <= 0:
                    raise _LinkDead(f"no reply to PING within {self._ping_timeout}s")
            done, _ = await asyncio.wait((wire.lost,), timeout=wait)
            if done:
                raise wire.lost.result()

    def _on_data(self, wire: _LinkWire, data: bytes) -> None:
        """Everything one socket read brought, handled in one go (hot path on every node)."""
        if wire is not self._wire:
            return
        self._last_rx, self._ping_sent = wire.loop.time(), None
        reader = self._reader
        try:
            reader.feed(data)
            while (msg := reader.gets()) is not False:
                if msg.__class__ is list and len(msg) == 3 and msg[0] in _MESSAGE_KINDS:
                    try:
                        self._on_message(msg[1], msg[2])
                    except Exception:
                        log.exception("pub/sub %s: message handler failed", self.name)
                elif isinstance(msg, hiredis.ReplyError):
                    self._on_error_reply(msg)
                else:
                    try:
                        self._dispatch(msg)
                    except Exception:
                        log.exception("pub/sub %s: cannot handle %r", self.name, msg)
        except hiredis.ProtocolError as exc:
            wire.fail(_LinkDead(f"protocol error: {exc}"))

    def _dispatch(self, msg: object) -> None:
        if not isinstance(msg, list) or len(msg) < 2:
            if msg in (b"PONG", "PONG"):
                self._pop_expect("ping", b"")
            elif self._expect and self._expect[0][0] == "ctl":
                self._expect.popleft()  # +OK to AUTH / SELECT
            return
        kind = msg[0]
        if kind in _MESSAGE_KINDS:
            try:
                self._on_message(msg[1], msg[2])
            except Exception:
                log.exception("pub/sub %s: message handler failed", self.name)
        elif kind in _SUBSCRIBE_KINDS:
            self._pop_expect("sub", msg[1])
            self._confirmed(msg[1])
        elif kind in _UNSUBSCRIBE_KINDS:
            if not self._pop_expect("unsub", msg[1]) and msg[1] in self.topics:
                # The server dropped a topic we did not ask to drop: its slot moved to
                # another shard (Redis/Valkey Cluster sends SUNSUBSCRIBE then).
                self._report_misrouted(msg[1])
        elif kind == b"pong":
            self._pop_expect("ping", b"")

    def _pop_expect(self, kind: Literal["sub", "unsub", "ping", "ctl"], topic: bytes) -> bool:
        if self._expect and self._expect[0] == (kind, topic):
            self._expect.popleft()
            return True
        try:  # out of step (should not happen): drop the match so the FIFO cannot grow
            self._expect.remove((kind, topic))
        except ValueError:
            return False
        return True

    def _on_error_reply(self, exc: object) -> None:
        kind, topic = self._expect.popleft() if self._expect else ("ping", b"")
        if kind == "ctl" and self._wire is not None:  # AUTH / SELECT refused: reconnect later
            self._wire.fail(_LinkDead(f"{topic.decode()} refused: {exc}"))
            return
        log.warning("pub/sub %s: %s %r refused: %s", self.name, kind, topic, exc)
        if kind == "sub":
            self._confirmed(topic)
            if topic in self.topics:
                self._report_misrouted(topic)

    def _report_misrouted(self, topic: bytes) -> None:
        # This shard does not serve the topic (any more): forget it here, so that the owner can
        # give it to the shard that does; until then the link's state stays truthful.
        self.topics.discard(topic)
        self._unconfirmed.discard(topic)
        if self._on_misrouted is not None:
            self._on_misrouted(topic)
        self._maybe_up()

    def _confirmed(self, topic: bytes) -> None:
        waiters = self._waiters.get(topic)
        if waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
            if not waiters:
                del self._waiters[topic]
        self._unconfirmed.discard(topic)
        self._maybe_up()

    def _maybe_up(self) -> None:
        if not self.up and self._wire is not None and not self._unconfirmed:
            self.up = True
            self._first_attempt.set()
            self._on_state()

    def _went_down(self, wire: _LinkWire) -> None:
        self._expect.clear()
        self._unconfirmed.clear()
        for waiters in self._waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
        self._waiters.clear()
        wire.close()
        if self.up:
            self.up = False
            if not self._closing:
                self._on_state()


def _describe(exc: BaseException) -> str:
    """One line for the log: the failures a peer causes are expected, so no traceback."""
    if isinstance(exc, (_LinkDead, _PrimaryMoved, BrokerUnavailable)):
        return str(exc)
    return repr(exc)


class _LinkWire(asyncio.Protocol):
    """One connection of a link (a new one per connect: late callbacks of an old one are told
    apart by identity). ``lost`` resolves with the exception that ended it."""

    def __init__(self, link: PubSubLink) -> None:
        self.link = link
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[BaseException] = self.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.link._on_data(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(exc if exc is not None else ConnectionError("connection closed by server"))

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def fail(self, exc: BaseException) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)
        self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()
