"""The single-node broker: in-process delivery with bounded, expiring per-channel history.

The embedded default (one process, no Redis) and the reference the conformance suite holds the
Redis broker to. Delivery to the handler is synchronous, so a publication reaches the node
before :meth:`MemoryBroker.publish` returns. History follows the rules of :mod:`.history`.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence

from pushgate.backends.broker import (
    BrokerHandler,
    ChannelEvent,
    HistoryOptions,
    HistoryResult,
    StreamPosition,
    UserMessage,
)
from pushgate.backends.history import HistoryBuffer

__all__ = ["MemoryBroker"]

log = logging.getLogger(__name__)


class MemoryBroker:
    """In-process broker with bounded, expiring per-channel history.

    The epoch is made when the broker is created: a restarted process has lost its history, so
    clients holding positions from before must learn that they cannot recover from it. Like the
    Redis broker, a failing handler is logged and never reaches the publisher.
    """

    def __init__(self, *, epoch: str | None = None) -> None:
        self._epoch = epoch if epoch is not None else secrets.token_hex(8)
        self._handler: BrokerHandler | None = None
        self._streams: dict[str, HistoryBuffer] = {}
        self._channels: set[str] = set()
        self._users: set[str] = set()
        self._publish_only = False

    @property
    def epoch(self) -> str:
        return self._epoch

    @property
    def healthy(self) -> bool:
        return True

    async def start(self, handler: BrokerHandler | None) -> None:
        self._handler = handler
        self._publish_only = handler is None

    async def close(self) -> None:
        self._handler = None
        self._channels.clear()
        self._users.clear()

    async def subscribe(self, channel: str) -> None:
        self._require_handler()
        self._channels.add(channel)

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
        stream = self._streams.get(channel)
        if stream is None:
            stream = self._streams[channel] = HistoryBuffer()
        pub = stream.append(channel, data, self._epoch, options)
        handler = self._handler
        if handler is not None and channel in self._channels:
            try:
                handler.on_publication(pub)
            except Exception:
                log.exception("broker: on_publication handler failed")
        return StreamPosition(self._epoch, pub.offset)

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
        stream = self._streams.get(channel)
        return StreamPosition(self._epoch, stream.offset if stream is not None else 0)

    async def history(
        self, channel: str, *, since: StreamPosition | None = None, limit: int | None = None
    ) -> HistoryResult:
        stream = self._streams.get(channel)
        if stream is None:
            stream = HistoryBuffer()  # empty and not stored: reading creates nothing
        return stream.read(self._epoch, since, limit)

    def _require_handler(self) -> None:
        if self._publish_only:
            raise RuntimeError("MemoryBroker: subscribe needs start(handler); this broker is publish-only")
