"""The history rules of every broker, written down once, and their Python implementation.

A channel's history is a *stream*: publications numbered by ``offset`` within an ``epoch``.
Every broker follows these rules; the conformance suite (``tests/backends``) holds each to them.

Appending (on every publish)
  1. The offset counts publications of the channel: the first is 1, each publish adds 1. The
     stream's *position* is ``(epoch, newest offset)``; ``(epoch, 0)`` before any publication.
  2. The epoch is made when the stream is (re)created: when the broker starts (memory), when
     the memory broker forgets the channel's position (rule 5), or when the channel's meta key
     is missing (Redis: never written, expired or lost). A new epoch starts at offset 0 with no
     history, so positions from an older epoch are recognised.
  3. With ``HistoryOptions.size > 0`` and ``ttl > 0`` the publication is kept: only the newest
     ``size`` are kept, and none longer than ``ttl`` after it was appended (memory expires each
     entry by its own age; Redis expires the whole list ``ttl`` after the newest publication, so
     the list always stays a contiguous run). With ``size <= 0`` or ``ttl <= 0`` nothing is kept
     and what was kept is dropped; the offset still counts. The memory broker also bounds the
     whole process (``history_max_channels``: the least recently published channels lose their
     history first; ``history_max_bytes``: the oldest entries of any channel go first) and
     expires actively, so memory is freed without anyone reading (:mod:`.history_memory`).
  4. What is kept is always a contiguous run of offsets ending at the position's offset.
  5. The epoch and offset outlive the history (Redis: for ``meta_ttl``, at least ``ttl``;
     memory: as a compact position record, at most ``max(history_max_channels, 1024)`` of them,
     least recently published forgotten first), so a client that comes back after its history
     expired learns that it missed something instead of silently starting over. When the memory
     broker forgets positions it moves on to a new epoch for every stream created afterwards, so
     a forgotten channel that comes back never reuses offsets of its old epoch: a client holding
     an old position gets ``complete`` False, never a silent gap. Channels subscribed on the
     node are never forgotten.

Reading (:func:`select_history`)
  6. Without ``since``: every kept publication, oldest first, or the newest ``limit``.
  7. With ``since``: the publications with offset > ``since.offset``, oldest first, at most
     ``limit``. ``complete`` is True only when that is *everything* the client missed: same
     epoch, ``since.offset`` not ahead of the position, and nothing after ``since`` trimmed
     (``since.offset >= oldest kept - 1``). Otherwise ``complete`` is False and every kept
     publication (at most ``limit``) is returned instead, so the caller can still show the most
     it has. A negative ``limit`` counts as 0.
  7a. Entries whose data is not valid UTF-8 (written into Redis by something that is not pushgate)
     are left out of what a reader gets; they still count as offsets, so ``complete`` is not
     affected (nothing deliverable is missing).
  8. Reading a stream that does not exist yet creates its epoch (Redis), so two readers asking
     before the first publish agree on the epoch the publisher will use. (Memory: every stream
     not created yet has the broker's current epoch, and subscribing creates the position
     record, so a subscriber's epoch is the one its first publication will carry.)

Where the rules live: here in Python for the memory broker (:class:`HistoryBuffer`, one
channel; :mod:`.history_memory` keeps all channels of a broker within bounds and expires them
actively), and in the Lua scripts of ``redis/scripts.py``, which must apply them inside
Redis because the offset is assigned atomically with the append and the fan-out. Those two are
the only copies; the Lua comments name the rule numbers above.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from pushgate.backends.broker import HistoryOptions, HistoryResult, Publication, StreamPosition

__all__ = ["ENTRY_OVERHEAD", "HistoryBuffer", "select_history"]


def select_history(
    kept: Sequence[Publication],
    position: StreamPosition,
    since: StreamPosition | None,
    limit: int | None,
) -> HistoryResult:
    """Rules 6 and 7: pick what a reader gets from the publications a channel still keeps.

    ``kept`` is oldest first and contiguous up to ``position.offset`` (rule 4).
    """
    if limit is not None:
        limit = max(0, limit)
    if since is None:
        pubs = list(kept) if limit is None else list(kept[len(kept) - limit :] if limit else [])
        return HistoryResult(pubs, position, True)
    oldest = kept[0].offset if kept else position.offset + 1
    complete = since.epoch == position.epoch and since.offset <= position.offset and since.offset >= oldest - 1
    after = [p for p in kept if p.offset > since.offset] if complete else list(kept)
    if limit is not None:
        after = after[:limit]
    return HistoryResult(after, position, complete)


class HistoryBuffer:
    """One channel's kept publications in process memory: rules 1, 3, 4 (and the epoch of rule 2).

    Entries carry the monotonic time they were appended; they expire by that time plus the
    channel's latest ``ttl``. The buffer counts its bytes (data plus :data:`ENTRY_OVERHEAD` per
    entry) so its owner (:class:`~.history_memory.MemoryHistory`) can bound the whole process.
    ``expiry_key``/``age_key`` are that owner's bookkeeping (the keys of the buffer's items in
    its heaps). Methods take ``now`` so that tests drive time by hand.
    """

    __slots__ = ("age_key", "channel", "entries", "epoch", "expiry_key", "nbytes", "offset", "ttl")

    def __init__(self, channel: str = "", epoch: str = "", offset: int = 0) -> None:
        self.channel = channel
        self.epoch = epoch
        self.offset = offset
        self.ttl = 0.0
        self.nbytes = 0
        self.entries: deque[tuple[Publication, float]] = deque()
        self.expiry_key: float | None = None
        self.age_key: float | None = None

    def append(self, data: bytes, options: HistoryOptions, now: float) -> Publication:
        """Number the publication (rule 1), keep or drop it (rule 3) and return it."""
        self.offset += 1
        pub = Publication(channel=self.channel, data=data, offset=self.offset, epoch=self.epoch)
        self.ttl = options.ttl
        entries = self.entries
        if options.size > 0 and options.ttl > 0:
            entries.append((pub, now))
            self.nbytes += len(data) + ENTRY_OVERHEAD
            while len(entries) > options.size:
                self.drop_oldest()
        else:
            entries.clear()
            self.nbytes = 0
        self.expire(now)
        return pub

    def read(self, since: StreamPosition | None, limit: int | None, now: float) -> HistoryResult:
        self.expire(now)
        kept = [pub for pub, _ in self.entries]
        return select_history(kept, StreamPosition(self.epoch, self.offset), since, limit)

    @property
    def deadline(self) -> float:
        """When the oldest entry expires (call only while entries are kept)."""
        return self.entries[0][1] + self.ttl

    @property
    def oldest(self) -> float:
        """When the oldest entry was appended (call only while entries are kept)."""
        return self.entries[0][1]

    def drop_oldest(self) -> None:
        pub, _ = self.entries.popleft()
        self.nbytes -= len(pub.data) + ENTRY_OVERHEAD

    def expire(self, now: float) -> None:
        """Drop entries older than the channel's ttl (rule 3, memory flavour).

        The comparison is the one the owner's expiry heap uses (``deadline < now``), so a sweep
        that finds a deadline passed always frees at least that entry."""
        entries = self.entries
        ttl = self.ttl
        while entries and entries[0][1] + ttl < now:
            self.drop_oldest()


ENTRY_OVERHEAD = 200
"""Bytes counted per kept entry besides its data: the Publication, the deque slot, the tuple and
the float, roughly. Counting it makes ``history_max_bytes`` a bound on memory even for tiny
payloads."""
