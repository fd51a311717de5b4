"""PublishPipe: one lean, auto-pipelined connection to one Redis server, for publications only.

Why not redis-py here: a publication went through redis-py's pipeline, its command packing,
its connection's streams and a timeout per batch, and waited for a whole batch's round trip
before the next batch could leave; that was half of the publishing node's CPU per publication
(bench/README.md, issue #10). Everything else (history, acks, presence, leases, the cluster's
slot map, pub/sub links) stays on redis-py; only the hottest command takes this path.

How it works:

* **Auto-pipelining.** :meth:`PublishPipe.submit` appends the publication's pre-encoded
  EVALSHA (:mod:`.resp`) to an output buffer; one ``call_soon`` per loop iteration writes the
  whole buffer with one ``write()``. Nothing waits for earlier replies: a connection's replies
  come back in the order its commands were sent, so a FIFO of pending publications matches
  them, and the order of :meth:`submit` calls is the order Redis applies them (per channel
  order, so offsets follow call order).
* **hiredis** parses the replies on a bare asyncio ``Protocol`` (no streams, no task).
* **Deadlines without a timer per call.** Every pending publication must be answered within
  ``timeout`` (``broker_timeout``) of its submission. One timer watches the oldest; if it is
  not answered in time the server is hung: the connection is aborted (so a late reply can never
  be matched to the wrong publication) and every pending publication fails with
  :class:`~pushgate.errors.BrokerUnavailable`. It may still have been applied; a retry with its
  ``idempotency_key`` is answered with its position.
* **Bounded.** At most ``max_in_flight`` publications are queued or unanswered per pipe;
  :meth:`wait_for_space` makes callers wait, in order and bounded by ``timeout``.
* **Reconnect with the shared backoff.** The connection opens on first use. When it drops,
  pending publications fail with BrokerUnavailable (translated once, here) and the next
  submission reconnects; a failed connect makes submissions fail fast until the next delay of
  :func:`pushgate.backoff.backoff` has passed. A new connection sends AUTH/SELECT if the URL
  asks for them and SCRIPT LOAD of the publish script before anything else, all pipelined.
* **NOSCRIPT** (someone ran SCRIPT FLUSH): the script is loaded again and the refused
  publications are sent again, in order; publications submitted meanwhile wait behind them.
* **Redirects** (MOVED/ASK/TRYAGAIN, a cluster slot that moved) are handed to ``on_redirect``
  (:mod:`.publishing` sends them the slow way, through redis-py's cluster client).
* **READONLY** (the server was a primary and is a replica now: a Sentinel failover, or someone
  ran REPLICAOF) fails that publication and every one pending behind it (they would all be
  refused) and drops the connection; the next submission reconnects, after the backoff delay,
  to whatever ``endpoint()`` names then (with Sentinel: the primary the sentinels name at that
  moment, see :meth:`.connection.RedisConnection.resolve`), and ``on_readonly()`` is told so
  the pub/sub links check whether they follow a demoted server too.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final, cast

import hiredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    ClusterDownError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from pushgate.backends.broker import StreamPosition
from pushgate.backends.redis.connection import timed_out
from pushgate.backends.redis.resp import command
from pushgate.backends.redis.wire import handshake, open_wire
from pushgate.backoff import backoff
from pushgate.errors import BrokerUnavailable

__all__ = ["PendingPublish", "PublishPipe", "reply_error"]

log = logging.getLogger(__name__)

# Error replies that mean "this server cannot serve us right now" (retry later, elsewhere);
# every other error reply (a script error, WRONGTYPE, OOM) is a ResponseError, as redis-py says.
_UNAVAILABLE_REPLIES: Final[dict[str, type[RedisError]]] = {
    "LOADING": BusyLoadingError,
    "BUSY": ResponseError,
    "MASTERDOWN": RedisConnectionError,
    "CLUSTERDOWN": ClusterDownError,
    "TRYAGAIN": TryAgainError,
    "READONLY": ReadOnlyError,
    "NOAUTH": AuthenticationError,
    "WRONGPASS": AuthenticationError,
    "NOPERM": AuthenticationError,
    "MOVED": ResponseError,
    "ASK": ResponseError,
}
REDIRECTS: Final = ("MOVED", "ASK", "TRYAGAIN")


def reply_error(message: str) -> Exception:
    """The exception an error reply stands for: BrokerUnavailable (from the redis-py error as its
    cause) when the server cannot serve us now, else redis-py's ResponseError."""
    kind = message.split(" ", 1)[0]
    cls = _UNAVAILABLE_REPLIES.get(kind)
    if cls is None:
        return ResponseError(message)
    exc = BrokerUnavailable(f"Redis unavailable: {message}")
    exc.__cause__ = cls(message)
    return exc


def _unavailable(cause: BaseException, what: str) -> BrokerUnavailable:
    """One BrokerUnavailable per caller (a raise adds to the exception's traceback)."""
    exc = BrokerUnavailable(f"Redis unavailable: {what}")
    exc.__cause__ = cause
    return exc


class PendingPublish:
    """One publication on its way: its encoded command and what a slower path needs to redo it."""

    __slots__ = ("channel", "cmd", "data", "fut", "key", "size", "slot", "t", "ttl_ms")

    def __init__(self, fut: asyncio.Future[StreamPosition], cmd: bytes, slot: int, t: float, channel: str,
                 data: bytes, size: int, ttl_ms: int, key: str | None) -> None:
        self.fut = fut
        self.cmd = cmd
        self.slot = slot
        self.t = t  # loop time of submission: answered by t + timeout, or failed
        self.channel = channel
        self.data = data
        self.size = size
        self.ttl_ms = ttl_ms
        self.key = key

    def fail(self, exc: BaseException) -> None:
        if not self.fut.done():
            self.fut.set_exception(exc)


class _Control:
    """A command of the pipe's own (AUTH, SELECT, SCRIPT LOAD) in the reply FIFO."""

    __slots__ = ("on_reply", "t", "what")

    def __init__(self, what: str, on_reply: Callable[[Any], None], t: float) -> None:
        self.what = what
        self.on_reply = on_reply
        self.t = t

    def fail(self, exc: BaseException) -> None:
        pass


class _Wire(asyncio.Protocol):
    """One TCP/TLS/Unix connection of a pipe; a new one per connect, so a late callback of an
    aborted connection is recognised (and ignored) by identity."""

    def __init__(self, pipe: PublishPipe) -> None:
        self.pipe = pipe
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.pipe._on_data(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipe._on_lost(self, exc)


class PublishPipe:
    """Publications to one server over one auto-pipelined connection (see the module docstring).

    ``await endpoint()`` gives a fresh, unconnected redis-py connection object that only serves as
    the description of where and how to connect (host/port or Unix path, TLS context, username,
    password, db): URL parsing stays redis-py's, and with Sentinel it is asked of the sentinels
    at every connect. ``on_redirect(pipe, entry, message)`` takes over a publication the server
    redirected; ``on_unreachable()`` is told when a connect fails; ``on_readonly()`` when the
    server answered READONLY (it was demoted).
    """

    def __init__(
        self,
        name: str,
        endpoint: Callable[[], Awaitable[AbstractConnection]],
        *,
        script: str,
        timeout: float,
        connect_timeout: float,
        max_in_flight: int,
        backoff_window: tuple[float, float],
        on_redirect: Callable[[PublishPipe, PendingPublish, str], None] | None = None,
        on_unreachable: Callable[[], None] | None = None,
        on_readonly: Callable[[], None] | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        self.name = name
        self._endpoint = endpoint
        self._script_load = command("SCRIPT", "LOAD", script)
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self.max_in_flight = max_in_flight
        self._window = backoff_window
        self._delays: Iterator[float] = backoff(*backoff_window)
        self._on_redirect = on_redirect
        self._on_unreachable = on_unreachable
        self._on_readonly = on_readonly
        self._loop = asyncio.get_running_loop()
        self._wire: _Wire | None = None
        self._reader = hiredis.Reader()
        self._fifo: deque[PendingPublish | _Control] = deque()  # sent, awaiting replies, in order
        self._out: list[bytes] = []  # to be written at the end of this loop iteration
        self._flush_scheduled = False
        self._backlog: list[PendingPublish] = []  # submitted while connecting
        self._connecting: asyncio.Task[None] | None = None
        self._retry_at = 0.0  # after a failed connect: fail fast until then
        self._last_error: BaseException | None = None
        self._reloading = False  # NOSCRIPT seen: SCRIPT LOAD in flight
        self._redo: list[PendingPublish] = []  # refused with NOSCRIPT, to send again in order
        self._held: list[PendingPublish] = []  # submitted while reloading
        self._timer: asyncio.TimerHandle | None = None
        self._space: deque[asyncio.Future[None]] = deque()
        self.writes = 0  # write() calls: how well publications are batched (tests, diagnostics)
        self.sent = 0  # publications written (a sequence number for :meth:`when_answered`)
        self.answered = 0  # publications answered or failed, of those written
        self._barriers: list[tuple[int, asyncio.Future[None]]] = []
        self._epochs: dict[bytes, str] = {}
        self._closed = False

    # --- submitting ------------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Publications queued here or awaiting their reply."""
        return len(self._fifo) + len(self._backlog) + len(self._held) + len(self._redo)

    @property
    def full(self) -> bool:
        """True when a publication must :meth:`wait_for_space` first (others already wait)."""
        return bool(self._space) or self.in_flight >= self.max_in_flight

    async def wait_for_space(self, deadline: float) -> None:
        """Wait, behind earlier waiters, until this pipe takes another publication; the caller
        must :meth:`submit` right after, without an await in between. BrokerUnavailable at
        ``deadline`` (loop time)."""
        fut = self._loop.create_future()
        self._space.append(fut)
        try:
            if len(self._space) > 1 or not self._space_free():
                async with asyncio.timeout_at(deadline):
                    await fut
        except BaseException as exc:
            self._space.remove(fut)
            self._wake_space()  # the next waiter must not wait for us
            if isinstance(exc, TimeoutError):
                raise BrokerUnavailable(
                    f"{self.in_flight} publications waiting for Redis on {self.name}: not answered within "
                    f"{self._timeout:g}s"
                ) from exc
            raise
        self._space.remove(fut)  # :meth:`submit` wakes the next one

    def _space_free(self) -> bool:
        return self.in_flight < self.max_in_flight

    def _wake_space(self) -> None:
        """Let the oldest waiter go when there is room (it submits, then wakes the next)."""
        if self._space and self._space_free():
            first = self._space[0]
            if not first.done():
                first.set_result(None)

    def submit(self, entry: PendingPublish) -> None:
        """Send ``entry`` at the end of this loop iteration (or once connected); its future gets
        the position, or BrokerUnavailable / ResponseError."""
        if self._wire is not None and not self._reloading:
            self._send(entry)  # hot path
        else:
            self._submit_slow(entry)
        if self._space:
            self._wake_space()  # a waiter that just submitted lets the next one go

    def _submit_slow(self, entry: PendingPublish) -> None:
        if self._wire is not None:
            self._held.append(entry)
            return
        if self._closed:
            entry.fail(_unavailable(RedisConnectionError("publish pipe closed"), f"{self.name} closed"))
            return
        if self._connecting is None and self._loop.time() < self._retry_at:
            cause = self._last_error or RedisConnectionError("not connected")
            entry.fail(_unavailable(cause, f"{self.name}: {cause!r}"))
            return
        self._backlog.append(entry)
        if self._connecting is None:
            self._connecting = self._loop.create_task(self._connect(), name=f"pushgate-publish-{self.name}")

    def _send(self, entry: PendingPublish | _Control, cmd: bytes | None = None) -> None:
        self._fifo.append(entry)
        if entry.__class__ is PendingPublish:
            self.sent += 1
            self._out.append(entry.cmd)
        else:
            assert cmd is not None
            self._out.append(cmd)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        if self._timer is None:
            self._timer = self._loop.call_at(entry.t + self._timeout, self._check_deadline)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if not out:
            return
        wire = self._wire
        if wire is not None and wire.transport is not None:
            wire.transport.write(out[0] if len(out) == 1 else b"".join(out))
            self.writes += 1
        out.clear()

    # --- replies ---------------------------------------------------------------------------------

    def _on_data(self, wire: _Wire, data: bytes) -> None:
        if wire is not self._wire:
            return
        reader = self._reader
        fifo = self._fifo
        epochs = self._epochs
        try:
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                entry = fifo.popleft()
                if entry.__class__ is PendingPublish:
                    self.answered += 1
                    if reply.__class__ is list:  # hot path: {epoch, offset}
                        fut = entry.fut
                        if not fut.done():
                            raw = reply[0]
                            epoch = epochs.get(raw)
                            if epoch is None:
                                epoch = self._epoch(raw)
                            fut.set_result(StreamPosition(epoch, reply[1]))
                    else:
                        self._on_error_reply(entry, reply)
                        if self._wire is not wire:
                            return  # the reply made us drop the connection (READONLY)
                else:
                    entry.on_reply(reply)  # type: ignore[union-attr]
        except (hiredis.ProtocolError, IndexError, AttributeError, TypeError, ValueError) as exc:
            # Not RESP, a reply nobody asked for, or not the shape the script returns: the
            # stream can no longer be matched to the FIFO.
            log.error("publish pipe %s: unexpected reply (%r); reconnecting", self.name, exc)
            self._drop(_unavailable(RedisConnectionError(f"protocol error: {exc!r}"), "protocol error"))
            return
        if self._space:
            self._wake_space()
        if self._barriers:
            self._check_barriers()

    def _epoch(self, raw: bytes) -> str:
        """Decode an epoch once: a node publishes to few streams, each with one epoch at a time."""
        if len(self._epochs) >= 4096:
            self._epochs.clear()
        epoch = self._epochs[raw] = raw.decode()
        return epoch

    def _on_error_reply(self, entry: PendingPublish, reply: object) -> None:
        message = str(reply)
        if message.startswith("NOSCRIPT"):
            self._redo.append(entry)  # counted as answered; sending it again counts it as sent again
            if not self._reloading:
                self._reloading = True
                log.warning("publish pipe %s: script cache flushed; loading the publish script again", self.name)
                self._send(_Control("SCRIPT LOAD", self._reloaded, self._loop.time()), self._script_load)
            return
        if self._on_redirect is not None and message.startswith(REDIRECTS):
            self._on_redirect(self, entry, message)
            return
        failure = reply_error(message)
        entry.fail(failure)
        if message.startswith("READONLY") and isinstance(failure, BrokerUnavailable):
            self._demoted(failure)

    def retry_now(self) -> None:
        """The primary moved (:meth:`.connection.RedisConnection.watch_primary`): the next
        submission reconnects at once instead of failing fast until the backoff delay ends."""
        self._retry_at = 0.0

    def _demoted(self, failure: BrokerUnavailable) -> None:
        """The server answered READONLY: it is a replica now. Everything sent after this
        publication would be refused too; reconnect (to the primary the endpoint names then)."""
        log.warning("publish pipe %s: the server is a replica now (READONLY, a failover?); reconnecting "
                    "to the current primary", self.name)
        self._drop(failure)
        # Not at once: the sentinels may still name the demoted server for a moment.
        self._retry_at = self._loop.time() + next(self._delays)
        self._last_error = failure
        if self._on_readonly is not None:
            self._on_readonly()

    def _reloaded(self, reply: object) -> None:
        if isinstance(reply, hiredis.ReplyError):
            self._refused("SCRIPT LOAD", reply)
            return
        self._reloading = False
        again = self._redo + self._held
        self._redo, self._held = [], []
        for entry in again:
            self._send(entry)

    def _handshake_reply(self, what: str) -> Callable[[Any], None]:
        def on_reply(reply: object) -> None:
            if isinstance(reply, hiredis.ReplyError):
                self._refused(what, reply)
            elif what == "SCRIPT LOAD":
                self._delays = backoff(*self._window)  # healthy again: the next outage starts small

        return on_reply

    def _refused(self, what: str, reply: object) -> None:
        exc = reply_error(str(reply))
        if not isinstance(exc, BrokerUnavailable):
            exc = _unavailable(exc, f"{self.name} refused {what}: {reply}")
        self._drop(exc)

    # --- deadlines and barriers ------------------------------------------------------------------

    def _check_deadline(self) -> None:
        self._timer = None
        if not self._fifo:
            return
        due = self._fifo[0].t + self._timeout
        if self._loop.time() >= due:
            log.warning("publish pipe %s: no reply within %gs; reconnecting", self.name, self._timeout)
            exc = timed_out(self._timeout)
            exc.__cause__ = TimeoutError()
            self._drop(exc)
        else:
            self._timer = self._loop.call_at(due, self._check_deadline)

    def when_answered(self, seq: int) -> asyncio.Future[None]:
        """Resolved once the first ``seq`` publications written here are answered (or failed)."""
        fut = self._loop.create_future()
        if self.answered >= seq:
            fut.set_result(None)
        else:
            self._barriers.append((seq, fut))
        return fut

    def _check_barriers(self) -> None:
        keep = []
        for seq, fut in self._barriers:
            if self.answered >= seq:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((seq, fut))
        self._barriers = keep

    # --- connection ------------------------------------------------------------------------------

    async def _connect(self) -> None:
        wire = _Wire(self)
        try:
            desc = await self._endpoint()
            await open_wire(desc, wire, self._connect_timeout)
        except (OSError, TimeoutError, RedisError, BrokerUnavailable) as exc:
            self._connecting = None
            self._last_error = exc
            self._retry_at = self._loop.time() + next(self._delays)
            backlog, self._backlog = self._backlog, []
            for entry in backlog:
                entry.fail(_unavailable(exc, f"cannot connect to {self.name}: {exc!r}"))
            self._wake_space()
            if self._on_unreachable is not None:
                self._on_unreachable()
            return
        except BaseException:
            self._connecting = None
            raise
        self._connecting = None
        if self._closed or wire.transport is None or wire.transport.is_closing():
            if wire.transport is not None:
                wire.transport.abort()
            backlog, self._backlog = self._backlog, []
            for entry in backlog:
                entry.fail(_unavailable(RedisConnectionError("connection closed at once"), f"{self.name} closed"))
            return
        self._wire = wire
        self._reader = hiredis.Reader()
        self._last_error = None
        now = self._loop.time()
        for what, cmd in handshake(desc):
            self._send(_Control(what, self._handshake_reply(what), now), cmd)
        self._send(_Control("SCRIPT LOAD", self._handshake_reply("SCRIPT LOAD"), now), self._script_load)
        backlog, self._backlog = self._backlog, []
        for entry in backlog:
            self._send(entry)

    def _on_lost(self, wire: _Wire, exc: Exception | None) -> None:
        if wire is not self._wire:
            return
        cause: BaseException = exc if exc is not None else RedisConnectionError("connection closed by server")
        self._drop(_unavailable(cause, f"connection to {self.name} lost"), abort=False)

    def _drop(self, exc: BrokerUnavailable, *, abort: bool = True) -> None:
        """Forget the connection and fail everything pending on it with ``exc`` (one copy each)."""
        wire, self._wire = self._wire, None
        if abort and wire is not None and wire.transport is not None:
            wire.transport.abort()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending = [e for e in self._fifo if e.__class__ is PendingPublish]
        self.answered += len(pending)
        pending += self._redo + self._held
        self._fifo.clear()
        self._out.clear()
        self._redo, self._held = [], []
        self._reloading = False
        for entry in pending:
            copy = BrokerUnavailable(*exc.args)
            copy.__cause__ = exc.__cause__
            entry.fail(copy)
        self._check_barriers()
        self._wake_space()

    async def close(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
            try:
                await self._connecting
            except asyncio.CancelledError:
                pass
            self._connecting = None
        for entry in self._backlog:
            entry.fail(_unavailable(RedisConnectionError("closed"), f"{self.name} closed"))
        self._backlog = []
        self._drop(_unavailable(RedisConnectionError("closed"), f"{self.name} closed"))
