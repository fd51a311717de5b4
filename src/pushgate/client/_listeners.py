"""Delivering server pushes and client events to your code: ``client.on(...)`` and ``client.events(...)``.

Every listener owns a bounded :class:`~pushgate.client._inbox.Inbox`; the connection's reader
puts events in (waiting when one is full: backpressure, as for subscriptions) and a consumer takes
them out. ``on()`` consumers are tasks calling your function; ``events()`` consumers are you.
Callbacks never run inside the reader, so a callback may await a request (``client.publish``)
without deadlocking the reader that must deliver the reply.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar

from ._errors import PushgateClientError
from ._events import EVENT_KINDS, Event, StateChange
from ._inbox import Inbox

log = logging.getLogger("pushgate.client")

T = TypeVar("T")
Handler = Callable[[T], Awaitable[Any] | Any]


class Listener:
    """Which event kinds (``None``: all) go to which inbox."""

    __slots__ = ("inbox", "kinds")

    def __init__(self, kinds: frozenset[str] | None, queue_size: int) -> None:
        self.kinds = kinds
        self.inbox: Inbox[Event] = Inbox(queue_size)

    def wants(self, event: Event) -> bool:
        return self.kinds is None or event.kind in self.kinds


class Listeners:
    """The registered listeners; the client emits every push and state change through this."""

    def __init__(self, queue_size: int) -> None:
        self._queue_size = queue_size
        self._listeners: list[Listener] = []
        self._ended = False
        self._end_error: BaseException | None = None

    def add(self, kinds: frozenset[str] | None) -> Listener:
        if kinds is not None and not kinds <= EVENT_KINDS:
            raise ValueError(f"unknown event kind(s) {sorted(kinds - EVENT_KINDS)}; known: {sorted(EVENT_KINDS)}")
        listener = Listener(kinds, self._queue_size)
        if self._ended:  # the client is closed: nothing will ever come
            listener.inbox.end(self._end_error)
        else:
            self._listeners.append(listener)
        return listener

    def remove(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)
        listener.inbox.end()

    async def emit(self, event: Event) -> int:
        """Queue ``event`` for every listener that wants it; return how many took it (the client
        moves its user-stream position only for directs that reached at least one)."""
        taken = 0
        for listener in list(self._listeners):
            if listener.wants(event):
                await listener.inbox.put(event)  # backpressure, as for subscriptions
                taken += 0 if listener.inbox.ended else 1
        return taken

    def end(self, last: StateChange, error: BaseException | None) -> None:
        """Deliver ``last`` where there is room (never block a shutdown), then end every stream."""
        self._ended, self._end_error = True, error
        for listener in self._listeners:
            if listener.wants(last):
                listener.inbox.offer(last)
            listener.inbox.end(error)
        self._listeners.clear()


class EventStream:
    """``async for event in client.events("direct", "broadcast")``: events in arrival order.

    Only events that arrive after the stream was created are delivered. The stream ends when the
    client closes (or raises :class:`ClientClosed` when the server stopped it); call :meth:`close`
    (or use ``async with``) when you stop reading, since an unread full stream stalls the reader.
    """

    def __init__(self, listener: Listener, detach: Callable[[Listener], None]) -> None:
        self._listener = listener
        self._detach = detach

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        return await self._listener.inbox.get()

    def close(self) -> None:
        """Stop receiving; events already queued can still be read."""
        self._detach(self._listener)

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def start_consumer(inbox: Inbox[T], handler: Handler[T], what: str) -> asyncio.Task[None]:
    """Run ``handler`` (plain function or coroutine function) on each item of ``inbox`` in order.

    A handler that raises is logged and the next item is handled: one bad message must not end a
    subscription. The task ends when the inbox ends.
    """

    async def consume() -> None:
        while True:
            try:
                item = await inbox.get()
            except (StopAsyncIteration, PushgateClientError):
                return
            try:
                result = handler(item)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("pushgate client: %s failed", what)

    return asyncio.get_running_loop().create_task(consume(), name=f"pushgate {what}")

