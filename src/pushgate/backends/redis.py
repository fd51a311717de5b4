"""Redis/Valkey implementations of the broker, presence and lease interfaces.

``redis://host:port/db`` uses one server with plain PUBLISH/SUBSCRIBE;
``redis+cluster://host:port`` uses a Redis/Valkey Cluster with sharded pub/sub
(SPUBLISH/SSUBSCRIBE), every key of one channel sharing the hash tag ``{channel}``.
The implementation lives in ``redis_broker``, ``redis_presence`` and ``redis_lease``.
"""

from __future__ import annotations

from pushgate.backends.redis_broker import RedisBroker
from pushgate.backends.redis_common import RedisConnection
from pushgate.backends.redis_lease import RedisLeaseStore
from pushgate.backends.redis_presence import RedisPresenceStore

__all__ = ["RedisBroker", "RedisConnection", "RedisLeaseStore", "RedisPresenceStore"]
