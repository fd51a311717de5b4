"""Acknowledged positions of streams: the rules in Python, and the memory broker's store of them.

:func:`apply_ack` is the one Python copy of the rules written in
:meth:`pushgate.backends.broker.Broker.ack` (the Lua copy is ``ACK`` in ``redis/scripts.py``).
:class:`MemoryAcks` keeps the memory broker's acknowledged positions, bounded and expiring like
its other structures (:class:`~.idempotency.RecentKeys`, :mod:`.history_memory`).

Nothing here does I/O or reads the clock: the caller passes ``now`` (``time.monotonic()``), so
tests drive time by hand.
"""

from __future__ import annotations

from pushgate.backends.broker import StreamPosition

__all__ = ["MemoryAcks", "apply_ack"]


def apply_ack(
    current: StreamPosition, stored: StreamPosition | None, ack: StreamPosition
) -> tuple[StreamPosition, bool]:
    """What an ack leaves behind: ``(acknowledged position, whether the ack was applied)``.

    ``current`` is the stream's position now, ``stored`` the acknowledged position kept so far.
    An ack of another epoch is not applied; otherwise it is clamped to ``[0, current.offset]``
    and never moves the stored offset back. A stored position of an older epoch counts as none.
    """
    base = stored.offset if stored is not None and stored.epoch == current.epoch else 0
    if ack.epoch != current.epoch:
        return StreamPosition(current.epoch, base), False
    offset = min(max(ack.offset, 0), current.offset)
    return StreamPosition(current.epoch, max(offset, base)), True


class MemoryAcks:
    """The memory broker's acknowledged positions: ``stream -> (position, deadline)``.

    A dict in order of the last ack (an applied ack moves its stream to the end). Every stream
    is normally acked with the same ttl (the node's ``user_history_ttl``), so that order is also
    expiry order and :meth:`sweep` frees expired entries from the front in amortised O(1); an
    entry with a shorter ttl behind a longer one is still never returned after its deadline
    (:meth:`get` checks) and is freed once it reaches the front. At most ``max_streams`` are
    kept: past that the least recently acked are forgotten early (their devices then get
    everything retention still keeps, which is at-least-once, not loss).
    """

    __slots__ = ("_acks", "max_streams")

    def __init__(self, *, max_streams: int = 100_000) -> None:
        self.max_streams = max(1, max_streams)
        self._acks: dict[str, tuple[StreamPosition, float]] = {}

    def __len__(self) -> int:
        return len(self._acks)

    def get(self, stream: str, now: float) -> StreamPosition | None:
        found = self._acks.get(stream)
        if found is None or found[1] <= now:
            return None
        return found[0]

    def ack(self, stream: str, current: StreamPosition, ack: StreamPosition, ttl: float, now: float) -> StreamPosition:
        """Apply the rules of :func:`apply_ack` and keep the result for ``ttl`` seconds."""
        position, applied = apply_ack(current, self.get(stream, now), ack)
        if not applied:
            return position
        acks = self._acks
        acks.pop(stream, None)
        if ttl > 0:
            acks[stream] = (position, now + ttl)
            self.sweep(now)
            while len(acks) > self.max_streams:
                del acks[next(iter(acks))]
        return position

    def sweep(self, now: float) -> None:
        """Forget expired positions at the front (the least recently acked)."""
        acks = self._acks
        while acks:
            first = next(iter(acks))
            if acks[first][1] > now:
                return
            del acks[first]
