"""Redis/Valkey implementations of the broker, presence and lease interfaces.

``redis://host:port/db`` uses one server with plain PUBLISH/SUBSCRIBE;
``redis+cluster://host:port`` uses a Redis/Valkey Cluster with sharded pub/sub
(SPUBLISH/SSUBSCRIBE), every key of one channel sharing the hash tag ``{channel}``;
``redis+sentinel://s1:26379,s2:26379/<service>`` uses the primary the sentinels name, followed
through failovers (all schemes: :mod:`pushgate.backends.validation`).

Modules, one concern each:

==================  ============================================================================
``connection``      RedisConnection (URL -> shared command client, pub/sub connections, the
                    Sentinel query: ``resolve``), error translation to BrokerUnavailable
``keys``            key and topic names, hash tags, the key layout
``envelope``        what travels on pub/sub topics (publications, events, user messages)
``scripts``         every Lua script (the Redis copy of the history rules among them)
``link``            PubSubLink: one pub/sub connection kept alive; LinkOptions
``links``           LinkPool: which link carries which topic, cluster slot routing, rebalancing
                    after MOVED/misrouted topics, aggregated link health
``broker``          RedisBroker: the data path (publish, history, dispatch)
``resp``            RESP request encoding without I/O; the pre-encoded publish EVALSHA per channel
``wire``            a bare asyncio connection (TCP, TLS, Unix) and its AUTH/SELECT handshake
``pipe``            PublishPipe: publications to one server, auto-pipelined, hiredis replies,
                    deadlines, bound, reconnect with the shared backoff
``publishing``      PublishPath: pipe per server / cluster primary, detours for moved slots
``presence``        RedisPresenceStore
``lease``           RedisLeaseStore
==================  ============================================================================
"""

from __future__ import annotations

from pushgate.backends.redis.broker import RedisBroker
from pushgate.backends.redis.connection import RedisConnection
from pushgate.backends.redis.lease import RedisLeaseStore
from pushgate.backends.redis.link import LinkOptions
from pushgate.backends.redis.presence import RedisPresenceStore

__all__ = ["LinkOptions", "RedisBroker", "RedisConnection", "RedisLeaseStore", "RedisPresenceStore"]
