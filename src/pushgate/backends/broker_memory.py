"""The single-node broker: in-process delivery with bounded, expiring per-channel history.

The embedded default (one process, no Redis) and the reference the conformance suite holds the
Redis broker to. Delivery to the handler is synchronous, so a publication reaches the node
before :meth:`MemoryBroker.publish` returns. History follows the rules of :mod:`.history`; all
channels' history is held by :class:`~.history_memory.MemoryHistory`, which bounds it
(``history_max_channels``, ``history_max_bytes``) and which a sweep task started with the broker
expires actively, so expired history is freed even if nobody reads it again.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import secrets
import time
from collections.abc import Callable, Sequence

from pushgate.backends.ack_memory import MemoryAcks
from pushgate.backends.broker import (
    BrokerHandler,
    ChannelEvent,
    HistoryOptions,
    HistoryResult,
    StreamPosition,
    UserMessage,
)
from pushgate.backends.history_memory import MemoryHistory
from pushgate.backends.idempotency import RecentKeys, check_idempotency_key

__all__ = ["MemoryBroker"]

log = logging.getLogger(__name__)

_TRIM_AFTER = 32 * 1024 * 1024
"""Bytes of history freed by expiry after which the sweep gives memory back to the system."""

_malloc_trim: Callable[[int], int] | None = None
_trim_loaded = False


def _give_back_memory() -> bool:
    """Ask glibc to return freed heap pages to the system (``malloc_trim(0)``); False elsewhere.

    Freed history is reusable by the process at once, but glibc keeps the pages unless the
    top of the heap is free, so without this a node's RSS stays at its peak after a burst of
    history expires (issue 7: 228 MB "20 s later"). It costs ~15 ms for a 200 MB heap and runs
    only after ``_TRIM_AFTER`` bytes of history were freed.
    """
    global _malloc_trim, _trim_loaded
    if not _trim_loaded:
        _trim_loaded = True
        try:
            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = None
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


class MemoryBroker:
    """In-process broker with bounded, expiring per-channel history.

    The epoch is made when the broker is created: a restarted process has lost its history, so
    clients holding positions from before must learn that they cannot recover from it. Like the
    Redis broker, a failing handler is logged and never reaches the publisher.

    ``history_max_channels`` and ``history_max_bytes`` bound the history of the whole process;
    ``idempotency_window`` is how long publish idempotency keys are remembered;
    ``sweep_interval`` is how often expired history and keys are freed (the sweep task runs
    between :meth:`start` and :meth:`close`; without it expiry still happens on access).
    Acknowledged positions (:meth:`ack`) are kept for at most ``history_max_channels`` streams,
    the least recently acked forgotten first.
    """

    def __init__(
        self,
        *,
        epoch: str | None = None,
        history_max_channels: int = 100_000,
        history_max_bytes: int = 256 * 1024 * 1024,
        idempotency_window: float = 120.0,
        sweep_interval: float = 1.0,
    ) -> None:
        self._epoch = epoch if epoch is not None else secrets.token_hex(8)
        self._handler: BrokerHandler | None = None
        self._channels: set[str] = set()
        self._users: set[str] = set()
        self._history = MemoryHistory(
            self._epoch, max_channels=history_max_channels, max_bytes=history_max_bytes, pinned=self._channels
        )
        self._recent = RecentKeys(idempotency_window)
        self._acks = MemoryAcks(max_streams=history_max_channels)
        self._sweep_interval = sweep_interval
        self._sweeper: asyncio.Task[None] | None = None
        self._publish_only = False

    @property
    def epoch(self) -> str:
        """The broker's epoch at creation (streams created after positions were forgotten get
        a derived one: rule 5 of :mod:`.history`)."""
        return self._epoch

    @property
    def history_bytes(self) -> int:
        """Bytes of history kept in all (data plus a fixed overhead per entry); <= history_max_bytes."""
        return self._history.bytes

    @property
    def history_channels(self) -> int:
        """Channels keeping history right now; <= history_max_channels."""
        return self._history.channels

    @property
    def history_positions(self) -> int:
        """Channels remembered by position only (their history expired or was evicted)."""
        return self._history.positions

    @property
    def idempotency_keys(self) -> int:
        return len(self._recent)

    @property
    def acked_streams(self) -> int:
        """Streams with a stored acknowledged position; <= history_max_channels."""
        return len(self._acks)

    @property
    def healthy(self) -> bool:
        return True

    async def start(self, handler: BrokerHandler | None) -> None:
        self._handler = handler
        self._publish_only = handler is None
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop(), name="pushgate-history-sweep")

    async def close(self) -> None:
        self._handler = None
        self._channels.clear()
        self._users.clear()
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            await asyncio.gather(sweeper, return_exceptions=True)

    async def _sweep_loop(self) -> None:
        """Free expired history and idempotency keys every ``sweep_interval`` seconds.

        One task for the whole broker (not one per channel); a sweep that has much to free
        works in slices with a yield between them, so it never stalls delivery."""
        history = self._history
        high = history.bytes  # most history held since memory was last given back
        while True:
            await asyncio.sleep(self._sweep_interval)
            try:
                high = max(high, history.bytes)
                while history.sweep(time.monotonic()):
                    await asyncio.sleep(0)
                self._recent.sweep(time.monotonic())
                self._acks.sweep(time.monotonic())
                if high - history.bytes >= _TRIM_AFTER and _give_back_memory():
                    high = history.bytes
            except Exception:  # a bug here must not end expiry for the life of the process
                log.exception("broker: history sweep failed")

    async def subscribe(self, channel: str) -> None:
        self._require_handler()
        self._channels.add(channel)
        self._history.touch(channel)  # the epoch its first publication will carry (rule 8)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)

    async def subscribe_user(self, user: str) -> None:
        self._require_handler()
        self._users.add(user)

    async def unsubscribe_user(self, user: str) -> None:
        self._users.discard(user)

    async def publish(
        self, channel: str, data: bytes, options: HistoryOptions, *, idempotency_key: str | None = None
    ) -> StreamPosition:
        now = time.monotonic()
        if idempotency_key is not None:
            first = self._recent.get(channel, check_idempotency_key(idempotency_key), now)
            if first is not None:
                return first  # a retry: not applied again
        pub = self._history.append(channel, data, options, now)
        position = StreamPosition(pub.epoch, pub.offset)
        if idempotency_key is not None:
            self._recent.put(channel, idempotency_key, position, now)
        handler = self._handler
        if handler is not None and channel in self._channels:
            try:
                handler.on_publication(pub)
            except Exception:
                log.exception("broker: on_publication handler failed")
        return position

    async def publish_event(self, event: ChannelEvent) -> None:
        handler = self._handler
        if handler is not None and event.channel in self._channels:
            try:
                handler.on_channel_event(event)
            except Exception:
                log.exception("broker: on_channel_event handler failed")

    async def send_to_users(self, users: Sequence[str], message: UserMessage) -> None:
        handler = self._handler
        if handler is None:
            return
        for user in dict.fromkeys(users):
            if user in self._users:
                try:
                    handler.on_user_message(user, message)
                except Exception:
                    log.exception("broker: on_user_message handler failed")

    async def broadcast(self, data: bytes) -> None:
        handler = self._handler
        if handler is not None:
            try:
                handler.on_broadcast(data)
            except Exception:
                log.exception("broker: on_broadcast handler failed")

    async def position(self, channel: str) -> StreamPosition:
        return self._history.position(channel)

    async def history(
        self, channel: str, *, since: StreamPosition | None = None, limit: int | None = None
    ) -> HistoryResult:
        return self._history.read(channel, since, limit, time.monotonic())  # reading creates nothing

    async def ack(self, stream: str, position: StreamPosition, ttl: float) -> StreamPosition:
        """The rules of :meth:`pushgate.backends.broker.Broker.ack`; the current position is
        the stream's position in this broker's history (creating nothing)."""
        current = self._history.position(stream)
        return self._acks.ack(stream, current, position, ttl, time.monotonic())

    async def acked(self, stream: str) -> StreamPosition | None:
        return self._acks.get(stream, time.monotonic())

    async def reset_if_rewound(self, channel: str, seen: StreamPosition, data: bytes | None) -> StreamPosition | None:
        """Never: one process holds the only copy, which cannot go back (see the protocol)."""
        return None

    def _require_handler(self) -> None:
        if self._publish_only:
            raise RuntimeError("MemoryBroker: subscribe needs start(handler); this broker is publish-only")
