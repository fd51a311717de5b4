"""Redis/Valkey leases: leader election for periodic jobs and once-per-tick claims.

A lease is one key holding its holder's id with a PX expiry: taking it is ``SET NX PX``,
renewing and releasing check the holder first (in Lua, so the check and the write are one
step), and a holder that stops renewing loses it when the key expires.
"""

from __future__ import annotations

from redis.commands.core import AsyncScript

from pushgate.backends.redis_common import Keys, RedisClient, RedisConnection, millis

__all__ = ["RedisLeaseStore"]

# KEYS: lease. ARGV: holder, ttl ms. Take when free, renew when ours.
_ACQUIRE_LUA = """
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS: lease. ARGV: holder.
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisLeaseStore:
    """Leases over one Redis/Valkey server or cluster; every lease key is its own slot.

    Needs no ``start``: it borrows the shared command client on each call (see
    :class:`~pushgate.backends.redis_common.RedisConnection`). :meth:`close` (not part of the
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
            self._scripts = (client, client.register_script(_ACQUIRE_LUA), client.register_script(_RELEASE_LUA))
        return self._scripts

    async def acquire(self, name: str, holder: str, ttl: float) -> bool:
        _, acquire, _ = self._client()
        return bool(await acquire(keys=[self._keys.lease(name)], args=[holder, millis(ttl)]))

    async def release(self, name: str, holder: str) -> None:
        _, _, release = self._client()
        await release(keys=[self._keys.lease(name)], args=[holder])

    async def claim_once(self, key: str, ttl: float) -> bool:
        client, _, _ = self._client()
        result = await client.execute_command("SET", self._keys.once(key), b"1", "NX", "PX", millis(ttl))
        return bool(result)

    async def close(self) -> None:
        self._scripts = None
        await self._conn.close_if_unused()
