"""What the client raises, in one tree under pushgate's root exception.

::

    PushgateError                   (pushgate.errors: root of everything pushgate raises)
    └── PushgateClientError         root of the client's errors; ``code`` is a short snake_case name
        ├── RequestError            the server answered a command with an ``error`` reply
        │                           (``code`` from docs/protocol.md#errors, ``retryable``)
        ├── Disconnected            the connection dropped while the command was on the wire: it may or
        │                           may not have been applied, and it is never resent (at-most-once)
        ├── RequestTimeout          no reply within ``request_timeout`` (also a ``TimeoutError``)
        ├── ConnectTimeout          ``connect()`` saw no welcome within ``connect_timeout`` (also a
        │                           ``TimeoutError``); ``last_error`` says what the attempts met
        ├── MessageTooBig           the command is larger than the server accepts; refused locally
        ├── HandshakeError          the server refused the WebSocket handshake for good (400/401/403...),
        │                           with the server's ``code`` and ``message`` from the JSON body
        ├── ClientClosed            the client is closed: ``close()`` was called or the server said stop
        │                           (``close_code`` 4500-4999 / 1008), or a handshake was refused
        └── UsageError              you misused the API (request before ``connect()``, subscribing twice)

The names differ from :class:`pushgate.errors.ClientError` on purpose: that one is raised *on the
server* to produce an error reply; :class:`RequestError` is that reply arriving at a client. An
application embedding both (tests, bots run next to the server) must not confuse them.

Error codes mirror the browser client's (``pushgate.js``): server codes pass through unchanged, and
client-side failures use ``disconnected``, ``timeout``, ``message_too_big``, ``closed``.
"""

from __future__ import annotations

from typing import Any

from ..errors import PushgateError

__all__ = [
    "ClientClosed",
    "ConnectTimeout",
    "Disconnected",
    "HandshakeError",
    "MessageTooBig",
    "PushgateClientError",
    "RequestError",
    "RequestTimeout",
    "UsageError",
]

# Error reply codes for which trying the same command again later can succeed.
_RETRYABLE_CODES = frozenset({"unavailable", "internal"})


class PushgateClientError(PushgateError):
    """Root of the client's errors. ``code`` names the failure; ``message`` is for humans."""

    code: str = "client_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RequestError(PushgateClientError):
    """The server refused a command with an ``error`` reply; the connection stays open.

    ``reply`` is the whole error frame. ``retryable`` is true when the same command may succeed
    later unchanged (the broker was unavailable, a server hook crashed); false for refusals that
    will not change by themselves (``permission_denied``, ``bad_request``, ``rejected``...).
    """

    def __init__(self, code: str, message: str, reply: dict[str, Any] | None = None) -> None:
        super().__init__(message or code)
        self.code = code
        self.reply = reply

    @property
    def retryable(self) -> bool:
        return self.code in _RETRYABLE_CODES

    def __repr__(self) -> str:
        return f"RequestError({self.code!r}, {self.message!r})"


class Disconnected(PushgateClientError):
    """The connection closed while the command was in flight.

    The server may or may not have applied it. The client never resends on its own — a
    ``publish`` is at-most-once — because only the caller knows whether repeating is safe.
    """

    code = "disconnected"

    def __init__(self, message: str, *, close_code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.close_code = close_code
        self.reason = reason


class RequestTimeout(PushgateClientError, TimeoutError):
    """No reply within ``request_timeout`` (counting any wait for a connection)."""

    code = "timeout"


class ConnectTimeout(PushgateClientError, TimeoutError):
    """:meth:`Client.connect` got no welcome within ``connect_timeout``; the client is closed.

    ``last_error`` is what the last attempt met (``cannot connect: ConnectionRefusedError...``, a
    5xx, no welcome), so a wrong URL or a server that is down is told apart from a slow one.
    """

    code = "connect_timeout"

    def __init__(self, message: str, *, last_error: str = "") -> None:
        super().__init__(message)
        self.last_error = last_error


class MessageTooBig(PushgateClientError):
    """Refused before sending: the server would close the connection with 1009 for this frame."""

    code = "message_too_big"


class HandshakeError(PushgateClientError):
    """The server answered the WebSocket upgrade with an HTTP error that retrying will not fix.

    ``status`` is the HTTP status (401: token missing/invalid/expired, 403: origin or connect hook
    refused, 400: invalid ``user``); ``code`` and ``reason`` are the server's own, from the JSON
    body ``{"error": {"code", "message"}}`` of docs/protocol.md#when-the-handshake-is-refused
    (``rejected`` or a connect hook's code, ``unauthorized``...). Without such a body (a proxy's
    page, a session of your own whose responses the client cannot read) ``code`` is guessed from
    the status and ``reason`` is the status line. Transient refusals (5xx, 503 while draining,
    408, 429) are retried with backoff instead and never surface as this exception.
    """

    def __init__(self, status: int, message: str, *, code: str | None = None) -> None:
        self.status = status
        self.code = code or {401: "unauthorized", 403: "forbidden"}.get(status, "handshake_refused")
        self.reason = message
        super().__init__(f"handshake refused with HTTP {status} {self.code}: {message}")


class ClientClosed(PushgateClientError):
    """The client is closed and will not reconnect.

    ``close_code`` (and ``reason``) is the WebSocket close that stopped it: 1000 after :meth:`Client.close`,
    the server's code for 4500-4999/1008, ``None`` when a refused handshake stopped it (then
    ``__cause__`` is the :class:`HandshakeError`).
    """

    code = "closed"

    def __init__(self, message: str, *, close_code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.close_code = close_code
        self.reason = reason  # the server's close reason ("kicked by admin"), if it gave one


class UsageError(PushgateClientError):
    """The API was misused (a local mistake, never something the server said)."""

    code = "usage"
