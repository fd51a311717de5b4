"""One channel's stream on this node, as a state machine without I/O.

Publications reach a node in per-channel offset order, but not always whole: a pub/sub message
can be lost (an offset gap), the broker link can drop and come back (anything in between is
lost), and a subscriber that recovers from history must see its replay, then live traffic, with
nothing missing, repeated or reordered. :class:`ChannelStream` keeps those promises for one
channel. It is fed events and answers with what to do; the node carries the answers out (fan
out, read history, close connections), the way h11 and python-websockets keep protocol state
apart from sockets. So every ordering rule here is tested with plain method calls
(``tests/test_stream.py``), not through sockets and timing.

Events in::

    publication(pub)            a live publication arrived from the broker
    begin(sub) / cancel(sub)    a subscriber starts replaying history / gave up
    finish(sub, replay_end)     the subscriber's replay is sent: make it live
    link_restored()             the broker link came back: fill what was missed
    fill_done(result)           the history read of a fill finished (None: it failed)

Answers out: :data:`DELIVER` (fan this publication out to the live subscribers), :data:`SKIP`
(nothing to do), :class:`StartFill` (read history after ``since``, then call
:meth:`ChannelStream.fill_done`) and :class:`FillOutcome` (deliver these, release these held
subscribers with their catch-up, and — when history could not prove the stream whole — tell
the subscribers in-band where the stream goes on from, so nobody reconnects).

Recovery reads are shared (single flight): when many subscribers recover the same channel at
once — every client of a node that died reconnects to the survivors within seconds — the node
reads the channel's history once (:meth:`ChannelStream.shared_read`) and serves each of them from
it (:meth:`ChannelStream.recover`), together with the *tail*: every publication this node handed
out since that read began. The read's snapshot holds everything delivered before it began
(history is appended before fan-out), the tail everything after, so a subscriber served from
them misses nothing, whenever within the sharing window it arrived.

Subscribers are opaque hashable keys (the node uses its connections).

State, per channel:

* ``last``: the position of the newest publication handed out here; anything at or before it
  in the same epoch is a duplicate and is skipped. A different epoch means history was reset:
  the publication is delivered and becomes the new position (offsets restart). ``last_data``
  is that publication's data (None when ``last`` came from a history position), so that after
  a broker failover the node can tell whether the broker still holds what it delivered.
* ``held``: subscribers replaying history. Live publications are appended to their lists
  instead of being sent; :meth:`finish` returns the ones newer than the replay.
* ``filling``: while a fill is in flight, arriving publications are buffered (not delivered),
  so the fill's history and the buffer can be merged in offset order. A subscriber that
  finishes its replay during a fill stays held until the fill ends (its catch-up is computed
  against its own replay position, so it gets neither a gap nor a duplicate).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Final

from .backends.broker import HistoryResult, Publication, StreamPosition
from .backends.history import select_history

#: How long a finished shared read keeps serving recoveries (seconds). Clients spread their
#: reconnects over a jittered window of about this size after a node dies.
SHARE_FOR: Final = 2.0
#: Publications a shared read's tail may hold; past it the read stops serving newcomers.
MAX_TAIL: Final = 10_000


class _Verdict:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


DELIVER: Final = _Verdict("DELIVER")
"""Fan the publication out to the channel's live subscribers (already recorded as delivered)."""
SKIP: Final = _Verdict("SKIP")
"""Nothing to do: a duplicate, or buffered while a fill is in flight."""


@dataclass(frozen=True, slots=True)
class StartFill:
    """Read the channel's history after ``since``, then report it to :meth:`ChannelStream.fill_done`.

    ``verify`` (after the broker link came back): first ask the broker whether the stream went
    back behind ``since`` (a failover lost writes this node delivered; ``data`` is what it
    delivered at ``since``) and, if so, to start a new epoch (``Broker.reset_if_rewound``),
    so the read finds another epoch and the subscribers resync instead of later publications
    reusing offsets they already hold."""

    since: StreamPosition
    verify: bool = False
    data: bytes | None = None


@dataclass(frozen=True, slots=True)
class FillOutcome:
    """What a finished fill asks for.

    When the gap was filled (``resync_at`` is None): fan ``deliver`` out to the live
    subscribers, oldest first; then for each of ``release`` (subscribers that finished their
    replay during the fill) send its catch-up and make it live.

    When it could not be filled, ``resync_at`` is where the stream goes on from: tell every
    live subscriber so on its open connection (a ``resync`` push; the connection stays open and
    the client continues from there, knowing it missed something), send each released
    subscriber the part of its catch-up up to ``resync_at`` and then the same resync, make it
    live, and fan ``deliver`` (all after ``resync_at``) out to everyone.
    """

    deliver: tuple[Publication, ...] = ()
    release: tuple[tuple[Hashable, tuple[Publication, ...]], ...] = ()
    resync_at: StreamPosition | None = None

    @property
    def resync(self) -> bool:
        return self.resync_at is not None


@dataclass(slots=True)
class _Held:
    publications: list[Publication] = field(default_factory=list)
    replay_end: StreamPosition | None = None  # set when the replay finished during a fill


@dataclass(eq=False, slots=True)
class SharedRead:
    """One read of a channel's whole kept history, serving every recovery around the same time.

    ``tail`` collects what the node delivered after the read began; ``result`` is set when the
    read returns (``failed`` when it raised). Compared by identity, so the node can key its
    in-flight futures by it.
    """

    result: HistoryResult | None = None
    tail: list[Publication] = field(default_factory=list)
    serve_until: float = float("inf")
    failed: bool = False
    overflowed: bool = False


def newer(pub: Publication, position: StreamPosition) -> bool:
    """True unless ``pub`` is at or before ``position`` in the same epoch."""
    return pub.epoch != position.epoch or pub.offset > position.offset


def newer_position(a: StreamPosition, b: StreamPosition) -> bool:
    """True unless ``a`` is at or before ``b`` in the same epoch."""
    return a.epoch != b.epoch or a.offset > b.offset


class ChannelStream:
    """One channel's ordering, dedupe, held replays and gap fills on this node (no I/O)."""

    __slots__ = ("_buffer", "_held", "_shared", "gap_fill", "last", "last_data")

    def __init__(self, position: StreamPosition, *, gap_fill: bool = True) -> None:
        self.last = position
        self.last_data: bytes | None = None
        #: fill offset gaps from history; off for channels without history (nothing to fill from)
        self.gap_fill = gap_fill
        self._held: dict[Hashable, _Held] = {}
        self._buffer: list[Publication] | None = None  # not None while a fill is in flight
        self._shared: SharedRead | None = None

    # -- queries -----------------------------------------------------------------------------
    @property
    def filling(self) -> bool:
        return self._buffer is not None

    @property
    def held(self) -> int:
        """How many subscribers are replaying (or waiting for a fill to end)."""
        return len(self._held)

    def is_held(self, sub: Hashable) -> bool:
        return sub in self._held

    def held_subscribers(self) -> list[Hashable]:
        return list(self._held)

    # -- live traffic (hot path) --------------------------------------------------------------
    def publication(self, pub: Publication) -> _Verdict | StartFill:
        """A live publication arrived. Hot path: a few comparisons, no allocation when delivering."""
        buffer = self._buffer
        if buffer is not None:
            buffer.append(pub)
            return SKIP
        last = self.last
        if pub.epoch == last.epoch:
            if pub.offset <= last.offset:
                return SKIP  # already delivered (e.g. by a fill)
            if pub.offset > last.offset + 1 and self.gap_fill:
                self._buffer = [pub]
                return StartFill(last)
        self._record(pub)
        return DELIVER

    def _record(self, pub: Publication) -> None:
        self.last = StreamPosition(pub.epoch, pub.offset)
        self.last_data = pub.data
        shared = self._shared
        if shared is not None:
            if len(shared.tail) < MAX_TAIL:
                shared.tail.append(pub)
            else:
                shared.overflowed = True
                self._shared = None
        if self._held:
            for held in self._held.values():
                if held.replay_end is None or newer(pub, held.replay_end):
                    held.publications.append(pub)

    # -- subscribers replaying history --------------------------------------------------------
    def begin(self, sub: Hashable) -> None:
        """``sub`` starts reading history: hold live publications for it from now on."""
        self._held[sub] = _Held()

    def cancel(self, sub: Hashable) -> None:
        """``sub`` gave up (error, unsubscribe, disconnect) before it went live."""
        self._held.pop(sub, None)

    def finish(self, sub: Hashable, replay_end: StreamPosition) -> list[Publication] | None:
        """``sub`` has sent its replay, which ends at ``replay_end``.

        Returns the held publications newer than the replay (send them, then ``sub`` is live),
        or None while a fill is in flight: ``sub`` stays held and comes back in the fill's
        :attr:`FillOutcome.release` with exactly what it still needs. Also None for an unknown
        ``sub`` (cancelled meanwhile): nothing to send, do not make it live.
        """
        held = self._held.get(sub)
        if held is None:
            return None
        if self._buffer is not None:
            held.replay_end = replay_end
            held.publications = [p for p in held.publications if newer(p, replay_end)]
            return None
        del self._held[sub]
        return [p for p in held.publications if newer(p, replay_end)]

    # -- shared recovery reads ----------------------------------------------------------------
    def shared_read(self, now: float) -> tuple[SharedRead, bool]:
        """The read to recover from, and True when the caller must start it (read the channel's
        whole kept history, then call :meth:`read_done` or :meth:`read_failed`)."""
        shared = self._shared
        if shared is not None and not shared.failed and (shared.result is None or now <= shared.serve_until):
            return shared, False
        shared = self._shared = SharedRead()
        return shared, True

    def read_done(self, shared: SharedRead, result: HistoryResult, now: float) -> None:
        shared.result = result
        shared.serve_until = now + SHARE_FOR

    def read_failed(self, shared: SharedRead) -> None:
        shared.failed = True
        if self._shared is shared:
            self._shared = None

    def recover(
        self, shared: SharedRead, since: StreamPosition, *, best_effort: bool = False
    ) -> tuple[StreamPosition, bool, list[Publication]] | None:
        """Serve one recovery from ``shared``: (position, recovered, replay), oldest first.

        ``recovered`` is False when history cannot prove the subscriber whole (another epoch,
        publications after ``since`` already trimmed, or a position this node never saw). The
        replay is then empty and the position is where history stands — unless ``best_effort``
        (user streams: an offline inbox delivers what it still keeps), when the replay holds
        every kept publication after ``since`` (all of them in another epoch). None when
        ``shared`` cannot serve (its tail overflowed): read history for this subscriber alone.
        """
        result = shared.result
        if result is None or shared.overflowed:
            return None
        position, tail = result.position, shared.tail
        if any(p.epoch != position.epoch for p in tail):
            return position, False, []  # history was reset while the read was shared
        newest = max(position.offset, tail[-1].offset if tail else 0)
        if since.epoch == position.epoch and since.offset > newest:
            return position, False, []  # a position this node never saw
        replay: list[Publication] = []
        recovered = since.epoch == position.epoch
        if recovered and since.offset < position.offset:
            chosen = select_history(result.publications, position, since, None)
            recovered = chosen.complete
            replay = list(chosen.publications) if recovered else []
        if not recovered:
            if not best_effort:
                return position, False, []
            replay = [p for p in result.publications if newer(p, since)]
        covered = max(since.offset, position.offset) if since.epoch == position.epoch else position.offset
        replay.extend(p for p in tail if p.offset > covered)
        end = replay[-1].offset if replay else covered
        return StreamPosition(position.epoch, end), recovered, replay

    # -- gaps and fills ----------------------------------------------------------------------
    def link_restored(self) -> StartFill | None:
        """The broker link is back: whatever was published meanwhile must come from history."""
        self._shared = None  # what was read before the outage may lack what the outage lost
        if self._buffer is not None:
            return None  # a fill already in flight will read history after this point anyway
        self._buffer = []
        return StartFill(self.last, verify=True, data=self.last_data)

    def fill_done(self, result: HistoryResult | None) -> FillOutcome:
        """The history read of a fill finished; ``None`` when it failed (broker unreachable)."""
        buffered = self._buffer or []
        self._buffer = None
        deliver: list[Publication] = []
        resync = result is None or not result.complete
        if resync:
            self._shared = None
        # An incomplete read still holds what history kept (everything after the trimmed part,
        # or the new epoch's start): deliver that too, so only what is really gone is missed.
        candidates: Iterable[Publication] = buffered if result is None else [*result.publications, *buffered]
        if result is not None and result.position.epoch != self.last.epoch:
            # History was reset (lost keys, or a failover that went back: see StartFill). What
            # arrived meanwhile in the old epoch may sit at offsets the subscribers already
            # hold: only the new epoch goes on, after the resync.
            old = self.last.epoch
            candidates = [p for p in candidates if p.epoch != old]
        for pub in candidates:
            if newer(pub, self.last):
                self._record(pub)
                deliver.append(pub)
        release: list[tuple[Hashable, tuple[Publication, ...]]] = []
        for sub, held in list(self._held.items()):
            if held.replay_end is not None:
                del self._held[sub]
                release.append((sub, tuple(held.publications)))
        resync_at: StreamPosition | None = None
        if resync:
            if deliver:
                resync_at = StreamPosition(deliver[0].epoch, deliver[0].offset - 1)
            else:
                if result is not None and newer_position(result.position, self.last):
                    self.last = result.position
                    self.last_data = None
                resync_at = self.last
        return FillOutcome(tuple(deliver), tuple(release), resync_at)


__all__ = [
    "DELIVER",
    "MAX_TAIL",
    "SHARE_FOR",
    "SKIP",
    "ChannelStream",
    "FillOutcome",
    "SharedRead",
    "StartFill",
    "newer",
]
