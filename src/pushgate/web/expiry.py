"""Tokens do not outlive their ``exp``: one timer per connection closes it with 4005.

A connection authenticated with a token that has ``exp`` gets one ``loop.call_at`` at that
moment (no task, no polling); a ``refresh`` command re-arms it for the new token's ``exp``, and
closing the connection cancels it. The timer holds the connection only weakly, so a connection
that closed without cancelling its timer is not kept alive until ``exp``.
"""

from __future__ import annotations

import asyncio
import time
import weakref

from ..errors import CloseCode
from .connection import Connection

EXPIRED_REASON = "token expired: reconnect with a fresh token"


class TokenDeadline:
    """Closes ``conn`` with :attr:`CloseCode.TOKEN_EXPIRED` when its token's ``exp`` passes."""

    def __init__(self, conn: Connection) -> None:
        self._conn = weakref.ref(conn)
        self._handle: asyncio.TimerHandle | None = None
        self.exp: float | None = None

    def set(self, exp: float | None) -> None:
        """Arm for ``exp`` (Unix seconds; one already past fires at the next loop iteration), or
        disarm with None. Replaces the previous deadline."""
        self.cancel()
        self.exp = exp
        if exp is None:
            return
        loop = asyncio.get_running_loop()
        # exp is wall-clock time; the loop's clock is monotonic: convert once, here
        self._handle = loop.call_at(loop.time() + max(0.0, exp - time.time()), _expire, self._conn)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def _expire(ref: weakref.ref[Connection]) -> None:
    conn = ref()
    if conn is not None and not conn.closed:
        conn.close(CloseCode.TOKEN_EXPIRED, EXPIRED_REASON)
