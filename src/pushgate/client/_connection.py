"""One WebSocket and the requests in flight on it; opening it and sorting failures.

The client's loop makes a new :class:`Connection` per socket. Replies are matched only against
requests sent on *that* socket, so when it dies exactly those requests fail (with
:class:`Disconnected`: they may or may not have been applied) and requests waiting for the next
socket are untouched.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
import yarl

from ._errors import Disconnected, HandshakeError, RequestError
from ._events import Position
from ._policy import handshake_is_fatal
from ._userstream import format_since

__all__ = ["Connection", "HandshakeResponse", "Retry", "TokenSource", "open_connection", "ws_url"]

TokenSource = str | Callable[[], Awaitable[str] | str] | None


class Retry(Exception):
    """A connection attempt failed in a way that backoff may fix (refused, 5xx, timeout...)."""


# The body of a refused upgrade, read by HandshakeResponse for the open_connection that set it.
_REFUSAL_BODY: contextvars.ContextVar[list[bytes] | None] = contextvars.ContextVar("pushgate_refusal", default=None)
_MAX_REFUSAL_BODY = 16_384


class HandshakeResponse(aiohttp.ClientResponse):
    """A response that keeps the body of a refused WebSocket upgrade.

    aiohttp's ``ws_connect`` raises :class:`aiohttp.WSServerHandshakeError` with the status only
    and closes the response unread, so the server's ``{"error": {"code", "message"}}`` would be
    lost. The client's own session uses this response class: right after the status line and
    headers arrive, a small JSON error body is read into the box that :func:`open_connection`
    put in a context variable (the request runs in the caller's task, so it sees it).
    """

    async def start(self, connection: Any) -> HandshakeResponse:
        await super().start(connection)
        box = _REFUSAL_BODY.get()
        if (box is not None and self.status >= 400 and self.content_type == "application/json"
                and (self.content_length or 0) <= _MAX_REFUSAL_BODY):
            try:
                box.append(await self.read())
            except (aiohttp.ClientError, OSError):
                pass  # the status alone still says enough
        return self


def refusal_details(body: bytes | None) -> tuple[str | None, str | None]:
    """(code, message) from a refusal body ``{"error": {"code", "message"}}``, or (None, None)."""
    if not body:
        return None, None
    try:
        error = msgspec.json.decode(body).get("error")
    except (msgspec.DecodeError, AttributeError):
        return None, None
    if not isinstance(error, dict):
        return None, None
    code, message = error.get("code"), error.get("message")
    return (code if isinstance(code, str) else None), (message if isinstance(message, str) else None)


@dataclass(eq=False, slots=True)
class Connection:
    ws: aiohttp.ClientWebSocketResponse
    pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    welcomed: bool = False
    dead: bool = False
    connected_at: float = 0.0
    token: str | None = None  # the token this socket authenticated with (or last refreshed to)
    user_since: Position | None = None  # the user-stream position passed in this handshake
    refresh_timer: asyncio.TimerHandle | None = None

    @property
    def usable(self) -> bool:
        """Commands may be sent: the welcome arrived and the socket has not closed."""
        return self.welcomed and not self.dead

    async def request(self, rid: int, frame: bytes, what: str) -> dict[str, Any] | None:
        """Send ``frame`` (which carries ``id`` = ``rid``) and wait for its reply.

        Returns ``None`` when the socket was already dead, i.e. nothing was sent and the caller
        may safely try the next connection. Raises :class:`RequestError` for an error reply and
        :class:`Disconnected` when the socket dies after sending.
        """
        if self.dead:
            return None
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        try:
            try:
                # aiohttp's send_str: the protocol is text frames only (a binary one gets 4501)
                await self.ws.send_str(frame.decode())
            except (ConnectionError, aiohttp.ClientError) as exc:
                raise Disconnected(f"{what} could not be sent: {exc!r}") from exc
            reply = await fut
        finally:
            self.pending.pop(rid, None)
        if reply.get("type") == "error":
            raise RequestError(str(reply.get("code", "")), str(reply.get("message", "")), reply)
        return reply

    def resolve(self, rid: Any, reply: dict[str, Any]) -> bool:
        """Hand ``reply`` to the request waiting for ``rid``; False if there is none."""
        fut = self.pending.pop(rid, None) if isinstance(rid, int) else None
        if fut is None:
            return False
        if not fut.done():
            fut.set_result(reply)
        return True

    def fail_pending(self, error: Callable[[], BaseException]) -> None:
        """Mark the socket dead and fail every request still waiting on it."""
        self.dead = True
        if self.refresh_timer is not None:
            self.refresh_timer.cancel()
            self.refresh_timer = None
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(error())
        self.pending.clear()


async def resolve_token(token: TokenSource) -> str | None:
    value = token() if callable(token) else token
    if value is None or isinstance(value, str):
        return value
    return await value


async def open_connection(session: aiohttp.ClientSession, url: yarl.URL, token: str | None, *,
                          timeout: float, heartbeat: float | None,
                          user_since: Position | None = None) -> Connection:
    """Open the socket. Raises :class:`HandshakeError` (fatal) or :class:`Retry` (back off).

    ``user_since`` goes in the query as ``<epoch>:<offset>``: the server replays the user's direct
    messages after it (docs/protocol.md#user-streams-direct-messages-are-never-lost).
    """
    # A header, unlike ?token=, keeps the credential out of proxy and server access logs.
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if user_since is not None:
        url = url.update_query(user_since=format_since(user_since))
    box: list[bytes] = []
    reset = _REFUSAL_BODY.set(box)
    try:
        async with asyncio.timeout(timeout):
            ws = await session.ws_connect(url, headers=headers, heartbeat=heartbeat, autoping=True)
    except aiohttp.WSServerHandshakeError as exc:
        code, message = refusal_details(box[0] if box else None)
        if handshake_is_fatal(exc.status):
            raise HandshakeError(exc.status, message or exc.message, code=code) from exc
        raise Retry(f"handshake refused with HTTP {exc.status}" + (f" {code}: {message}" if code else "")) from exc
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise Retry(f"cannot connect: {exc!r}") from exc
    finally:
        _REFUSAL_BODY.reset(reset)
    return Connection(ws, token=token, user_since=user_since)


def ws_url(url: str, user: str | None) -> yarl.URL:
    """``ws(s)://`` URL with ``?user=``; ``http(s)://`` is accepted (same port serves both)."""
    u = yarl.URL(url)
    scheme = {"http": "ws", "https": "wss"}.get(u.scheme, u.scheme)
    if scheme not in ("ws", "wss") or not u.host:
        raise ValueError(f"not a WebSocket URL: {url!r} (expected ws://host:port/ws)")
    u = u.with_scheme(scheme)
    return u.update_query(user=user) if user is not None else u
