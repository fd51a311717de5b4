"""Token buckets: the rate limits of a connection's commands and publish bytes, and of a node's publishes.

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per second; a call that
finds enough tokens takes them and is allowed. Time comes from ``time.monotonic`` (or a clock
the caller passes, which is how the tests drive it). No I/O, no tasks: a bucket is refilled
lazily when it is asked, so an idle connection costs nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up. ``rate <= 0`` means unlimited."""

    __slots__ = ("_clock", "_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0) if rate > 0 else 0.0
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()

    def take(self, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if there are that many (a cost above ``burst`` needs a full bucket)."""
        if self.rate <= 0:
            return True
        now = self._clock()
        tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if tokens >= min(cost, self.burst):
            self._tokens = tokens - cost  # may go negative: a big message is paid back over time
            return True
        self._tokens = tokens
        return False

    def retry_after(self, cost: float = 1.0) -> float:
        """Seconds until ``take(cost)`` could succeed (0 when it would now)."""
        if self.rate <= 0:
            return 0.0
        tokens = min(self.burst, self._tokens + (self._clock() - self._stamp) * self.rate)
        return max(0.0, (min(cost, self.burst) - tokens) / self.rate)


__all__ = ["TokenBucket"]
