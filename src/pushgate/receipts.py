"""Delivery receipts: a sender waiting for users to acknowledge the messages it sent them.

The node feeds ack notices (from the users' control topics, sent by whichever node the acking
device is on) into :class:`AckWaiter` objects; :class:`Receipts` waits for them, reading the
stored acks as well, so a notice that went by before anyone listened cannot become a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib

from .backends.broker import Broker, StreamPosition
from .names import user_stream


class AckWaiter:
    """One user's acknowledgements, as seen while a sender waits for a receipt."""

    __slots__ = ("done", "seen", "target")

    def __init__(self) -> None:
        self.target: StreamPosition | None = None
        self.seen: list[tuple[StreamPosition, str | None]] = []  # notices, with the acking connection
        self.done = asyncio.Event()

    def covered_by(self, acked: StreamPosition) -> bool:
        target = self.target
        return target is not None and acked.epoch == target.epoch and acked.offset >= target.offset

    def notice(self, acked: StreamPosition, conn: str | None) -> None:
        if len(self.seen) < 1000:  # bounded: a sender waits for one message
            self.seen.append((acked, conn))
        if self.covered_by(acked):
            self.done.set()

    def aim(self, target: StreamPosition) -> None:
        self.target = target
        if any(self.covered_by(acked) for acked, _ in self.seen):
            self.done.set()

    @property
    def conns(self) -> list[str]:
        return list(dict.fromkeys(c for acked, c in self.seen if c and self.covered_by(acked)))


NOTICE_GRACE = 0.25  # seconds a receipt found stored waits for its notice (who acknowledged)


class Receipts:
    """Acknowledgements being collected for some users (see :meth:`pushgate.node.Node.receipts`)."""

    def __init__(self, broker: Broker, waiters: dict[str, AckWaiter], max_wait: float) -> None:
        self._broker = broker
        self._waiters = waiters
        self._max_wait = max_wait

    async def wait(self, positions: dict[str, StreamPosition], timeout: float) -> dict[str, list[str] | None]:
        """Wait (at most ``timeout`` s, capped by ``max_ack_wait``) until each user has
        acknowledged its message at ``positions[user]``; per user, the ids of the connections
        that acknowledged it (empty when the ack was only found stored), or None."""
        timeout = max(0.0, min(timeout, self._max_wait))
        waiters = {user: self._waiters[user] for user in positions}
        for user, waiter in waiters.items():
            waiter.aim(positions[user])
        loop = asyncio.get_running_loop()
        watches = [loop.create_task(w.done.wait()) for w in waiters.values()]
        try:
            deadline = loop.time() + timeout
            while True:
                for user, waiter in waiters.items():
                    if not waiter.done.is_set():
                        stored = await self._broker.acked(user_stream(user))
                        if stored is not None and waiter.covered_by(stored):
                            # the acking node stores the ack, then sends its notice (which names
                            # the connection): found stored first, give the notice a moment
                            grace = min(NOTICE_GRACE, max(0.0, deadline - loop.time()))
                            with contextlib.suppress(TimeoutError):
                                await asyncio.wait_for(waiter.done.wait(), grace)
                            waiter.done.set()
                left = deadline - loop.time()
                if all(w.done.is_set() for w in waiters.values()) or left <= 0:
                    break
                await asyncio.wait(watches, timeout=min(0.5, left))
        finally:
            for watch in watches:
                watch.cancel()
        return {user: (w.conns if w.done.is_set() else None) for user, w in waiters.items()}


__all__ = ["AckWaiter", "Receipts"]
