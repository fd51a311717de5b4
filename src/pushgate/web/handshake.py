"""The handshake every transport runs before it accepts a connection, written once.

:func:`accept` runs, in this order: drain check → origin check → credentials → identify →
capacity → connect hooks. It answers the :class:`~pushgate.app.ClientInfo` of the connection
to open, or a :class:`Refusal` the transport sends in its own way (an HTTP error response, or
for a WebSocket over the connection limit an upgrade followed by close 4003, because a browser
cannot read the status of a refused upgrade but can read a close code).

Before this module ``/ws`` and ``/sse`` each had their own copy and they had drifted: a hook's
``Reject`` was 403 on one and 400 on the other. Every refusal is classified by
:func:`pushgate.web.errors.classify`, so the same cause gives the same status and code on
every transport.

It reads a :class:`~pushgate.web.request_view.RequestView`, not an aiohttp request: the server's
front protocol (:mod:`pushgate.web.lean`) answers plain ``/ws`` upgrades without aiohttp, and
admits them here like everyone else.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from ..app import ClientInfo
from ..backends.broker import StreamPosition
from ..errors import ClientError, CloseCode
from ..names import user_stream
from ..protocol import jsonwire
from ..protocol.outgoing import message_outgoing
from .errors import UNAVAILABLE_MESSAGE, classify, error_body, error_response
from .peer import client_address
from .request_view import RequestView

if TYPE_CHECKING:
    from ..node import Node
    from .connection import Connection

log = logging.getLogger(__name__)

DRAINING_MESSAGE = "node is shutting down; connect to another node"


#: Close codes for refusals told after the upgrade (see :attr:`Refusal.close_code`), by status.
#: 4xx that retrying cannot fix are in the "do not reconnect" range (4500-4999), the same rule
#: as a refused HTTP handshake (``handshake_is_fatal`` in the clients); 429 backs off.
REFUSAL_CLOSE_CODES: dict[int, CloseCode] = {
    400: CloseCode.BAD_REQUEST,
    401: CloseCode.UNAUTHORIZED,
    403: CloseCode.FORBIDDEN,
    408: CloseCode.CONNECTION_LIMIT,
    429: CloseCode.CONNECTION_LIMIT,
    500: CloseCode.INTERNAL_ERROR,
}


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a connection is not accepted, as the client will see it."""

    status: int
    code: str
    message: str
    #: a WebSocket handshake with an ``Origin`` header: a browser, which cannot read a refused
    #: handshake's status or body, only a close code and reason after an accepted one
    browser: bool = False

    @property
    def close_code(self) -> CloseCode | None:
        """The close code to tell this refusal with after the upgrade, or None to answer HTTP.

        * A full node (``connection_limit``): 4003 for every client (back off, maybe land on
          another node).
        * A browser: the code of :data:`REFUSAL_CLOSE_CODES` (4502 bad request, 4503
          unauthorized, 4504 forbidden: do not reconnect; 4003 for 429; 1011 for 500), with the
          refusal's code and message as the reason, so the page can say why.
        * 503 (draining, broker unavailable) is never upgraded, so a proxy in front (nginx
          ``proxy_next_upstream http_503``) retries the next node; and clients without an
          ``Origin`` (server-side clients, the Python client) get the HTTP status and JSON body.
        """
        if self.code == "connection_limit":
            return CloseCode.CONNECTION_LIMIT
        if not self.browser or self.status == 503:
            return None
        return REFUSAL_CLOSE_CODES.get(self.status, CloseCode.BAD_REQUEST if self.status < 500
                                       else CloseCode.INTERNAL_ERROR)

    @property
    def close_message(self) -> str:
        """The close reason: ``<code>: <message>`` (a transport cuts it to fit a close frame)."""
        return self.message if self.code == "connection_limit" else f"{self.code}: {self.message}"

    def response(self) -> web.Response:
        return error_response(self.status, self.code, self.message)

    def body(self) -> bytes:
        """The JSON error body (for a layer that writes its HTTP response itself)."""
        return error_body(self.code, self.message)


class RefusalLog:
    """One info line per refused handshake, at most ``per_second`` a second (then a count).

    Every refusal is worth a line to the operator (an expired token, a wrong origin, a hook's
    reason), but the handshake is a door anyone can knock on: beyond the budget the lines are
    counted and the next line says how many were not written.
    """

    def __init__(self, per_second: float = 20.0) -> None:
        self.per_second = per_second
        self._window = 0.0
        self._written = 0
        self._dropped = 0

    def refused(self, transport_name: str, refusal: Refusal, address: str | None, user: str | None) -> None:
        now = time.monotonic()
        if now - self._window >= 1.0:
            self._window = now
            self._written = 0
        if self._written >= self.per_second:
            self._dropped += 1
            return
        self._written += 1
        dropped, self._dropped = self._dropped, 0
        log.info("refused %s handshake from %s (user %s): %d %s: %s%s", transport_name, address or "?",
                 user if user is not None else "-", refusal.status, refusal.code, refusal.message,
                 f" ({dropped} more refusals not logged)" if dropped else "")


refusal_log = RefusalLog()


def credentials(request: RequestView) -> tuple[str | None, str | None]:
    """(token, user) from ``?token=`` or ``Authorization: Bearer <token>``, and ``?user=``.

    The query parameter wins because browsers cannot set headers on a WebSocket handshake.
    """
    token = request.query.get("token")
    header = request.headers.get("Authorization", "")
    if not token and header.lower().startswith("bearer "):
        token = header[7:].strip()
    return token, request.query.get("user")


async def accept(node: Node, request: RequestView, transport_name: str) -> ClientInfo | Refusal:
    """Admit one connection over ``transport_name`` ("websocket", "sse"), or say why not.

    Never raises for a refusal: client mistakes and hook refusals become a :class:`Refusal`
    with their message; a crashing connect hook is logged with its traceback and becomes a
    500 ``internal`` whose message does not leak the exception.
    """
    browser = transport_name == "websocket" and "Origin" in request.headers
    token, user = credentials(request)
    address = client_address(request, node.config.trusted_proxies)
    if node.draining:
        refusal = Refusal(503, "draining", DRAINING_MESSAGE, browser)
    elif not node.ready:
        refusal = Refusal(503, "unavailable", UNAVAILABLE_MESSAGE, browser)
    else:
        try:
            user_since(request)  # a malformed position is refused like any other bad request
            # Browsers send no Origin on a same-origin GET (EventSource) but always on a WebSocket
            # handshake; a cross-site EventSource carries one, so a missing Origin is same-origin there.
            node.auth.check_origin(request.headers.get("Origin"), missing_is_same_origin=transport_name == "sse")
            identity = await node.auth.identify(token=token, user=user)
            user = identity.user
            node.check_capacity(user=identity.user, address=address)
            info = ClientInfo(
                node.new_connection_id(), identity.user, node.id, transport_name, identity.claims, address
            )
            await node.run_connect_hooks(info)
            return info
        except Exception as exc:
            status, code, message = verdict = classify(exc)
            if verdict.internal:
                log.exception("%s handshake failed (a connect hook raised)", transport_name)
            refusal = Refusal(status, code, message, browser)
    refusal_log.refused(transport_name, refusal, address, user)
    return refusal


def user_since(request: RequestView | web.BaseRequest) -> StreamPosition | None:
    """``?user_since=<epoch>:<offset>``: where the client's user stream left off (or None).

    Raises :class:`ClientError` ``bad_request`` for a malformed value (checked before admission).
    """
    value = request.query.get("user_since")
    if not value:
        return None
    epoch, _, offset = value.rpartition(":")
    if not epoch or not offset.isdigit() or len(value) > 200:
        raise ClientError("bad_request", "user_since must be <epoch>:<offset>")
    return StreamPosition(epoch, int(offset))


async def open_session(node: Node, conn: Connection, since: StreamPosition | None) -> None:
    """The start every transport shares once a connection is admitted: follow the user's
    stream (held), register, then send the welcome (with the stream's state) and the replay.

    :meth:`Node.register` makes the connection reachable last and awaits nothing after that,
    and the welcome and the replay go out right after it returns, without an await: so the
    welcome is always the first frame, the replay comes in order before live direct messages
    (held meanwhile), and when the client sees its welcome, presence already counts it.
    Raises what the broker raised; the caller closes with 1011 and unregisters.
    """
    result = await node.open_user_stream(conn, since)
    await node.register(conn)
    stream = None if result is None else (result.position.epoch, result.position.offset, result.recovered)
    conn.send_payload(jsonwire.welcome_frame(conn.id, conn.user, node.id, stream))
    if result is not None and conn.user is not None:
        for pub in (*result.replay, *node.finish_subscribe(conn, user_stream(conn.user), result)):
            conn.send(message_outgoing(pub))
