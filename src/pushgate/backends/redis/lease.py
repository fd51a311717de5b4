"""Redis/Valkey leases: leader election for periodic jobs and once-per-tick claims.

A lease is one key holding its holder's id with a PX expiry: taking it is ``SET NX PX``,
renewing and releasing check the holder first (in Lua, so the check and the write are one
step), and a holder that stops renewing loses it when the key expires. Errors reaching Redis
leave every public method as :class:`pushgate.errors.BrokerUnavailable`.
"""

from __future__ import annotations

from redis.commands.core import AsyncScript

from pushgate.backends.redis import scripts
from pushgate.backends.redis.connection import RedisClient, RedisConnection, millis, translate_errors
from pushgate.backends.redis.keys import Keys

__all__ = ["RedisLeaseStore"]


class RedisLeaseStore:
    """Leases over one Redis/Valkey server or cluster; every lease key is its own slot.

    Needs no ``start``: it borrows the shared command client on each call (see
    :class:`~.connection.RedisConnection`). :meth:`close` (not part of the
    ``LeaseStore`` protocol) closes the client when no started store holds it any more.
    """

    def __init__(self, url: str | RedisConnection, *, prefix: str = "pg") -> None:
        self._conn = url if isinstance(url, RedisConnection) else RedisConnection(url)
        self._keys = Keys(prefix)
        self._scripts: tuple[RedisClient, AsyncScript, AsyncScript] | None = None

    def _client(self) -> tuple[RedisClient, AsyncScript, AsyncScript]:
        client = self._conn.client
        if self._scripts is None or self._scripts[0] is not client:
            # Scripts are bound to a client; a client closed and made again needs new ones.
            self._scripts = (client, client.register_script(scripts.LEASE_ACQUIRE),
                             client.register_script(scripts.LEASE_RELEASE))
        return self._scripts

    @translate_errors
    async def acquire(self, name: str, holder: str, ttl: float) -> bool:
        _, acquire, _ = self._client()
        return bool(await acquire(keys=[self._keys.lease(name)], args=[holder, millis(ttl)]))

    @translate_errors
    async def release(self, name: str, holder: str) -> None:
        _, _, release = self._client()
        await release(keys=[self._keys.lease(name)], args=[holder])

    @translate_errors
    async def claim_once(self, key: str, ttl: float) -> bool:
        client, _, _ = self._client()
        result = await client.execute_command("SET", self._keys.once(key), b"1", "NX", "PX", millis(ttl))
        return bool(result)

    async def close(self) -> None:
        self._scripts = None
        await self._conn.close_if_unused()
