"""When to reconnect and how long to wait: the close-code table and backoff, with no I/O.

These are the rules of docs/protocol.md#close-codes, kept in one place so that the connection
loop only asks "what now?" and tests can check the table without a server. The delays come from
:func:`pushgate.backoff.backoff`, the one policy shared with the server's Redis links and
``pushgate.js`` (re-exported here so ``pushgate.client.backoff`` keeps working).
"""

from __future__ import annotations

from enum import StrEnum

from ..backoff import backoff
from ..errors import close_action

__all__ = ["Action", "backoff", "close_code_action", "handshake_is_fatal"]


class Action(StrEnum):
    """What to do after a connection ended (same names as ``Pushgate.closeCodeAction`` in JS)."""

    NOW = "now"  # reconnect after a short random delay (``now_jitter``; once per healthy period, then back off)
    BACKOFF = "backoff"  # reconnect after the next backoff delay
    STOP = "stop"  # do not reconnect: the client becomes closed


# Statuses of a refused handshake that are worth retrying although they are 4xx.
_TRANSIENT_4XX = frozenset({408, 425, 429})


def close_code_action(code: int | None) -> Action:
    """Sort a WebSocket close code (``None``: no close frame at all) into now / backoff / stop.

    The table is :func:`pushgate.errors.close_action`, the server's own: one place for both.
    """
    return Action(close_action(code))


def handshake_is_fatal(status: int) -> bool:
    """True when an HTTP status refusing the upgrade will not change by retrying.

    A 4xx means the request itself is wrong (bad user id, missing or invalid token, refused origin
    or connect hook, wrong path); 408/425/429 are the 4xx exceptions that mean "later". 5xx
    (including pushgate's 503 while draining) and every other status are retried with backoff.
    A 401 stops the client even with a token provider: a provider that produced a rejected token
    will most likely produce another, and retrying bad credentials forever is what gets a client
    rate-limited or banned. Restart the client once the credential problem is fixed.
    """
    return 400 <= status < 500 and status not in _TRANSIENT_4XX
