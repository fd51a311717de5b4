"""The client connection as the hub and node see it, and the socket-backed base every transport
shares (the slow-consumer policy lives here, once), and the WebSocket write path both WebSocket
layers share (:class:`FramedConnection`: queue pre-framed bytes, one write per loop iteration).

The classes have ``__slots__``: a connection lives as long as its socket, and the lean WebSocket
(:class:`~pushgate.web.lean.LeanWebSocket`) is meant to cost a few hundred bytes and few objects
for the garbage collector. Subclasses that add attributes without slots get a ``__dict__`` as usual.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import CloseCode
from ..protocol.outgoing import Outgoing

if TYPE_CHECKING:
    from ..hub import Hub
    from ..metrics import NodeMetrics


class Connection(ABC):
    """A client connection as the hub and node see it; transports subclass it."""

    __slots__ = ("__weakref__", "address", "channels", "claims", "close_code", "close_reason", "closed", "id",
                 "opened_at", "user")
    transport_name = "?"
    #: objects in reference cycles a closed connection of this class leaves for the garbage
    #: collector (measured: ~46 for a socket served by aiohttp); the GC policy adds them up to
    #: decide when frozen garbage is worth a full collection (pushgate.gcprobe)
    cyclic_garbage: ClassVar[float] = 50.0

    def __init__(self, conn_id: str, user: str | None, claims: dict[str, Any] | None = None) -> None:
        self.id = conn_id
        self.user = user
        self.claims = claims
        self.channels: set[str] = set()
        self.closed = False
        self.address: str | None = None  # the client's IP, for per-IP limits and logs
        #: the first code the server closed this connection with (None: the client closed or
        #: went away), and its reason: the close-code metrics and the close debug line read them
        self.close_code: int | None = None
        self.close_reason = ""
        self.opened_at = 0.0  # monotonic time it was registered (0: not registered, or counted closed)

    @abstractmethod
    def send(self, out: Outgoing) -> None:
        """Queue a frame without blocking. Hot path: must not encode, await or raise."""

    def close(self, code: int, reason: str) -> None:
        """Start closing with ``code`` (see :class:`~pushgate.errors.CloseCode`); returns at once.

        ``reason`` is any text: a transport whose reason has a size limit (a WebSocket close
        frame, 123 bytes) cuts it on a character boundary, never mid-character. The first code
        is recorded here, once for every transport (drain, slow consumer, kick, rate limit and
        protocol errors all come through this method); :meth:`_close` does the transport's part.
        """
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self._close(code, reason)

    @abstractmethod
    def _close(self, code: int, reason: str) -> None:
        """The transport's close (see :meth:`close`)."""

    def send_payload(self, payload: bytes) -> None:
        self.send(Outgoing(payload))

    def flush(self) -> None:  # noqa: B027 - a no-op for transports that write at once
        """Write what :meth:`send` queued (transports that coalesce writes override this)."""


class TransportConnection(Connection):
    """A connection that writes straight to an asyncio transport, with a bounded write buffer.

    Bounded everything: a peer that reads slower than we publish would otherwise grow our
    buffer without limit. Each transport compares ``transport.get_write_buffer_size()`` with
    ``write_limit`` right after its write (one comparison, inline, on the hot path) and calls
    :meth:`cut_slow_consumer` when it is over: the policy (count it, close with 4001 so the
    client reconnects with backoff and recovers from history) is written only here.
    """

    __slots__ = ("_limit", "_metrics", "_transport")
    SLOW_CONSUMER_REASON = "slow consumer: reconnect and recover"

    def __init__(self, conn_id: str, user: str | None, claims: dict[str, Any] | None, *,
                 transport: asyncio.Transport, write_limit: int, metrics: NodeMetrics) -> None:
        super().__init__(conn_id, user, claims)
        self._transport = transport
        self._limit = write_limit
        self._metrics = metrics

    def cut_slow_consumer(self) -> None:
        """The peer let more than ``write_limit`` bytes pile up: drop it (cold path)."""
        self._metrics.slow_consumers.inc()
        self.close(CloseCode.SLOW_CONSUMER, self.SLOW_CONSUMER_REASON)


class FramedConnection(TransportConnection):
    """A WebSocket's write side: frames are queued as the shared pre-framed bytes and the hub
    flushes each connection once per loop iteration, joining them into one ``write()``.

    Server frames are unmasked (RFC 6455 §5.1), so the bytes are the same for every peer and
    nothing is encoded per connection. Subclasses say how a close is sent.
    """

    __slots__ = ("_hub", "_pending")

    def __init__(self, conn_id: str, user: str | None, claims: dict[str, Any] | None, *,
                 transport: asyncio.Transport, hub: Hub, write_limit: int, metrics: NodeMetrics) -> None:
        super().__init__(conn_id, user, claims, transport=transport, write_limit=write_limit, metrics=metrics)
        self._hub = hub
        self._pending: list[bytes] | None = None

    def send(self, out: Outgoing) -> None:
        # Hot path: write the shared pre-framed bytes at once while the hub writes through (the
        # first fan-out of a loop iteration, nothing queued anywhere), else queue them for the
        # hub's next flush.
        if self.closed:
            return
        pending = self._pending
        if pending is not None:
            pending.append(out.ws())
        elif self._hub.through:
            transport = self._transport
            if transport.is_closing():
                self.closed = True
                return
            transport.write(out.ws())
            if transport.get_write_buffer_size() > self._limit:
                self.cut_slow_consumer()
        else:
            self._pending = [out.ws()]
            self._hub.want_flush(self)

    def queue(self, framed: bytes) -> None:
        """Queue bytes that are already WebSocket frames (a protocol other than JSON on this
        socket, :class:`~pushgate.web.stomp_connection.StompConnection`); always for the hub's
        next flush, so that the frames one fan-out gives a socket leave in one write."""
        if self.closed:
            return
        pending = self._pending
        if pending is None:
            self._pending = [framed]
            self._hub.want_flush(self)
        else:
            pending.append(framed)

    def flush(self) -> None:
        # Hot path (once per connection per loop iteration): one write for all queued frames.
        pending, self._pending = self._pending, None
        if pending is None or self.closed:
            return
        transport = self._transport
        if transport.is_closing():
            self.closed = True
            return
        transport.write(pending[0] if len(pending) == 1 else b"".join(pending))
        if transport.get_write_buffer_size() > self._limit:
            self.cut_slow_consumer()
