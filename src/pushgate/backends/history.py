"""The history rules of every broker, written down once, and their Python implementation.

A channel's history is a *stream*: publications numbered by ``offset`` within an ``epoch``.
Every broker follows these rules; the conformance suite (``tests/backends``) holds each to them.

Appending (on every publish)
  1. The offset counts publications of the channel: the first is 1, each publish adds 1. The
     stream's *position* is ``(epoch, newest offset)``; ``(epoch, 0)`` before any publication.
  2. The epoch is made when the stream is (re)created: when the broker starts (memory) or when
     the channel's meta key is missing (Redis: never written, expired or lost). A new epoch
     starts at offset 0 with no history, so positions from an older epoch are recognised.
  3. With ``HistoryOptions.size > 0`` and ``ttl > 0`` the publication is kept: only the newest
     ``size`` are kept, and none longer than ``ttl`` after it was appended (memory expires each
     entry by its own age; Redis expires the whole list ``ttl`` after the newest publication, so
     the list always stays a contiguous run). With ``size <= 0`` or ``ttl <= 0`` nothing is kept
     and what was kept is dropped; the offset still counts.
  4. What is kept is always a contiguous run of offsets ending at the position's offset.
  5. The epoch and offset outlive the history (memory: for the life of the broker; Redis: for
     ``meta_ttl``, at least ``ttl``), so a client that comes back after its history expired
     learns that it missed something instead of silently starting over.

Reading (:func:`select_history`)
  6. Without ``since``: every kept publication, oldest first, or the newest ``limit``.
  7. With ``since``: the publications with offset > ``since.offset``, oldest first, at most
     ``limit``. ``complete`` is True only when that is *everything* the client missed: same
     epoch, ``since.offset`` not ahead of the position, and nothing after ``since`` trimmed
     (``since.offset >= oldest kept - 1``). Otherwise ``complete`` is False and every kept
     publication (at most ``limit``) is returned instead, so the caller can still show the most
     it has. A negative ``limit`` counts as 0.
  8. Reading a stream that does not exist yet creates its epoch (Redis), so two readers asking
     before the first publish agree on the epoch the publisher will use.

Where the rules live: here in Python for the memory broker (:class:`HistoryBuffer`, used by
``broker_memory``), and in the Lua scripts of ``redis/scripts.py``, which must apply them inside
Redis because the offset is assigned atomically with the append and the fan-out. Those two are
the only copies; the Lua comments name the rule numbers above.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence

from pushgate.backends.broker import HistoryOptions, HistoryResult, Publication, StreamPosition

__all__ = ["HistoryBuffer", "select_history"]


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
    """One channel's stream in process memory: rules 1, 3, 4 and 5 (the epoch is the broker's).

    Entries carry the monotonic time they were appended; expiry is checked lazily on append and
    read, so an idle channel costs nothing.
    """

    __slots__ = ("_entries", "_ttl", "offset")

    def __init__(self) -> None:
        self.offset = 0
        self._ttl = 0.0
        self._entries: deque[tuple[Publication, float]] = deque()

    def append(self, channel: str, data: bytes, epoch: str, options: HistoryOptions) -> Publication:
        """Number the publication (rule 1), keep or drop it (rule 3) and return it."""
        self.offset += 1
        pub = Publication(channel=channel, data=data, offset=self.offset, epoch=epoch)
        now = time.monotonic()
        self._ttl = options.ttl
        if options.size > 0 and options.ttl > 0:
            self._entries.append((pub, now))
            while len(self._entries) > options.size:
                self._entries.popleft()
        else:
            self._entries.clear()
        self._expire(now)
        return pub

    def read(
        self, epoch: str, since: StreamPosition | None, limit: int | None
    ) -> HistoryResult:
        self._expire(time.monotonic())
        kept = [pub for pub, _ in self._entries]
        return select_history(kept, StreamPosition(epoch, self.offset), since, limit)

    def _expire(self, now: float) -> None:
        """Drop entries older than the channel's ttl (rule 3, memory flavour)."""
        entries = self._entries
        while entries and now - entries[0][1] > self._ttl:
            entries.popleft()
