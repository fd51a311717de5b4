"""A bounded FIFO between the connection's reader and one consumer, with backpressure.

Why backpressure rather than dropping: when a consumer falls behind, :meth:`Inbox.put` makes the
reader wait, the socket stops being read, TCP flow control pushes back, and the *server's*
slow-consumer limit (``write_buffer_limit``) decides: it closes the connection with 4001, the
client reconnects and recovers the gap from history with ``since``. So there is one policy, set
by the operator, and the client never silently loses or reorders a message. (python-websockets
does the same: it stops reading when its receive queue is full.)

Unlike :class:`asyncio.Queue`, an inbox can be *ended*: pending items are still handed out, then
the consumer gets ``StopAsyncIteration`` (normal end) or the exception it was ended with, and a
reader blocked in ``put`` is released at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Inbox(Generic[T]):
    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self._items: deque[T] = deque()
        self._maxsize = maxsize
        self._ended = False
        self._error: BaseException | None = None
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    @property
    def ended(self) -> bool:
        return self._ended

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, item: T) -> None:
        """Append ``item``, waiting while the inbox is full. Dropped if the inbox has ended."""
        while len(self._items) >= self._maxsize and not self._ended:
            self._writable.clear()
            await self._writable.wait()
        if self._ended:
            return
        self._items.append(item)
        self._readable.set()

    def offer(self, item: T) -> bool:
        """Append without waiting; False (item dropped) when full or ended. For paths that must
        not block, such as the final "closed" event while the client shuts down."""
        if self._ended or len(self._items) >= self._maxsize:
            return False
        self._items.append(item)
        self._readable.set()
        return True

    async def get(self) -> T:
        """The oldest item; once ended and empty, raise ``StopAsyncIteration`` or the end error."""
        while not self._items:
            if self._ended:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._readable.clear()
            await self._readable.wait()
        item = self._items.popleft()
        self._writable.set()
        return item

    def end(self, error: BaseException | None = None) -> None:
        """No more items: consumers drain what is queued, then stop (or raise ``error``)."""
        if self._ended:
            return
        self._ended = True
        self._error = error
        self._readable.set()
        self._writable.set()
