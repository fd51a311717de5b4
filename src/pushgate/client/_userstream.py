"""Your user's stream of direct messages: where the client stands in it, and coalesced acks.

Every ``direct`` push carries ``epoch``/``offset`` in the user's stream
(docs/protocol.md#user-streams-direct-messages-are-never-lost). The client keeps **one**
position, that of the last direct handed to your code, and uses it for two things:

* de-duplication: a direct of the same epoch whose offset is not greater is dropped (a replay may
  overlap live traffic); a direct of another epoch starts a new sequence;
* recovery: every connection attempt passes it as ``?user_since=<epoch>:<offset>``, so the server
  replays what was missed, in order, before live messages.

Unlike a channel subscription, the head the welcome reports is never taken as the position: the
server replays what it still keeps even when it cannot recover everything (``recovered: false``),
so jumping to the head would skip messages the server still has. The one exception is a welcome
in a *new* epoch (history was lost): the position becomes ``(new epoch, 0)``, "nothing of this
epoch seen yet", so the next reconnect asks for the new epoch from its start instead of
reporting the old epoch's loss again and again.

:class:`UserStreamPosition` does no I/O (tests call it directly); :class:`Acker` sends acks
through a function the client gives it, at most one in flight.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from ._errors import ClientClosed, Disconnected
from ._events import Position, UserStream

__all__ = ["Acker", "UserStreamPosition", "covers", "format_since"]

log = logging.getLogger("pushgate.client")


def covers(a: Position, b: Position) -> bool:
    """True when position ``a`` includes ``b``: same epoch, offset at least ``b``'s."""
    return a.epoch == b.epoch and a.offset >= b.offset


def format_since(position: Position) -> str:
    """The handshake's ``user_since`` value: ``<epoch>:<offset>``."""
    return f"{position.epoch}:{position.offset}"


class UserStreamPosition:
    """The user-stream position of the last direct delivered to the app (I/O free)."""

    __slots__ = ("_position",)

    def __init__(self, since: Position | None) -> None:
        self._position = since

    @property
    def position(self) -> Position | None:
        """Passed as ``user_since`` on the next connection; ``None`` until known."""
        return self._position

    def is_new(self, position: Position) -> bool:
        """False for a duplicate: same epoch, offset not greater than the last delivered."""
        current = self._position
        return current is None or current.epoch != position.epoch or position.offset > current.offset

    def delivered(self, position: Position) -> None:
        """A direct at ``position`` reached the app (callers checked :meth:`is_new` first)."""
        self._position = position

    def welcomed(self, stream: UserStream | None) -> None:
        """Follow a welcome into a new epoch (see the module docstring); otherwise keep the
        position: the replay that follows the welcome moves it, message by message."""
        current = self._position
        if stream is not None and current is not None and stream.position.epoch != current.epoch:
            self._position = Position(stream.position.epoch, 0)

    def resync(self, position: Position) -> None:
        """The server says the stream goes on from ``position``: take it, in any epoch."""
        self._position = position


class Acker:
    """Coalesced acks: at most one ``ack`` in flight per client, always for the highest position.

    Acks are cheap for the server but not free (a cluster-wide write), and auto-ack would
    otherwise send one per direct. So a position asked for while an ack is in flight waits; when
    the reply comes, one ack for the highest position wanted meanwhile goes out. Every caller
    gets the server's acked position from the round that covered its own position.
    """

    def __init__(self, send: Callable[[Position], Awaitable[Position]],
                 spawn: Callable[[Coroutine[Any, Any, Any]], None]) -> None:
        self._send = send
        self._spawn = spawn
        self._target: Position | None = None  # the next ack to send
        self._target_waiters: list[asyncio.Future[Position]] = []
        self._inflight: Position | None = None
        self._inflight_waiters: list[asyncio.Future[Position]] = []
        self._running = False

    @property
    def in_flight(self) -> Position | None:
        return self._inflight

    async def ack(self, position: Position) -> Position:
        """Ack ``position`` (coalesced); return the server's acked position."""
        fut: asyncio.Future[Position] = asyncio.get_running_loop().create_future()
        self._want(position, fut)
        return await fut

    def ack_soon(self, position: Position) -> None:
        """Ack ``position`` without waiting (auto-ack); failures are logged, not raised."""
        self._want(position, None)

    def _want(self, position: Position, fut: asyncio.Future[Position] | None) -> None:
        inflight, target = self._inflight, self._target
        if inflight is not None and covers(inflight, position) and target is None:
            if fut is not None:
                self._inflight_waiters.append(fut)
            return
        if target is None or not covers(target, position):
            # a higher offset, or another epoch (a newer stream: the server answers an ack of a
            # stale epoch with its stored position anyway)
            self._target = position
        if fut is not None:
            self._target_waiters.append(fut)
        if not self._running:
            self._running = True
            self._spawn(self._loop())

    async def _loop(self) -> None:
        try:
            while self._target is not None:
                position, waiters = self._target, self._target_waiters
                self._target, self._target_waiters = None, []
                self._inflight, self._inflight_waiters = position, waiters
                try:
                    acked = await self._send(position)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._settle(exc, None)
                    if isinstance(exc, Disconnected) and not waiters and self._target is None:
                        self._target = position  # an auto-ack lost with its socket: again on the next
                    elif not isinstance(exc, ClientClosed):
                        log.info("pushgate client: ack of %s failed: %r", position, exc)
                    if isinstance(exc, ClientClosed):
                        break
                else:
                    self._settle(None, acked)
                finally:
                    self._inflight = None
        except asyncio.CancelledError:
            self._settle(ClientClosed("client closed before the ack was answered"), None)
            self._fail_target(ClientClosed("client closed before the ack was sent"))
            raise
        finally:
            self._running = False
        self._fail_target(ClientClosed("client closed before the ack was sent"))

    def _settle(self, exc: BaseException | None, acked: Position | None) -> None:
        waiters, self._inflight_waiters = self._inflight_waiters, []
        for fut in waiters:
            if fut.done():
                continue
            if exc is not None:
                fut.set_exception(exc)
            else:
                assert acked is not None
                fut.set_result(acked)

    def _fail_target(self, exc: BaseException) -> None:
        waiters, self._target_waiters = self._target_waiters, []
        self._target = None
        for fut in waiters:
            if not fut.done():
                fut.set_exception(exc)
