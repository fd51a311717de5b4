"""Publish from a backend without HTTP, straight through the cluster's broker.

The Python counterpart of Spring's ``SimpMessagingTemplate.convertAndSend`` /
``convertAndSendToUser``::

    async with pushgate.Publisher("redis://127.0.0.1:6379/0") as pub:
        await pub.publish("news", {"headline": "..."})        # to a channel (kept in history)
        await pub.send_to_users(["alice"], {"text": "hi"})     # to every device of these users
        await pub.broadcast({"maintenance": True})             # to everyone
        await pub.disconnect_user("mallory")                   # close their connections (4500)

Publications go through the same atomic publish-and-append as a node's, so offsets, history
and recovery are identical whichever way a message entered the cluster. Use the same
``prefix`` and history settings as the nodes.

A publisher only sends: its broker is started publish-only (``start(None)``), so it opens the
command connection and no pub/sub connection, subscribes to nothing and receives nothing.
Names are checked with :mod:`pushgate.names` before anything is sent; a broker that cannot be
reached raises :class:`pushgate.errors.BrokerUnavailable`.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

import msgspec

from .backends import create_broker
from .backends.broker import Broker, HistoryOptions, StreamPosition, UserMessage
from .errors import CloseCode
from .names import valid_channel, valid_users


class Publisher:
    """Publishes into a pushgate cluster through its broker (see the module docstring)."""

    def __init__(self, url: str, *, prefix: str = "pg", history_size: int = 100,
                 history_ttl: float = 300.0) -> None:
        self._broker: Broker = create_broker(url, prefix=prefix)
        self._history = HistoryOptions(history_size, history_ttl)
        self._started = False

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def start(self) -> None:
        if not self._started:
            await self._broker.start(None)  # publish-only: no pub/sub link
            self._started = True

    async def close(self) -> None:
        if self._started:
            await self._broker.close()
            self._started = False

    async def publish(self, channel: str, data: Any) -> StreamPosition:
        await self.start()
        return await self._broker.publish(valid_channel(channel), msgspec.json.encode(data), self._history)

    async def send_to_users(self, users: Sequence[str], data: Any, *, sender: str | None = None) -> None:
        await self.start()
        message = UserMessage("direct", sender=sender, data=msgspec.json.encode(data))
        await self._broker.send_to_users(valid_users(users), message)

    async def broadcast(self, data: Any) -> None:
        await self.start()
        await self._broker.broadcast(msgspec.json.encode(data))

    async def disconnect_user(self, user: str, reason: str = "disconnected by server") -> None:
        await self.start()
        message = UserMessage("disconnect", code=int(CloseCode.DISCONNECTED), reason=reason)
        await self._broker.send_to_users(valid_users([user]), message)
