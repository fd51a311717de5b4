"""Single-node leases and once-per-tick claims, timed with the monotonic clock."""

from __future__ import annotations

import time

__all__ = ["MemoryLeaseStore"]


class MemoryLeaseStore:
    """Leases and once-claims in process memory, timed with the monotonic clock."""

    def __init__(self) -> None:
        self._leases: dict[str, tuple[str, float]] = {}
        self._claims: dict[str, float] = {}

    async def acquire(self, name: str, holder: str, ttl: float) -> bool:
        now = time.monotonic()
        current = self._leases.get(name)
        if current is None or current[1] <= now or current[0] == holder:
            self._leases[name] = (holder, now + ttl)
            return True
        return False

    async def release(self, name: str, holder: str) -> None:
        current = self._leases.get(name)
        if current is not None and current[0] == holder:
            del self._leases[name]

    async def claim_once(self, key: str, ttl: float) -> bool:
        now = time.monotonic()
        if len(self._claims) > 1024:
            # Keep the table bounded: forget claims whose window has passed.
            self._claims = {k: exp for k, exp in self._claims.items() if exp > now}
        expires = self._claims.get(key)
        if expires is not None and expires > now:
            return False
        self._claims[key] = now + ttl
        return True
