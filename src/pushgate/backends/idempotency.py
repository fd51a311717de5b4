"""Idempotency keys of publishes: what a key may be, and the memory broker's window of them.

A publisher that got no answer (a timeout, a 503) cannot know whether its publish was applied;
retrying blindly may publish twice. With an ``idempotency_key``, a publish to the same channel
with the same key within ``idempotency_window`` seconds is not applied again: the broker answers
the first publication's position instead. The memory broker keeps recent keys in
:class:`RecentKeys`; the Redis brokers keep them in Redis, checked and set inside the publish
script (``P:idem:{channel}:<key>`` with PX = the window), so the rule holds cluster-wide and
two racing retries cannot both apply.

Only the key is compared, not the data: a key names one intended publication.
"""

from __future__ import annotations

import re
from typing import Final

from pushgate.backends.broker import StreamPosition
from pushgate.errors import ClientError

__all__ = ["MAX_KEY_LENGTH", "RecentKeys", "check_idempotency_key"]

MAX_KEY_LENGTH: Final = 128
# Letters, digits and a few URL/base64-safe marks: enough for UUIDs, ULIDs, base64 digests and
# "service:request-id" forms; nothing that needs escaping in a Redis key, a log line or JSON.
_KEY: Final = re.compile(r"[A-Za-z0-9_.:~+/=-]{1,128}")


def check_idempotency_key(key: str) -> str:
    """``key`` if it may be used, else :class:`ClientError` ``bad_request`` (1-128 safe chars)."""
    if not isinstance(key, str) or _KEY.fullmatch(key) is None:
        raise ClientError(
            "bad_request",
            f"idempotency_key must be 1-{MAX_KEY_LENGTH} characters of A-Z a-z 0-9 _ . : ~ + / = -",
        )
    return key


class RecentKeys:
    """The memory broker's keys of the last ``window`` seconds: ``(channel, key) -> position``.

    A plain dict in insertion order; the window is the same for every key, so insertion order is
    expiry order and expired keys are dropped from the front (amortised O(1)). At most
    ``max_keys`` are kept: past that the oldest are forgotten early (a retry of those would be
    applied again; the bound keeps a flood of distinct keys from growing memory). ``now`` is
    ``time.monotonic()``, passed in so tests drive time by hand.
    """

    __slots__ = ("_keys", "max_keys", "window")

    def __init__(self, window: float, *, max_keys: int = 100_000) -> None:
        self.window = window
        self.max_keys = max(1, max_keys)
        self._keys: dict[tuple[str, str], tuple[StreamPosition, float]] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def get(self, channel: str, key: str, now: float) -> StreamPosition | None:
        """The position remembered for ``key`` in ``channel``, if still within the window."""
        found = self._keys.get((channel, key))
        if found is None or found[1] <= now:
            return None
        return found[0]

    def put(self, channel: str, key: str, position: StreamPosition, now: float) -> None:
        keys = self._keys
        keys.pop((channel, key), None)
        keys[(channel, key)] = (position, now + self.window)
        self.sweep(now)
        while len(keys) > self.max_keys:
            del keys[next(iter(keys))]

    def sweep(self, now: float) -> None:
        """Forget keys whose window has passed (those at the front)."""
        keys = self._keys
        while keys:
            first = next(iter(keys))
            if keys[first][1] > now:
                return
            del keys[first]
