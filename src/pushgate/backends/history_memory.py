"""Every channel's history of one memory broker, bounded and expired actively.

The memory broker is the single-node default, so its history is the process's memory: it must
stay within limits however many channels are published to, and be freed when it expires even
if nobody reads it again. :class:`MemoryHistory` keeps, per channel, either

* a :class:`~.history.HistoryBuffer` (the channel keeps publications), in ``_streams``, ordered
  from least to most recently published; at most ``max_channels`` of them, and at most
  ``max_bytes`` of kept entries in all (data plus :data:`~.history.ENTRY_OVERHEAD` each); or
* a compact position record ``(epoch, offset)`` (nothing kept: never kept, expired or evicted),
  in ``_idle``; at most ``max_positions`` of them (rule 5 of :mod:`.history`).

Expiry and the byte bound use two heaps with one item per buffer: ``(deadline of the oldest
entry)`` and ``(append time of the oldest entry)``. An item's key may fall behind its buffer (the
head moved on when entries were trimmed or read); such an item is re-keyed when it reaches the
top, so the publish path pushes only when a buffer starts keeping entries (O(log n) then,
nothing otherwise). Items of buffers that are gone are dropped when they surface, and a heap is
rebuilt when stale items outnumber live ones, so neither heap outgrows the channels it serves.

Nothing here does I/O or reads the clock: the caller passes ``now`` (``time.monotonic()``) and
runs :meth:`MemoryHistory.sweep` periodically (the broker's sweep task); tests drive time by hand.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Container

from pushgate.backends.broker import HistoryOptions, HistoryResult, Publication, StreamPosition
from pushgate.backends.history import HistoryBuffer, select_history

__all__ = ["MIN_POSITIONS", "MemoryHistory"]

MIN_POSITIONS = 1024
"""Position records kept at least, even when ``max_channels`` is tiny: offsets must keep counting."""

_HeapItem = tuple[float, int, HistoryBuffer]


class MemoryHistory:
    """All channels' streams of one memory broker (see the module docstring).

    ``pinned`` names channels whose position is never forgotten (the broker passes its set of
    subscribed channels: a node's live stream must not change epoch under its subscribers).
    """

    def __init__(
        self,
        epoch: str,
        *,
        max_channels: int = 100_000,
        max_bytes: int = 256 * 1024 * 1024,
        max_positions: int | None = None,
        pinned: Container[str] = frozenset(),
    ) -> None:
        self._base_epoch = epoch
        self._generation = 0
        #: the epoch of every stream created from now on (rule 2); changes when positions are forgotten
        self.epoch = epoch
        self.max_channels = max(0, max_channels)
        self.max_bytes = max(0, max_bytes)
        self.max_positions = max(MIN_POSITIONS, max_channels if max_positions is None else max_positions)
        self._pinned = pinned
        self._streams: dict[str, HistoryBuffer] = {}
        self._idle: dict[str, tuple[str, int]] = {}
        self._expiry: list[_HeapItem] = []
        self._ages: list[_HeapItem] = []
        self._seq = itertools.count()
        #: bytes of kept entries in all (data + ENTRY_OVERHEAD each): what ``max_bytes`` bounds
        self.bytes = 0
        #: publications dropped to honour max_channels / max_bytes (not ttl or size)
        self.evicted = 0

    # -- accounting ---------------------------------------------------------------------------
    @property
    def channels(self) -> int:
        """Channels keeping at least one publication (what ``max_channels`` bounds)."""
        return len(self._streams)

    @property
    def positions(self) -> int:
        """Channels known only by their position (what ``max_positions`` bounds)."""
        return len(self._idle)

    # -- the publish path -----------------------------------------------------------------------
    def append(self, channel: str, data: bytes, options: HistoryOptions, now: float) -> Publication:
        """Number a publication, keep it if ``options`` say so, then enforce the bounds.

        Hot path: a dict lookup and a move to the dict's end; heap work only when a channel
        starts keeping entries or a bound is exceeded.
        """
        streams = self._streams
        buf = streams.pop(channel, None)
        if options.size <= 0 or options.ttl <= 0:
            if buf is not None:
                self._retire(buf)
            epoch, offset = self._idle.pop(channel, (self.epoch, 0))
            self._idle[channel] = (epoch, offset + 1)
            if len(self._idle) > self.max_positions:
                self._forget()
            return Publication(channel, data, offset + 1, epoch)
        if buf is None:
            epoch, offset = self._idle.pop(channel, (self.epoch, 0))
            buf = HistoryBuffer(channel, epoch, offset)
        streams[channel] = buf  # most recently published last
        before = buf.nbytes
        old_ttl = buf.ttl
        pub = buf.append(data, options, now)
        self.bytes += buf.nbytes - before
        if not buf.entries:
            del streams[channel]
            self._retire(buf)
        else:
            if buf.expiry_key is None or (buf.ttl < old_ttl and buf.deadline < buf.expiry_key):
                self._push(self._expiry, buf, buf.deadline, expiry=True)
            if buf.age_key is None:
                self._push(self._ages, buf, buf.oldest, expiry=False)
            if len(streams) > self.max_channels or self.bytes > self.max_bytes:
                self._enforce_bounds()
        return pub

    def touch(self, channel: str) -> None:
        """Make sure ``channel`` has a position record (subscribe: fixes the epoch, rule 8)."""
        if channel not in self._streams and channel not in self._idle:
            self._idle[channel] = (self.epoch, 0)
            if len(self._idle) > self.max_positions:
                self._forget()

    # -- the read path --------------------------------------------------------------------------
    def read(self, channel: str, since: StreamPosition | None, limit: int | None, now: float) -> HistoryResult:
        buf = self._streams.get(channel)
        if buf is not None:
            before = buf.nbytes
            result = buf.read(since, limit, now)
            self.bytes += buf.nbytes - before
            if not buf.entries:
                del self._streams[channel]
                self._retire(buf)
            return result
        return select_history([], self.position(channel), since, limit)

    def position(self, channel: str) -> StreamPosition:
        buf = self._streams.get(channel)
        if buf is not None:
            return StreamPosition(buf.epoch, buf.offset)
        epoch, offset = self._idle.get(channel) or (self.epoch, 0)
        return StreamPosition(epoch, offset)

    # -- active expiry --------------------------------------------------------------------------
    def sweep(self, now: float, budget: int = 10_000) -> bool:
        """Free entries whose ttl passed, without anyone reading them.

        Handles at most ``budget`` heap items, so one sweep never blocks the loop for long;
        returns True when it stopped early (call again soon).
        """
        heap = self._expiry
        while heap and heap[0][0] < now:
            if budget <= 0:
                return True
            budget -= 1
            key, _, buf = heap[0]
            if buf.expiry_key != key:
                heapq.heappop(heap)  # the buffer is gone or holds a newer item
                continue
            before = buf.nbytes
            buf.expire(now)
            self.bytes += buf.nbytes - before
            if buf.entries:
                self._rekey(heap, buf, buf.deadline, expiry=True)
            else:
                heapq.heappop(heap)
                buf.expiry_key = None
                del self._streams[buf.channel]
                self._retire(buf)
        return False

    # -- bounds ---------------------------------------------------------------------------------
    def _enforce_bounds(self) -> None:
        streams = self._streams
        while len(streams) > self.max_channels:
            channel = next(iter(streams))  # least recently published
            buf = streams.pop(channel)
            self.evicted += len(buf.entries)
            self._retire(buf)
        heap = self._ages
        while self.bytes > self.max_bytes and heap:
            key, _, buf = heap[0]
            if buf.age_key != key:
                heapq.heappop(heap)
                continue
            if buf.oldest > key:  # the head moved on since this item was pushed
                self._rekey(heap, buf, buf.oldest, expiry=False)
                continue
            before = buf.nbytes
            buf.drop_oldest()  # the oldest entry of any channel
            self.bytes += buf.nbytes - before
            self.evicted += 1
            if buf.entries:
                self._rekey(heap, buf, buf.oldest, expiry=False)
            else:
                heapq.heappop(heap)
                buf.age_key = None
                del streams[buf.channel]
                self._retire(buf)

    def _retire(self, buf: HistoryBuffer) -> None:
        """``buf`` (already out of ``_streams``) keeps nothing more: keep its position only."""
        self.bytes -= buf.nbytes
        buf.nbytes = 0
        buf.entries.clear()
        buf.expiry_key = buf.age_key = None  # its heap items are stale from now on
        self._idle[buf.channel] = (buf.epoch, buf.offset)
        if len(self._idle) > self.max_positions:
            self._forget()

    def _forget(self) -> None:
        """Drop the least recently used position records (a batch, so the epoch moves rarely).

        Every stream created afterwards gets a new epoch (rule 2): a forgotten channel that is
        published again starts at offset 1 of an epoch no client holds, so old positions are
        recognised as stale instead of matching new offsets."""
        idle = self._idle
        excess = len(idle) - self.max_positions + self.max_positions // 16 + 1
        for channel in list(itertools.islice(idle, len(idle))):
            if excess <= 0:
                break
            record = idle.pop(channel)
            if channel in self._pinned:
                idle[channel] = record  # subscribed here: keep, as most recent
            else:
                excess -= 1
        self._generation += 1
        self.epoch = f"{self._base_epoch}.{self._generation}"

    # -- heaps ----------------------------------------------------------------------------------
    def _push(self, heap: list[_HeapItem], buf: HistoryBuffer, key: float, *, expiry: bool) -> None:
        if expiry:
            buf.expiry_key = key
        else:
            buf.age_key = key
        heapq.heappush(heap, (key, next(self._seq), buf))
        if len(heap) > 2 * len(self._streams) + 1024:
            self._rebuild(heap, expiry=expiry)

    def _rekey(self, heap: list[_HeapItem], buf: HistoryBuffer, key: float, *, expiry: bool) -> None:
        """Replace the top item (``buf``'s) by one with ``key``."""
        if expiry:
            buf.expiry_key = key
        else:
            buf.age_key = key
        heapq.heapreplace(heap, (key, next(self._seq), buf))

    def _rebuild(self, heap: list[_HeapItem], *, expiry: bool) -> None:
        """Drop stale items: one item per live buffer, keyed by its current head."""
        heap.clear()
        for buf in self._streams.values():
            if not buf.entries:
                continue
            key = buf.deadline if expiry else buf.oldest
            if expiry:
                buf.expiry_key = key
            else:
                buf.age_key = key
            heap.append((key, next(self._seq), buf))
        heapq.heapify(heap)
