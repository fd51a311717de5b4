"""The lease interface: leader election for periodic jobs and once-per-tick claims."""

from __future__ import annotations

from typing import Protocol


class LeaseStore(Protocol):
    """Leases for leader election (periodic jobs) and once-per-tick claims."""

    async def acquire(self, name: str, holder: str, ttl: float) -> bool:
        """Take or renew lease ``name`` for ``holder``; True if ``holder`` holds it now."""
        ...

    async def release(self, name: str, holder: str) -> None: ...

    async def claim_once(self, key: str, ttl: float) -> bool:
        """True for exactly one caller per ``key`` within ``ttl`` seconds, cluster-wide."""
        ...
