"""One channel subscription: its stream position, de-duplication and the queue you read from.

A :class:`Subscription` outlives connections: the client renews it after every reconnect with
``since`` = :attr:`Subscription.position`, so publications made while it was away are replayed
(docs/protocol.md#recovery-epoch-offset-and-since). Two positions are kept, as in pushgate.js:

* the last *delivered* message (``_seen``) — de-duplication drops a message of the same epoch
  whose offset is not greater (a replay may overlap live traffic; a new epoch starts afresh);
* the *recovery* position (``position``) — the last delivered message, or the subscribe reply's
  position when that reply says nothing will be replayed. After ``recovered: true`` the reply's
  position is *not* taken: the replay itself moves the position, so a connection lost in the middle
  of a replay resumes from the last message really received, not from the head of the stream.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ._events import Message, Position
from ._inbox import Inbox

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["Subscription"]


def _advance(current: Position | None, new: Position) -> Position:
    """Move a recovery position forward within an epoch, or onto a new epoch."""
    if current is None or current.epoch != new.epoch or new.offset > current.offset:
        return new
    return current


class Subscription:
    """A channel you receive; iterate it (``async for msg in sub``) or pass ``handler=``.

    Messages arrive once each, in offset order, across reconnects. The queue is bounded
    (``queue_size`` of the client, 10,000 by default): when it is full the client stops reading
    the socket until you catch up (see :mod:`pushgate.client._inbox` for why), so a subscription
    nobody reads eventually stalls the whole connection — unsubscribe what you no longer read.
    Replies queue behind it too: a consumer that awaits a command (``client.publish``) while its
    own queue is full gets :class:`RequestTimeout` instead of a reply.

    Iteration ends after :meth:`unsubscribe` or :meth:`Client.close` (once queued messages are
    consumed); it raises :class:`ClientClosed` if the server stopped the client, or
    :class:`RequestError` if the server refused to renew the subscription after a reconnect.
    """

    def __init__(self, client: Client, channel: str, *, since: Position | None, queue_size: int) -> None:
        self.channel = channel
        self._client = client
        self._inbox: Inbox[Message] = Inbox(queue_size)
        self._seen: Position | None = since
        self._position: Position | None = since
        self._recovered = False
        self._confirmations = 0
        # Resolved by the first confirmation; failed if the first subscribe is refused.
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ready.add_done_callback(_consume_result)

    def __repr__(self) -> str:
        return f"<Subscription {self.channel!r} position={self._position} active={self.active}>"

    @property
    def position(self) -> Position | None:
        """Where the client resumes after a reconnect: the last message received (queued for you)
        or the subscribe reply's position. To persist what *you* processed, store ``msg.position``."""
        return self._position

    @property
    def recovered(self) -> bool:
        """The last subscribe reply's ``recovered`` flag: false after a reconnect means the server
        could not replay everything you missed."""
        return self._recovered

    @property
    def active(self) -> bool:
        """False once unsubscribed, refused, or the client closed."""
        return not self._inbox.ended

    @property
    def pending(self) -> int:
        """Messages received but not yet consumed."""
        return len(self._inbox)

    async def unsubscribe(self) -> None:
        """Stop receiving the channel. Messages already queued can still be read."""
        await self._client._unsubscribe(self)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Message:
        return await self._inbox.get()

    async def get(self) -> Message:
        """The next message (``StopAsyncIteration`` once the subscription ended)."""
        return await self._inbox.get()

    # -- used by the client ---------------------------------------------------------------------

    def _since(self) -> Position | None:
        return self._position

    def _accept(self, msg: Message) -> bool:
        """De-duplicate ``msg`` against the last delivered one; advance the positions if new."""
        seen = self._seen
        if seen is not None and seen.epoch == msg.epoch and msg.offset <= seen.offset:
            return False
        self._seen = msg.position
        self._position = _advance(self._position, msg.position)
        return True

    async def _deliver(self, msg: Message) -> None:
        if self._accept(msg):
            await self._inbox.put(msg)  # waits while the queue is full: backpressure

    def _resync(self, position: Position) -> None:
        """The server says the stream goes on from ``position`` (what came before may be lost):
        resume from there, and accept what follows even in a new epoch."""
        self._position = self._seen = position
        self._recovered = False

    def _confirm(self, reply_position: Position | None, *, asked_since: bool, recovered: bool) -> bool:
        """Record a subscribe ``ok``; returns whether this was a resubscribe."""
        self._recovered = asked_since and recovered
        if reply_position is not None and not self._recovered:
            self._position = _advance(self._position, reply_position)
        self._confirmations += 1
        if not self._ready.done():
            self._ready.set_result(None)
        return self._confirmations > 1

    def _end(self, error: BaseException | None, *, unconfirmed: BaseException) -> None:
        """End iteration (normally, or with ``error``); ``unconfirmed`` fails a first subscribe
        still waiting for its reply."""
        if not self._ready.done():
            self._ready.set_exception(unconfirmed)
        self._inbox.end(error)


def _consume_result(fut: asyncio.Future[None]) -> None:
    # The first subscribe's outcome is re-raised from Client.subscribe(); this only keeps asyncio
    # from reporting "exception was never retrieved" when nobody awaits it any more.
    if not fut.cancelled():
        fut.exception()
