"""This node's connections, indexed by id, user and channel, and the fan-out over them.

The hub knows nothing about brokers, clusters or stream order (that is :mod:`pushgate.stream`):
the node tells it what to deliver. A payload is wrapped once in :class:`Outgoing`, which frames
it once per transport kind on first use; every connection then writes those same bytes (no
per-connection encoding, no task per message).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .config import MAX_FLUSH_WINDOW
from .protocol.outgoing import Outgoing

if TYPE_CHECKING:
    from .web.connection import Connection



#: a flush that starts sooner than this share of the last one's duration after it ended is
#: busy: writing fills 80 % of the loop or more (a publisher awaiting each broadcast, whose next
#: one arrives a round trip after the last flush). At 50 % (a gap equal to the duration) a node
#: serving 5,000 sockets at 10 msg/s, a 35-55 ms fan-out every 100 ms, held every other flush
#: and doubled its p99.
CROWDED_GAP = 0.25
#: waits shorter than this are no wait (uvloop's timers have 1 ms granularity): the next iteration
MIN_WAIT = 0.0005


class Hub:
    """Local connection indexes and fan-out.

    Write coalescing: transports that buffer (:class:`WsConnection`) queue frames and ask the hub
    to flush them; the hub flushes every such connection once, at the end of the current loop
    iteration. Under load many publications arrive in one iteration (one broker read holds
    many), and each connection then gets one ``write()`` for all of them instead of one per
    frame; the system call is most of a delivery's cost.

    Batching at steady rates too, without a cost at low ones: once a flush was busy (it carried
    more frames than sockets, or it started within :data:`CROWDED_GAP` × the last flush's
    duration after that one ended: writing already fills 80 % of the loop), the next one may
    start no sooner than ``flush_pacing`` × this flush's duration after it ended. Frames queued meanwhile
    wait and leave together, so writes take at most about half the loop and each write carries
    every publication of the hold: the batch grows with the load. A flush of one frame per
    socket holds nothing, so a rate the node serves frame by frame pays no latency for it
    (measured: at 5,000 sockets and 10 msg/s a hold after every 45 ms flush added 20 ms to p99).
    ``flush_window`` holds every flush by a fixed time on top (the event loop's timer
    granularity is 1 ms under uvloop: holds under 0.5 ms are none). Holds are capped at
    :data:`~pushgate.config.MAX_FLUSH_WINDOW`, the bound of ``flush_window`` (docs/performance.md).

    Writing through, unless writing fills the loop: the first fan-out of a loop iteration
    writes each socket at once (:attr:`through`) instead of queueing and flushing it later,
    provided nothing is queued, no hold runs, the last flush was not busy (a busy node batches
    until a flush carries one frame per socket), and the fan-out does not start within
    :data:`CROWDED_GAP` × the last flush's or written-through fan-out's duration after that one
    ended. Nothing is queued anywhere then, so order holds; every later frame of the iteration
    queues as above. A broadcast to 5,000 sockets saves a queue entry, a list and a second pass
    per socket, and its first socket is written before the others are visited rather than after.
    The crowded rule keeps batching where it pays: a publisher that awaits each broadcast before
    the next sends it a round trip after the last write, so that fan-out queues, the flush behind
    it is busy, and the broadcasts that follow during the hold leave together, instead of every
    answer waiting for 5,000 writes. A steady rate whose writes take most but not all of the
    loop is written through every time: an earlier rule that first waited ``flush_pacing`` × the
    last duration queued every fan-out that followed one longer than half the period (5,000
    sockets at 10 msg/s when the kernel's writes slow down), and so delayed exactly the
    fan-outs that set p99 (docs/performance.md, "Tail latency").
    """

    def __init__(self, *, flush_window: float = 0.0, flush_pacing: float = 1.0) -> None:
        self.connections: dict[str, Connection] = {}
        self.users: dict[str, set[Connection]] = {}
        self.addresses: dict[str, int] = {}  # open connections per client address
        #: live subscribers per channel (subscribers still replaying history are held by the
        #: channel's :class:`~pushgate.stream.ChannelStream` and join here when they go live)
        self.channels: dict[str, set[Connection]] = {}
        self.delivered = 0  # frames handed to transports, for metrics
        self._dirty: list[Connection] = []
        self._flush_scheduled = False
        self.flush_window = flush_window
        self.flush_pacing = flush_pacing
        self._next_flush = 0.0  # perf_counter() before which no flush starts
        self._delivered_at_flush = 0
        #: write at once instead of queueing (read by FramedConnection.send on the hot path):
        #: no connection has anything queued, no flush is scheduled and no hold is running
        self.through = True
        self._through_at = 0.0  # perf_counter() before which nothing is written through
        self._last_end = 0.0  # when the last flush or written-through fan-out ended (perf_counter)
        self._last_took = 0.0  # and how long it took
        self._reopen_scheduled = False

    def want_flush(self, conn: Connection) -> None:
        """Flush ``conn`` with the next flush (call once per pending batch): at the end of this
        loop iteration, or when the hold after the last flush is over."""
        self._dirty.append(conn)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.through = False
            _after(self._next_flush - time.perf_counter(), self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, []
        started = time.perf_counter()
        # Busy: publications already arrive faster than one per flush (more frames than
        # sockets), or this flush starts within CROWDED_GAP x the last one's duration after it
        # (or the last written-through fan-out) ended, i.e. writing fills 80 % of the loop or
        # more. Only then is holding the next flush worth its latency. (Frames counted by
        # fan-out; replies sent outside it count as none.)
        busy = self.delivered - self._delivered_at_flush > len(dirty) or self._crowded(started)
        self._delivered_at_flush = self.delivered
        for conn in dirty:
            conn.flush()
        self._wrote(started, time.perf_counter(), busy)

    def _wrote(self, started: float, ended: float, busy: bool) -> None:
        """A flush (or a written-through fan-out) ran from ``started`` to ``ended``: set the hold
        before the next flush and when write-through may resume (see the class)."""
        took = ended - started
        self._last_end, self._last_took = ended, took
        pace = took * self.flush_pacing if busy else 0.0
        self._next_flush = max(self._next_flush, ended + min(MAX_FLUSH_WINDOW, max(self.flush_window, pace)))
        if busy:
            # Publications outrun the flushes: every one batches until a flush carries no more
            # than one frame per socket again (an idle spell ends in such a flush).
            self.through = False
            self._through_at = math.inf
        else:
            self._write_through_after(self._next_flush)

    def _crowded(self, now: float) -> bool:
        """Writing starting at ``now`` would follow the last flush or written-through fan-out
        within CROWDED_GAP x its duration: writes fill 80 % of the loop or more."""
        return now - self._last_end < self._last_took * CROWDED_GAP

    def _write_through_after(self, when: float) -> None:
        """Write fan-outs through again from ``when`` (perf_counter) on, if nothing is queued then."""
        self.through = False
        self._through_at = when
        if not self._reopen_scheduled:
            self._reopen_scheduled = True
            # at the soonest the next loop iteration: later fan-outs of this one still queue
            _after(when - time.perf_counter(), self._reopen)

    def _reopen(self) -> None:
        if self._flush_scheduled:
            self._reopen_scheduled = False
            return  # the pending flush decides anew when it ends
        wait = self._through_at - time.perf_counter()
        if wait == math.inf:  # a busy flush since: the next quiet flush reopens
            self._reopen_scheduled = False
        elif wait > MIN_WAIT:  # moved later since this call was scheduled
            _after(wait, self._reopen)
        else:
            self._reopen_scheduled = False
            self.through = True

    def add(self, conn: Connection) -> bool:
        """Register ``conn``; True if it is its user's first connection on this node."""
        self.connections[conn.id] = conn
        if conn.address is not None:
            self.addresses[conn.address] = self.addresses.get(conn.address, 0) + 1
        if conn.user is None:
            return False
        conns = self.users.get(conn.user)
        if conns is None:
            self.users[conn.user] = {conn}
            return True
        conns.add(conn)
        return False

    def remove(self, conn: Connection) -> bool:
        """Forget ``conn``; True if it was its user's last connection on this node."""
        if self.connections.pop(conn.id, None) is None:
            return False
        if conn.address is not None:
            left = self.addresses.get(conn.address, 1) - 1
            if left > 0:
                self.addresses[conn.address] = left
            else:
                self.addresses.pop(conn.address, None)
        if conn.user is None:
            return False
        conns = self.users.get(conn.user)
        if conns is None:
            return False
        conns.discard(conn)
        if not conns:
            del self.users[conn.user]
            return True
        return False

    def add_sub(self, channel: str, conn: Connection) -> bool:
        """Make ``conn`` a live subscriber of ``channel``; True if it is the channel's first here."""
        subs = self.channels.get(channel)
        if subs is None:
            self.channels[channel] = {conn}
            return True
        subs.add(conn)
        return False

    def remove_sub(self, channel: str, conn: Connection) -> bool:
        """Forget ``conn`` in ``channel``; True if the channel has no live subscriber left here."""
        subs = self.channels.get(channel)
        if subs is None:
            return True
        subs.discard(conn)
        if subs:
            return False
        del self.channels[channel]
        return True

    def user_count(self) -> int:
        return len(self.users)

    def channel_count(self) -> int:
        """Channels with live subscribers here (server-internal streams, named ``!…``, excluded)."""
        return sum(1 for name in self.channels if name[:1] != "!")

    def subscription_count(self) -> int:
        """Channel subscriptions of local connections (server-internal streams excluded)."""
        return sum(len(subs) for name, subs in self.channels.items() if name[:1] != "!")

    # -- fan-out (hot path) --
    def fanout(self, conns: Iterable[Connection], out: Outgoing) -> int:
        through = self.through  # FramedConnection.send writes at once while it holds
        started = time.perf_counter() if through else 0.0
        if through and self._crowded(started):
            # Crowded: this follows the last write so closely that writing fills the loop (a
            # publisher awaiting each broadcast). Queue it; the flush behind it counts as busy,
            # so the fan-outs that follow batch.
            self._write_through_after(started)
            through = False
        n = 0
        for conn in conns:
            conn.send(out)
            n += 1
        self.delivered += n
        if through:
            # Written through: a flush of one frame per socket, never busy.
            self._delivered_at_flush += n
            self._wrote(started, time.perf_counter(), busy=False)
        return n

    def to_channel(self, channel: str, out: Outgoing) -> int:
        """Deliver one frame to the live subscribers of ``channel`` on this node."""
        subs = self.channels.get(channel)
        return self.fanout(subs, out) if subs else 0

    def to_user(self, user: str, out: Outgoing) -> int:
        conns = self.users.get(user)
        return self.fanout(tuple(conns), out) if conns else 0

    def to_all(self, out: Outgoing) -> int:
        return self.fanout(tuple(self.connections.values()), out)


def _after(wait: float, callback: Callable[[], None]) -> None:
    """``callback`` in ``wait`` seconds, or in the next loop iteration when that is under MIN_WAIT."""
    loop = asyncio.get_running_loop()
    if wait > MIN_WAIT:
        loop.call_later(wait, callback)
    else:
        loop.call_soon(callback)
