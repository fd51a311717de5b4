"""What a STOMP CONNECT decides, whatever carries the frames (a WebSocket, a SockJS session).

:func:`admit` runs, in this order: version negotiation (STOMP 1.2 §Protocol Negotiation), the
``heart-beat`` header, the one handshake every transport runs (:func:`~.handshake.accept`, with
the credentials of the CONNECT frame added to those of the request), and the check that the
CONNECT does not name another user than the request did. It answers an :class:`Admitted` or a
:class:`ConnectRefusal` (an ERROR frame's headers and the close code that follows it); the
carrier only writes the frames. :func:`connected_frame` builds ``CONNECTED`` and the heart-beat
intervals both sides then keep (§Heart-beating).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from .. import __version__
from ..app import ClientInfo
from ..errors import CloseCode
from ..protocol.stomp import SUPPORTED_VERSIONS, Frame, negotiate, negotiate_heartbeat, parse_heartbeat
from .errors import classify
from .handshake import Refusal, accept
from .request_view import RequestView

if TYPE_CHECKING:
    from ..config import Config
    from ..node import Node

SERVER = f"pushgate/{__version__}"
#: refusal code -> close code after the ERROR frame (the ERROR says why; the code says whether
#: retrying can help, as errors.close_action reads it)
REFUSAL_CLOSE = {
    "draining": CloseCode.SERVICE_RESTART,
    "connection_limit": CloseCode.CONNECTION_LIMIT,
    "too_many_connections": CloseCode.CONNECTION_LIMIT,
    "unavailable": CloseCode.INTERNAL_ERROR,
    "internal": CloseCode.INTERNAL_ERROR,
}


@dataclass(frozen=True, slots=True)
class Admitted:
    """A CONNECT the server accepts: the negotiated version, the client's heart-beat, who it is."""

    version: str
    client_beat: tuple[int, int]
    info: ClientInfo


@dataclass(frozen=True, slots=True)
class ConnectRefusal:
    """A CONNECT the server refuses: an ERROR frame (in ``version``'s encoding), then ``close_code``."""

    version: str
    message: str
    close_code: int
    code: str | None = None
    extra: tuple[tuple[str, str], ...] = ()
    receipt: str | None = None

    def error_frame(self) -> Frame:
        headers: list[tuple[str, str]] = [("message", self.message[:1000])]
        if self.code is not None:
            headers.append(("code", self.code))
        if self.receipt is not None:
            headers.append(("receipt-id", self.receipt))
        headers.extend(self.extra)
        return Frame("ERROR", tuple(headers), self.message.encode())


async def admit(node: Node, request: web.Request, connect: Frame, transport_name: str) -> Admitted | ConnectRefusal:
    """Decide a CONNECT/STOMP frame that arrived over ``request`` (see the module docstring)."""
    version = negotiate(connect.get("accept-version"))
    if version is None:  # §Protocol Negotiation: ERROR with the versions we speak, then close
        return ConnectRefusal("1.2", "no common STOMP version: the server supports " + ",".join(SUPPORTED_VERSIONS),
                              CloseCode.PROTOCOL_VIOLATION,
                              extra=(("version", ",".join(reversed(SUPPORTED_VERSIONS))),))
    try:
        client_beat = parse_heartbeat(connect.get("heart-beat"))
    except ValueError as exc:
        return ConnectRefusal(version, str(exc), CloseCode.PROTOCOL_VIOLATION)
    view = RequestView.of(request)
    admitted = await accept(node, with_connect_credentials(node, view, connect), transport_name)
    if isinstance(admitted, Refusal):
        return ConnectRefusal(version, admitted.message, REFUSAL_CLOSE.get(admitted.code, CloseCode.DISCONNECTED),
                              code=admitted.code)
    conflict = await conflicting_user(node, view, connect, admitted.user)
    if conflict is not None:
        return ConnectRefusal(version, conflict, CloseCode.DISCONNECTED, code="permission_denied")
    return Admitted(version, client_beat, admitted)


def connected_frame(config: Config, version: str, session: str, user: str | None,
                    client_beat: tuple[int, int]) -> tuple[Frame, int, int]:
    """``CONNECTED`` and the negotiated (send every, expect every) heart-beat intervals in ms."""
    server_ms = int(config.stomp_heartbeat * 1000)
    send_ms, expect_ms = negotiate_heartbeat(client_beat, (server_ms, server_ms))
    headers = [("version", version), ("heart-beat", f"{server_ms},{server_ms}"), ("server", SERVER),
               ("session", session)]
    if user is not None:
        headers.append(("user-name", user))
    return Frame("CONNECTED", tuple(headers)), send_ms, expect_ms


def with_connect_credentials(node: Node, request: RequestView, connect: Frame) -> RequestView:
    """The request as the one handshake should see it: the credentials CONNECT carries are added
    where the request had none (the request's own win, as ``?token=`` wins over the header in
    :func:`~.handshake.credentials`).

    JWT mode: ``Authorization: Bearer <jwt>`` in CONNECT, else ``passcode`` (stompjs and stomp.py
    both have a field for it) is the token. Dev mode: ``login`` names the user, as ``?user=``
    does. A CONNECT token that names another user than the request's is refused
    (:func:`conflicting_user`), not silently ignored.
    """
    query = request.query
    has_token = bool(query.get("token")) or request.headers.get("Authorization", "").lower().startswith("bearer ")
    updates: dict[str, str] = {}
    if node.auth.dev_mode:
        login = connect.get("login")
        if login and not query.get("user"):
            updates["user"] = login
    elif not has_token:
        token = connect_token(connect)
        if token:
            updates["token"] = token
    if not updates:
        return request
    return request.with_query(updates)


async def conflicting_user(node: Node, request: RequestView, connect: Frame, user: str | None) -> str | None:
    """Why the CONNECT's credentials contradict the request's, or None. When the request named
    the user (``?user=``, ``?token=``, ``Authorization``) the CONNECT may repeat it, not change
    it: ``login`` (dev mode) or an ``Authorization: Bearer`` token (JWT mode, verified) naming
    someone else is refused. (A ``passcode`` next to a request token is not read: it may be a
    password meant for another broker.)"""
    if node.auth.dev_mode:
        login = connect.get("login")
        if login and request.query.get("user") and login != user:
            return "CONNECT login names another user than the handshake"
        return None
    header = connect.get("Authorization") or connect.get("authorization") or ""
    if not header.lower().startswith("bearer "):
        return None
    try:
        identity = await node.auth.verify(header[7:].strip())
    except Exception as exc:
        return classify(exc).message
    return None if identity.user == user else "CONNECT token names another user than the handshake"


def connect_token(connect: Frame) -> str | None:
    """The JWT a CONNECT frame carries: ``Authorization: Bearer <jwt>``, else ``passcode``."""
    header = connect.get("Authorization") or connect.get("authorization") or ""
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return connect.get("passcode") or None


__all__ = [
    "REFUSAL_CLOSE",
    "SERVER",
    "Admitted",
    "ConnectRefusal",
    "admit",
    "conflicting_user",
    "connect_token",
    "connected_frame",
    "with_connect_credentials",
]
