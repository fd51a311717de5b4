"""One SockJS session: its outbound queue, its one receiving connection, its timers.

A SockJS session outlives the HTTP requests that carry it: with xhr-streaming the client keeps
one POST open and reopens it when the server ends it (after ``response_limit`` bytes); with
xhr-polling every POST returns one batch. What the application writes while no request is
open waits in the session, bounded. The rules (sockjs-protocol, "Protocol" and "Handling
close"):

* the first receiving request gets ``o``; messages go out as ``a[...]``, several per frame;
* at most one receiving request at a time: a second one gets ``c[2010,"Another connection
  still open"]`` and ends, the first is left alone;
* a ``h`` frame every ``heartbeat`` seconds (25 by default) while a request is open and
  nothing else was written, so proxies keep it;
* a session without a receiving request for ``disconnect_delay`` seconds (5) is over: the
  client is gone, the application is told (the STOMP connection unregisters) and the session
  is forgotten;
* once closed, every receiving request gets what was still queued, then the close frame
  (``c[code,"reason"]``), until the session is forgotten ``disconnect_delay`` later.

This class does no I/O: a :class:`Receiver` (one HTTP response, or one WebSocket) writes, and
the event loop only runs its timers, so it is tested with fake receivers and short timers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .sockjs_codec import (
    ANOTHER_CONNECTION,
    ANOTHER_CONNECTION_REASON,
    HEARTBEAT,
    OPEN,
    close_frame,
    message_frame,
)

#: why a session ended when its client stopped polling/streaming (sockjs-protocol
#: "test_abort_xhr_polling": a server may answer a late request with this)
INTERRUPTED = 1002
INTERRUPTED_REASON = "Connection interrupted"
_ANOTHER = close_frame(ANOTHER_CONNECTION, ANOTHER_CONNECTION_REASON)


@dataclass(frozen=True, slots=True)
class SockJsOptions:
    """SockJS timings and bounds; the defaults are the protocol's (sockjs-node's) values."""

    heartbeat: float = 25.0
    disconnect_delay: float = 5.0
    #: xhr-streaming: bytes one response carries before the server ends it and the client opens
    #: the next (a browser keeps a streaming response's whole text in memory)
    response_limit: int = 128 * 1024
    #: sessions that did not send their STOMP CONNECT yet (admitted ones count against the
    #: node's connection limits like any connection)
    max_unadmitted_sessions: int = 10_000
    #: xhr_send bodies; 0 = four times ``max_message_size`` (several frames, JSON-escaped)
    max_body: int = 0
    #: xhr_send requests of one session waiting for their turn (a client sends one at a time)
    max_sends_in_flight: int = 4


class Receiver(Protocol):
    """Where a session's frames go now: one receiving HTTP request, or the session's WebSocket."""

    def send(self, frames: list[bytes]) -> bool:
        """Write ``frames`` (without delimiters). False when this receiver is done after them
        (a polling response, a streaming response over its limit): the session lets it go."""

    def end(self) -> None:
        """Finish the request (or close the socket): the session no longer uses this receiver."""

    def congested(self) -> bool:
        """Whether the peer reads so slowly that its unsent bytes are over the write limit."""


class SockJsSession:
    """See the module docstring. ``on_closed`` runs once, when the session closes for any
    reason; ``on_gone`` once, when it can be forgotten (removed from the session table)."""

    def __init__(self, session_id: str, options: SockJsOptions, *, write_limit: int,
                 on_closed: Callable[[SockJsSession], None],
                 on_gone: Callable[[SockJsSession], None]) -> None:
        self.id = session_id
        self.options = options
        self.closed = False
        self.close_code: int | None = None
        self._write_limit = write_limit
        self._on_closed: Callable[[SockJsSession], None] | None = on_closed
        self._on_gone: Callable[[SockJsSession], None] | None = on_gone
        self._loop = asyncio.get_running_loop()
        self._receiver: Receiver | None = None
        self._opened = False  # ``o`` was delivered
        self._pending: list[bytes] = []  # JSON string literals not delivered yet
        self._pending_bytes = 0
        self._close: bytes | None = None
        self._wrote = False  # anything delivered since the last heartbeat tick
        self._idle: asyncio.TimerHandle | None = None
        self._beat: asyncio.TimerHandle | None = None
        self._gone_at: asyncio.TimerHandle | None = None
        self._start_idle()
        if options.heartbeat > 0:
            self._beat = self._loop.call_later(options.heartbeat, self._heartbeat)

    @property
    def receiving(self) -> bool:
        """Whether a receiving request (or the WebSocket) is attached now."""
        return self._receiver is not None

    # -- receivers --------------------------------------------------------------------------------
    def attach(self, receiver: Receiver) -> None:
        """A receiving request arrived. It gets ``o`` if it is the session's first, what is
        queued, and then what comes; or, as the protocol says, 2010 when another is open and
        the close frame when the session is closed (and then it ends at once)."""
        if self._receiver is not None:
            receiver.send([_ANOTHER])
            receiver.end()
            return
        if self._close is not None:
            frames = self._take_pending()
            frames.append(self._close)
            receiver.send(frames)
            receiver.end()
            return
        self._cancel_idle()
        self._receiver = receiver
        frames = []
        if not self._opened:
            self._opened = True
            frames.append(OPEN)
        frames.extend(self._take_pending())
        if frames:
            self._deliver(frames)

    def detach(self, receiver: Receiver) -> None:
        """``receiver``'s request is over (the client went away, or it was ended): from now on
        the session waits ``disconnect_delay`` for the next one. A no-op for other receivers."""
        if self._receiver is receiver:
            self._receiver = None
            self._start_idle()

    # -- writing ----------------------------------------------------------------------------------
    def send_messages(self, literals: list[bytes]) -> bool:
        """Queue or deliver messages (JSON string literals). False when the client does not keep
        up (more than the write limit waits, or the receiver's socket is congested): the caller
        applies the slow-consumer policy (:meth:`~.connection.TransportConnection.cut_slow_consumer`)."""
        if self._close is not None or not literals:
            return True
        if self._receiver is not None and not self._pending:
            self._deliver([message_frame(literals)])
            receiver = self._receiver
            return receiver is None or not receiver.congested()
        self._pending.extend(literals)
        self._pending_bytes += sum(len(m) for m in literals)
        return self._pending_bytes <= self._write_limit

    def close(self, code: int, reason: str) -> None:
        """Close with ``c[code,"reason"]``: what is queued goes first, then the close frame, to
        the open request or to the next one; the session is forgotten ``disconnect_delay`` later."""
        if self._close is not None:
            return
        self._close = close_frame(code, reason)
        self.close_code = code
        self._mark_closed()
        receiver, self._receiver = self._receiver, None
        if receiver is not None:
            frames = self._take_pending()
            frames.append(self._close)
            receiver.send(frames)
            receiver.end()
        self._cancel_idle()
        self._gone_at = self._loop.call_later(self.options.disconnect_delay, self._gone)

    def forget(self) -> None:
        """Drop the session now (server shutdown): the open request ends, the timers stop."""
        self._close = self._close or close_frame(INTERRUPTED, INTERRUPTED_REASON)
        self._mark_closed()
        receiver, self._receiver = self._receiver, None
        if receiver is not None:
            receiver.end()
        self._gone()

    # -- internals --------------------------------------------------------------------------------
    def _take_pending(self) -> list[bytes]:
        if not self._pending:
            return []
        frame = message_frame(self._pending)
        self._pending = []
        self._pending_bytes = 0
        return [frame]

    def _deliver(self, frames: list[bytes]) -> None:
        receiver = self._receiver
        assert receiver is not None
        self._wrote = True
        if not receiver.send(frames):
            self._receiver = None
            receiver.end()
            self._start_idle()

    def _mark_closed(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._beat is not None:
            self._beat.cancel()
            self._beat = None
        on_closed, self._on_closed = self._on_closed, None
        if on_closed is not None:
            on_closed(self)

    def _start_idle(self) -> None:
        if self._close is None and self._idle is None:
            self._idle = self._loop.call_later(self.options.disconnect_delay, self._idle_timeout)

    def _cancel_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def _idle_timeout(self) -> None:
        """No receiving request for ``disconnect_delay``: the client is gone. The application is
        told and the session forgotten at once (a late request starts a new session, which the
        protocol allows)."""
        self._idle = None
        if self._receiver is not None or self._close is not None:
            return
        self._close = close_frame(INTERRUPTED, INTERRUPTED_REASON)
        self.close_code = INTERRUPTED
        self._mark_closed()
        self._gone()

    def _heartbeat(self) -> None:
        self._beat = None
        if self.closed:
            return
        receiver = self._receiver
        if receiver is not None and not self._wrote:
            self._deliver([HEARTBEAT])
        self._wrote = False
        self._beat = self._loop.call_later(self.options.heartbeat, self._heartbeat)

    def _gone(self) -> None:
        self._cancel_idle()
        if self._gone_at is not None:
            self._gone_at.cancel()
            self._gone_at = None
        self._pending = []
        on_gone, self._on_gone = self._on_gone, None
        if on_gone is not None:
            on_gone(self)
