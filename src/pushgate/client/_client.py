"""The asyncio client: one background task keeps a connection up; commands ride on it.

Structure (mirrors ``pushgate.js``): :meth:`Client._run` loops forever — open a socket, read
frames until it closes, ask :mod:`._policy` what the close code means, sleep the backoff delay.
Each socket gets a :class:`Connection` record holding the requests in flight on it, so when it
dies exactly those fail with :class:`Disconnected` and nothing else is touched. Subscriptions live
on the client, not the connection, and are renewed with ``since`` on every ``welcome``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from types import TracebackType
from typing import Any, Self

import aiohttp
import msgspec

from ._commands import Commands
from ._connection import Connection, HandshakeResponse, Retry, TokenSource, open_connection, resolve_token, ws_url
from ._errors import (
    ClientClosed,
    ConnectTimeout,
    Disconnected,
    HandshakeError,
    MessageTooBig,
    PushgateClientError,
    RequestError,
    RequestTimeout,
    UsageError,
)
from ._events import (
    Direct,
    ErrorEvent,
    Message,
    Position,
    Resync,
    State,
    StateChange,
    Subscribed,
    Welcome,
    parse_message,
    parse_position,
    parse_push,
    parse_welcome,
)
from ._listeners import EventStream, Handler, Listeners, start_consumer
from ._policy import Action, backoff, close_code_action
from ._subscription import Subscription
from ._token import refresh_delay, token_expiry
from ._userstream import Acker, UserStreamPosition

__all__ = ["Client", "TokenSource"]

log = logging.getLogger("pushgate.client")

_encode = msgspec.json.encode
_decode = msgspec.json.decode


class Client(Commands):
    """A pushgate client that stays connected: ``async with Client(url, user="bot") as c: ...``.

    * ``url``: ``ws(s)://host/ws`` (``http(s)://`` is accepted and converted).
    * ``user``: dev-mode identity (``?user=``). ``token``: a JWT, or a function (plain or async)
      called before every connection attempt so an expiring token can be refreshed. The token goes
      in an ``Authorization: Bearer`` header, which unlike ``?token=`` stays out of access logs.
      With a function, a token that has ``exp`` is also refreshed over the open connection shortly
      before it expires (a ``refresh`` command: :func:`._token.refresh_delay` says when); if that
      fails the client reconnects with a fresh token, as it does after the server's 4005.
    * ``min_delay``/``max_delay``: the backoff window (s); ``request_timeout``: bound of every
      command, counting the wait for a connection, and of the handshake.
    * ``connect_timeout``: how long :meth:`connect` (and ``async with``) waits for the first
      welcome across retries before raising :class:`ConnectTimeout` (default 30 s; ``None`` waits
      as long as it takes). A wrong host or port fails in this time instead of never.
    * ``session``: an :class:`aiohttp.ClientSession` to use (not closed by the client).
    * ``queue_size``: per subscription / event listener; full means backpressure.
    * ``max_message_size``: larger commands fail locally with :class:`MessageTooBig` instead of
      getting the connection closed with 1009. ``heartbeat``: seconds between WebSocket pings from
      the client (``None``: rely on the server's pings) — set it to notice a dead network.
    * ``now_jitter``: after a close that says "reconnect now" (1012 restart/drain, 4002) the first
      attempt waits a random ``uniform(0, now_jitter)`` seconds (default 1 s; 0 = at once), so the
      thousands of clients of a node that went away do not all arrive in the same millisecond.

    **User stream** (direct messages, docs/protocol.md#user-streams-direct-messages-are-never-lost):
    the client keeps the position of the last :class:`Direct` it handed to your listeners
    (:attr:`user_position`), drops duplicates, and passes the position as ``user_since`` on every
    reconnect so missed directs are replayed in order. ``user_since``: a position to start from
    (one you persisted from ``direct.position`` or :attr:`user_position`); without one a fresh
    client gets what the user has not acknowledged yet. Register ``on("direct", ...)`` (or an
    :meth:`events` stream) **before** :meth:`connect`: a direct that no listener takes does not
    move the position and is not acked, so it comes again on the next connection.

    ``auto_ack``: ack each direct once it has been queued for every listener that wants it (not
    once your code has processed it). That is at-least-once *up to your queue*: if the process
    dies with directs still queued, they are acked but unprocessed, and a device that connects
    without a position will not get them. When that matters, leave ``auto_ack`` off and
    ``await client.ack(direct)`` after processing. Acks are coalesced either way (see :meth:`ack`).

    Reconnects forever following docs/protocol.md#close-codes; stops (becomes closed) on
    4500-4999, 1008 and refused handshakes (4xx). Commands issued while disconnected wait for the
    next connection; commands on the wire when it drops raise :class:`Disconnected` and are never
    resent (at-most-once).
    """

    def __init__(
        self,
        url: str,
        *,
        user: str | None = None,
        token: TokenSource = None,
        min_delay: float = 0.5,
        max_delay: float = 20.0,
        request_timeout: float = 10.0,
        session: aiohttp.ClientSession | None = None,
        queue_size: int = 10_000,
        max_message_size: int = 65_536,
        heartbeat: float | None = None,
        user_since: Position | None = None,
        auto_ack: bool = False,
        now_jitter: float = 1.0,
        connect_timeout: float | None = 30.0,
    ) -> None:
        next(backoff(min_delay, max_delay))  # validate the window now, not on the first reconnect
        if now_jitter < 0:
            raise ValueError("now_jitter must be >= 0")
        self._now_jitter = now_jitter
        self._connect_timeout = connect_timeout
        self._last_error = ""  # why the last attempt or connection ended (for ConnectTimeout)
        self._user_stream = UserStreamPosition(user_since)
        self._auto_ack = auto_ack
        self._acker = Acker(self._send_ack, self._spawn)
        self._url = ws_url(url, user)
        self._token = token
        self._min_delay, self._max_delay = min_delay, max_delay
        self._request_timeout = request_timeout
        self._session, self._own_session = session, session is None
        self._queue_size = queue_size
        self._max_message_size = max_message_size
        self._heartbeat = heartbeat
        self._state = State.DISCONNECTED
        self._conn: Connection | None = None
        self._welcome: Welcome | None = None
        self._subs: dict[str, Subscription] = {}
        self._listeners = Listeners(queue_size)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._shutdown: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._changed: asyncio.Future[None] | None = None
        self._done = False
        self._close_code: int | None = None
        self._close_reason = ""
        self._fatal: HandshakeError | None = None
        self._closed = asyncio.Event()

    def __repr__(self) -> str:
        return f"<pushgate.client.Client {self._url.with_query(None)} {self._state}>"

    # -- state ------------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def welcome(self) -> Welcome | None:
        """The last welcome (client id, user, node); ``None`` before the first connection."""
        return self._welcome

    @property
    def user_position(self) -> Position | None:
        """The user-stream position of the last direct handed to your listeners (or the one the
        server resynced to): what the next connection passes as ``user_since``. Persist it to
        resume a fresh client with ``Client(..., user_since=...)``. ``None`` until known."""
        return self._user_stream.position

    @property
    def close_code(self) -> int | None:
        """The close code that stopped the client, once closed (1000 after :meth:`close`)."""
        return self._close_code

    @property
    def close_reason(self) -> str:
        """The server's reason with :attr:`close_code` (``"kicked by admin"``...), or why a refused
        handshake stopped the client; ``""`` while open."""
        return self._close_reason

    def channels(self) -> list[str]:
        """Channels subscribed, including ones waiting to be renewed after a reconnect."""
        return list(self._subs)

    def subscription(self, channel: str) -> Subscription | None:
        return self._subs.get(channel)

    # -- lifecycle --------------------------------------------------------------------------------

    async def connect(self) -> Welcome:
        """Start the connection loop and return the first welcome.

        Transient failures (refused connection, 5xx, 503 while draining) are retried with backoff
        for up to ``connect_timeout`` seconds; then the client is closed and :class:`ConnectTimeout`
        says what the last attempt met. Cancelling it closes the client. Raises
        :class:`HandshakeError` (with the server's code and message) if the server refuses the
        handshake for good, :class:`ClientClosed` if the client is closed meanwhile.
        """
        if self._done:
            raise self._fatal or self._closed_error()
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run(), name="pushgate client")
        try:
            async with asyncio.timeout(self._connect_timeout):
                await self._wait_connected()
        except TimeoutError as exc:
            await self.close()
            last = self._last_error or "no attempt finished"
            raise ConnectTimeout(f"no connection to {self._url.with_query(None)} within {self._connect_timeout}s "
                                 f"(last: {last})", last_error=last) from exc
        except asyncio.CancelledError:
            await self.close()
            raise
        except ClientClosed:
            if self._fatal is not None:
                raise self._fatal from None
            raise
        assert self._welcome is not None
        return self._welcome

    async def wait_closed(self) -> int:
        """Wait until the client is closed for good; return the close code that stopped it.

        Raises the :class:`HandshakeError` if a refused handshake stopped it.
        """
        await self._closed.wait()
        if self._fatal is not None:
            raise self._fatal
        assert self._close_code is not None
        return self._close_code

    async def close(self) -> None:
        """Close for good with 1000: no reconnect; waiting commands raise :class:`ClientClosed`,
        subscription iterators and event streams end. Safe to call more than once."""
        if self._shutdown is None:
            self._shutdown = asyncio.get_running_loop().create_task(self._close())
        await asyncio.shield(self._shutdown)

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _close(self) -> None:
        self._finish(1000, "client closed", by_user=True)
        conn = self._conn
        if conn is not None and not conn.ws.closed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._request_timeout):
                    await conn.ws.close(code=1000, message=b"client closed")
        current = asyncio.current_task()
        tasks = [t for t in (self._runner, *self._tasks) if t is not None and t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._close_session()

    async def _close_session(self) -> None:
        if self._own_session and self._session is not None and not self._session.closed:
            await self._session.close()

    def _finish(self, code: int | None, reason: str, *, fatal: HandshakeError | None = None,
                by_user: bool = False) -> None:
        """Enter the terminal state: end subscriptions and listeners, wake every waiter."""
        if self._done:
            return
        self._done = True
        self._close_code, self._close_reason, self._fatal = code, reason, fatal
        # After close() iteration just ends; when the server stopped us, readers learn why.
        error = None if by_user else self._closed_error()
        for sub in self._subs.values():
            sub._end(error, unconfirmed=self._closed_error())
        self._subs.clear()
        self._state = State.CLOSED
        self._listeners.end(StateChange(State.CLOSED, code, reason), error)
        self._closed.set()
        self._notify()

    def _closed_error(self) -> ClientClosed:
        if self._fatal is not None:
            err = ClientClosed(f"client stopped: {self._fatal}")
            err.__cause__ = self._fatal
            return err
        return ClientClosed(f"client closed ({self._close_code} {self._close_reason})".rstrip(),
                            close_code=self._close_code, reason=self._close_reason)

    # -- the connection loop ----------------------------------------------------------------------

    async def _run(self) -> None:
        delays = backoff(self._min_delay, self._max_delay)
        immediate_used = False  # one "reconnect now" per healthy period, then backoff
        try:
            while not self._done:
                await self._set_state(State.CONNECTING)
                try:
                    conn = await self._open()
                except HandshakeError as exc:
                    self._finish(None, str(exc), fatal=exc)
                    break
                except Retry as exc:
                    code, reason, action = None, str(exc), Action.BACKOFF
                else:
                    code, reason, uptime = await self._serve(conn)
                    if self._done:
                        break
                    if uptime > self._max_delay:  # it was a healthy connection
                        delays = backoff(self._min_delay, self._max_delay)
                        immediate_used = False
                    action = close_code_action(code)
                self._last_error = f"{code} {reason}".strip() if code is not None else reason
                if action is Action.STOP:
                    self._finish(code, reason)
                    break
                if action is Action.NOW and not immediate_used:
                    immediate_used = True
                    # "now", spread: a node's whole crowd of clients must not return in one burst
                    delay = random.uniform(0.0, self._now_jitter) if self._now_jitter else 0.0
                else:
                    delay = next(delays)
                log.info("pushgate client: disconnected (%s %s), reconnecting in %.2fs", code, reason, delay)
                await self._set_state(State.DISCONNECTED, code=code, reason=reason, delay=delay)
                await asyncio.sleep(delay)
        except Exception:  # a bug here must not leave callers waiting forever
            log.exception("pushgate client: connection loop failed")
            self._finish(1011, "client connection loop failed")
        if self._done and not (self._shutdown and not self._shutdown.done()):
            await self._close_session()

    async def _open(self) -> Connection:
        try:
            token = await resolve_token(self._token)
        except Exception as exc:
            await self._listeners.emit(ErrorEvent("token", f"token provider failed: {exc!r}"))
            raise Retry(f"token provider failed: {exc!r}") from exc
        if self._session is None:
            # HandshakeResponse keeps a refused upgrade's JSON body (the server's code and message)
            self._session = aiohttp.ClientSession(response_class=HandshakeResponse)
        return await open_connection(self._session, self._url, token, timeout=self._request_timeout,
                                     heartbeat=self._heartbeat, user_since=self._user_stream.position)

    async def _serve(self, conn: Connection) -> tuple[int | None, str, float]:
        """Read frames until the socket closes; return (close code, reason, seconds welcomed)."""
        ws, code, reason = conn.ws, None, ""
        self._conn = conn
        loop = asyncio.get_running_loop()
        # A server that accepts the socket but never says welcome is as good as down.
        no_welcome = loop.call_later(self._request_timeout, self._close_soon, conn, 4000, "no welcome")
        try:
            while True:
                msg = await ws.receive()
                if msg.type is aiohttp.WSMsgType.TEXT:
                    await self._on_frame(conn, msg.data)
                    if conn.welcomed:
                        no_welcome.cancel()
                elif msg.type is aiohttp.WSMsgType.CLOSE:
                    code, reason = msg.data, msg.extra or ""
                    break
                elif msg.type is aiohttp.WSMsgType.ERROR:
                    reason = repr(msg.data)
                    break
                elif msg.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                    break
                # binary frames are not part of the protocol; ping/pong are handled by aiohttp
        finally:
            no_welcome.cancel()
            code = code if code is not None else ws.close_code
            code = int(code) if code is not None else None  # aiohttp may hand out WSCloseCode members
            uptime = time.monotonic() - conn.connected_at if conn.welcomed else 0.0
            self._teardown(conn, code, reason)
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.close()
        return code, reason, uptime

    def _close_soon(self, conn: Connection, code: int, reason: str) -> None:
        """Close ``conn`` from sync code; the reader then sees the close and the loop goes on."""
        if not conn.dead:
            self._spawn(conn.ws.close(code=code, message=reason.encode()))

    def _teardown(self, conn: Connection, code: int | None, reason: str = "") -> None:
        if self._conn is conn:
            self._conn = None
        conn.fail_pending(lambda: self._closed_error() if self._done else
                          Disconnected(f"connection closed ({code} {reason}) before the reply".replace(" )", ")"),
                                       close_code=code, reason=reason))
        self._notify()

    async def _on_frame(self, conn: Connection, raw: str) -> None:
        try:
            obj = _decode(raw)
        except msgspec.DecodeError:
            log.warning("pushgate client: ignoring a frame that is not JSON")
            return
        if not isinstance(obj, dict):
            return
        if conn.resolve(obj.get("id"), obj):
            return
        kind = obj.get("type")
        if kind == "message":
            msg = parse_message(obj)
            sub = self._subs.get(msg.channel) if msg is not None else None
            if sub is not None and msg is not None:
                await sub._deliver(msg)  # stragglers for channels we left are dropped
        elif kind == "welcome":
            await self._on_welcome(conn, parse_welcome(obj, conn.user_since))
        elif kind == "direct":
            await self._on_direct(obj)
        elif kind == "resync" and obj.get("stream") == "user":
            position = parse_position(obj)
            if position is not None:
                self._user_stream.resync(position)
                await self._listeners.emit(Resync(None, position))
        elif kind == "resync":
            position = parse_position(obj)
            channel = obj.get("channel")
            sub = self._subs.get(channel) if isinstance(channel, str) else None
            if sub is not None and position is not None:
                sub._resync(position)
                await self._listeners.emit(Resync(sub.channel, position))
        else:
            event = parse_push(obj)  # unknown push types are ignored (forward compatibility)
            if event is not None:
                await self._listeners.emit(event)

    async def _on_direct(self, obj: dict[str, Any]) -> None:
        """De-duplicate by user-stream position, hand to the listeners, then move the position
        (and auto-ack) only if some listener took it."""
        event = parse_push(obj)
        if not isinstance(event, Direct):
            return
        position = event.position
        if position is None:  # a server without user streams: nothing to track
            await self._listeners.emit(event)
            return
        if not self._user_stream.is_new(position):
            return  # a duplicate (a replay overlapping live traffic)
        if await self._listeners.emit(event):
            self._user_stream.delivered(position)
            if self._auto_ack:
                self._acker.ack_soon(position)

    async def _on_welcome(self, conn: Connection, welcome: Welcome) -> None:
        conn.welcomed, conn.connected_at = True, time.monotonic()
        self._welcome = welcome
        self._user_stream.welcomed(welcome.stream)
        for sub in list(self._subs.values()):  # renew every subscription from its last position
            self._spawn(self._subscribe_on(conn, sub))
        self._schedule_refresh(conn)
        await self._set_state(State.CONNECTED)
        await self._listeners.emit(welcome)

    # -- token refresh ----------------------------------------------------------------------------

    def _schedule_refresh(self, conn: Connection) -> None:
        """Arm one timer to refresh ``conn``'s token before its ``exp`` (only a token *function*
        can give a new one; a fixed token simply expires and the server closes with 4005)."""
        if not callable(self._token) or conn.token is None or conn.dead:
            return
        exp = token_expiry(conn.token)
        if exp is None:
            return
        delay = refresh_delay(exp, time.time())
        conn.refresh_timer = asyncio.get_running_loop().call_later(
            delay, lambda: self._spawn(self._refresh(conn)))

    async def _refresh(self, conn: Connection) -> None:
        """Get a new token and send it over ``conn``; on any failure start over with a new socket."""
        conn.refresh_timer = None
        if conn.dead:
            return
        try:
            token = await resolve_token(self._token)
            if not token:
                raise ValueError("the token provider returned no token")
            async with asyncio.timeout(self._request_timeout):
                reply = await self._request_on(conn, {"type": "refresh", "token": token})
        except (Disconnected, ClientClosed):
            return  # the connection ended meanwhile; the next one starts with a fresh token anyway
        except Exception as exc:  # provider failed, token refused, no reply: reconnect, fresh token
            log.warning("pushgate client: token refresh failed (%r), reconnecting", exc)
            await self._listeners.emit(ErrorEvent("token", f"token refresh failed: {exc!r}"))
            self._close_soon(conn, 4000, "token refresh failed")
            return
        if reply is not None and not conn.dead:
            conn.token = token
            self._schedule_refresh(conn)

    # -- events -----------------------------------------------------------------------------------

    def _notify(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)

    async def _wait_connected(self) -> Connection:
        while True:
            if self._done:
                raise self._closed_error()
            if self._runner is None:
                raise UsageError("call connect() first (or use `async with Client(...)`)")
            conn = self._conn
            if conn is not None and conn.usable:
                return conn
            if self._changed is None:
                self._changed = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._changed)

    async def _set_state(self, state: State, *, code: int | None = None, reason: str = "",
                         delay: float | None = None) -> None:
        if self._done or state is self._state:
            return
        self._state = state
        self._notify()
        await self._listeners.emit(StateChange(state, code, reason, delay))

    def on(self, kind: str, handler: Handler[Any]) -> Callable[[], None]:
        """Call ``handler`` (plain or async) for each event of ``kind``, in order, outside the reader.

        Kinds: ``direct``, ``broadcast``, ``join``, ``leave``, ``welcome``, ``subscribed``, ``resync``,
        ``error``, ``state``. Returns a function that removes the handler. Register ``direct``
        handlers before :meth:`connect` so the directs replayed after the welcome reach them.
        """
        listener = self._listeners.add(frozenset({kind}))
        self._track(start_consumer(listener.inbox, handler, f"{kind} handler"))
        return lambda: self._listeners.remove(listener)

    def events(self, *kinds: str) -> EventStream:
        """An async iterator of events of the given kinds (all kinds if none are given)."""
        return EventStream(self._listeners.add(frozenset(kinds) if kinds else None), self._listeners.remove)

    # -- tasks ------------------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._track(asyncio.get_running_loop().create_task(coro))

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("pushgate client: background task failed", exc_info=exc)

    # -- requests ---------------------------------------------------------------------------------

    async def request(self, command: Mapping[str, Any]) -> dict[str, Any]:
        """Send any command (a fresh ``id`` is added) and return the reply frame.

        Waits for a connection if there is none, all within ``request_timeout``. Raises
        :class:`RequestError` for an error reply, :class:`Disconnected`, :class:`RequestTimeout`,
        :class:`MessageTooBig` or :class:`ClientClosed`.
        """
        try:
            async with asyncio.timeout(self._request_timeout):
                while True:
                    conn = await self._wait_connected()
                    reply = await self._request_on(conn, command)
                    if reply is not None:
                        return reply
                    # the connection died before the frame was sent: safe to wait for the next one
        except TimeoutError as exc:
            raise RequestTimeout(f"{command.get('type')} got no reply within {self._request_timeout}s") from exc

    async def _request_on(self, conn: Connection, command: Mapping[str, Any]) -> dict[str, Any] | None:
        """Send on ``conn`` and wait for the reply; ``None`` if ``conn`` died before sending."""
        rid = next(self._ids)
        frame = _encode({**command, "id": rid})
        if len(frame) > self._max_message_size:
            raise MessageTooBig(f"{command.get('type')} frame is {len(frame)} bytes, "
                                f"the limit is {self._max_message_size}")
        return await conn.request(rid, frame, str(command.get("type")))

    # -- user stream ------------------------------------------------------------------------------

    async def ack(self, what: Direct | Position) -> Position:
        """Acknowledge your user stream up to ``what`` (a :class:`Direct` or a position): the
        server records, cluster-wide, that the user processed everything up to it, so a device
        connecting without a position no longer gets it. Returns the server's acked position
        (acks only move forward; an ack of a stale epoch is answered with the stored position).

        Coalesced: at most one ``ack`` is in flight per client; positions acked meanwhile wait
        and go out as one ack for the highest of them when the reply arrives. Raises like any
        command (:class:`Disconnected`: the ack may or may not have been recorded; ack again).
        """
        position = what.position if isinstance(what, Direct) else what
        if position is None:
            raise UsageError("this direct message has no user-stream position (the server is too old)")
        return await self._acker.ack(position)

    async def _send_ack(self, position: Position) -> Position:
        reply = await self.request({"type": "ack", "epoch": position.epoch, "offset": position.offset})
        acked = parse_position(reply)
        if acked is None:
            raise RequestError("bad_reply", f"ack reply without a position: {reply}", reply)
        return acked

    # -- subscriptions ----------------------------------------------------------------------------

    async def subscribe(self, channel: str, *, handler: Handler[Message] | None = None,
                        since: Position | None = None) -> Subscription:
        """Subscribe and return once the server confirmed; the subscription survives reconnects.

        Read it with ``async for msg in sub`` or pass ``handler`` (plain or async, called once per
        message, in order). ``since`` resumes from a persisted position (``msg.position``).
        Raises :class:`RequestError` if the server refuses (``permission_denied``, ...). Waits
        across reconnects until confirmed; cancelling the wait cancels the subscription.
        """
        if self._done:
            raise self._closed_error()
        if self._runner is None:
            raise UsageError("call connect() first (or use `async with Client(...)`)")
        if channel in self._subs:
            raise UsageError(f"already subscribed to {channel!r}")
        sub = Subscription(self, channel, since=since, queue_size=self._queue_size)
        self._subs[channel] = sub
        if self._conn is not None and self._conn.usable:
            self._spawn(self._subscribe_on(self._conn, sub))
        try:
            await asyncio.shield(sub._ready)
        except asyncio.CancelledError:
            self._spawn(self._unsubscribe(sub))
            raise
        if handler is not None:
            self._track(start_consumer(sub._inbox, handler, f"handler for {channel!r}"))
        return sub

    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel`` (no error if not subscribed)."""
        sub = self._subs.get(channel)
        if sub is not None:
            await self._unsubscribe(sub)

    async def _subscribe_on(self, conn: Connection, sub: Subscription) -> None:
        """Send (or renew) one subscription on one connection; retry ``unavailable`` with backoff."""
        retries: Iterator[float] | None = None
        while self._subs.get(sub.channel) is sub and not conn.dead:
            since = sub._since()
            cmd: dict[str, Any] = {"type": "subscribe", "channel": sub.channel}
            if since is not None:
                cmd["since"] = {"epoch": since.epoch, "offset": since.offset}
            try:
                async with asyncio.timeout(self._request_timeout):
                    reply = await self._request_on(conn, cmd)
            except TimeoutError:  # an unanswered subscribe means an unhealthy connection: start over
                self._close_soon(conn, 4000, "subscribe timeout")
                return
            except Disconnected:
                return  # renewed after the next welcome
            except (RequestError, MessageTooBig) as exc:
                if self._subs.get(sub.channel) is not sub:
                    return
                if isinstance(exc, RequestError) and exc.code == "unavailable":  # broker down: later
                    retries = retries or backoff(self._min_delay, self._max_delay)
                    await asyncio.sleep(next(retries))
                    continue
                await self._refuse(sub, exc)
                return
            if reply is None or self._subs.get(sub.channel) is not sub:
                return
            recovered = reply.get("recovered") is True
            position = parse_position(reply)
            again = sub._confirm(position, asked_since=since is not None, recovered=recovered)
            await self._listeners.emit(Subscribed(sub.channel, position, since is not None and recovered, again))
            return

    async def _refuse(self, sub: Subscription, exc: PushgateClientError) -> None:
        del self._subs[sub.channel]
        renewing = sub._ready.done()
        sub._end(exc, unconfirmed=exc)
        if renewing:  # nobody awaits this subscribe: tell the listeners
            await self._listeners.emit(ErrorEvent(exc.code, exc.message, sub.channel))

    async def _unsubscribe(self, sub: Subscription) -> None:
        if self._subs.get(sub.channel) is not sub:
            return
        del self._subs[sub.channel]
        sub._end(None, unconfirmed=UsageError(f"unsubscribed from {sub.channel!r} before it was confirmed"))
        conn = self._conn
        if conn is None or not conn.usable:
            return  # the next connection will simply not renew it
        try:
            async with asyncio.timeout(self._request_timeout):
                await self._request_on(conn, {"type": "unsubscribe", "channel": sub.channel})
        except RequestError as exc:
            if exc.code != "not_subscribed":
                raise
        except (Disconnected, ClientClosed):
            pass
        except TimeoutError as exc:
            raise RequestTimeout(f"unsubscribe got no reply within {self._request_timeout}s") from exc
