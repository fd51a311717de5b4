"""Exceptions and close codes.

Exception tree (one root, so embedding code can catch everything pushgate raises)::

    PushgateError
    ├── ConfigError            bad configuration: names the key; the CLI exits with code 2
    ├── StartupError           the node cannot start here (port taken, no permission): one line, exit 1
    ├── AuthError              bad/expired token or refused origin: HTTP 401/403 at the handshake
    ├── ClientError            a client command failed: ``code`` + ``message`` go back in an error reply
    │   └── Reject             an application hook refused (connect, subscribe, publish)
    └── BrokerUnavailable      the broker link is down; the call may succeed later

Close codes (RFC 6455 §7.4 plus the private range). 4000–4499: reconnect with backoff;
4500–4999: do not reconnect. :func:`close_action` is the one table of what a client does after
each code: the Python client uses it, ``pushgate.js`` mirrors it (a test runs both over the same
codes), and ``docs/protocol.md`` has the table a client author needs.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Literal


class CloseCode(IntEnum):
    """WebSocket close codes this server sends, and what the client should do."""

    NORMAL = 1000  # done
    GOING_AWAY = 1001  # peer going away
    POLICY_VIOLATION = 1008  # not sent by pushgate; proxies/gateways may: do not retry the same thing
    MESSAGE_TOO_BIG = 1009  # frame over max_message_size: do not resend it
    INTERNAL_ERROR = 1011  # reconnect with backoff
    SERVICE_RESTART = 1012  # graceful drain: reconnect now (another node), recover with since
    RECONNECT = 4000  # generic: reconnect with backoff
    SLOW_CONSUMER = 4001  # client read too slowly: reconnect with backoff, recover with since
    INSUFFICIENT_STATE = 4002  # gap could not be filled: reconnect now, recover with since
    CONNECTION_LIMIT = 4003  # node full: reconnect with backoff (maybe another node)
    RATE_LIMITED = 4004  # kept sending past the rate limit: reconnect with backoff, send less
    TOKEN_EXPIRED = 4005  # the token's `exp` passed without a refresh: reconnect with a fresh token
    DISCONNECTED = 4500  # kicked by the server/API: do not reconnect
    PROTOCOL_VIOLATION = 4501  # e.g. binary frame on the JSON protocol: do not reconnect
    BAD_REQUEST = 4502  # handshake refused, told to a browser: malformed query (e.g. user id)
    UNAUTHORIZED = 4503  # handshake refused, told to a browser: missing, invalid or expired token
    FORBIDDEN = 4504  # handshake refused, told to a browser: origin not allowed, a connect hook refused

    @property
    def reconnect(self) -> bool:
        """True when a well-behaved client should reconnect after this code."""
        return close_action(self) != "stop"


#: Reconnect at once: the node is draining (another node, or this one restarted, serves us) or
#: lost the stream's state (recover with ``since`` now).
RECONNECT_NOW = frozenset({CloseCode.SERVICE_RESTART, CloseCode.INSUFFICIENT_STATE})
#: The private range where the server says "do not come back".
STOP_RANGE = range(4500, 5000)


def close_action(code: int | None) -> Literal["now", "backoff", "stop"]:
    """What a client does after the server closed with ``code`` (None: no close frame at all).

    * 1012 (service restart) and 4002 (insufficient state): reconnect now.
    * 4500–4999 (kicked, protocol violation) and 1008 (policy violation, RFC 6455 §7.4.1):
      stop; retrying the same thing cannot help.
    * Anything else (1000 from the server, 1001, 1006 = connection lost, 1009, 1011,
      4000–4499, unknown codes): reconnect with backoff.
    """
    if code in RECONNECT_NOW:
        return "now"
    if code is not None and (code in STOP_RANGE or code == CloseCode.POLICY_VIOLATION):
        return "stop"
    return "backoff"


class PushgateError(Exception):
    """Root of every exception pushgate raises."""


class StartupError(PushgateError):
    """The node cannot start in this environment (its port is taken, the address is not this
    host's): not a bad setting, so the CLI prints the message and exits with 1, not 2."""


class ConfigError(PushgateError):
    """Invalid configuration; ``key`` names the offending setting."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config {key}: {message}")
        self.key = key
        self.message = message


class AuthError(PushgateError):
    """Authentication or origin check failed at the handshake."""

    def __init__(self, message: str, *, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


class ClientError(PushgateError):
    """A client command failed. ``code`` is snake_case and part of the protocol."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Reject(ClientError):
    """Raised by an application hook to refuse a connect, subscribe or publish."""

    def __init__(self, message: str = "rejected by application", *, code: str = "rejected") -> None:
        super().__init__(code, message)


class BrokerUnavailable(PushgateError):
    """The broker cannot be reached right now."""
