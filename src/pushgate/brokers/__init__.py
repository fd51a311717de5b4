"""Brokers, presence and lease stores: memory (single node) and Redis/Valkey (cluster).

Pick an implementation with :func:`create_stores` and a URL: ``memory://``, ``redis://host:port/db``
or ``redis+cluster://host:port``.
"""

from __future__ import annotations

from pushgate.brokers.base import (
    Broker,
    BrokerHandler,
    ChannelEvent,
    ChannelPresence,
    HistoryOptions,
    HistoryResult,
    HistoryStore,
    LeaseStore,
    NodeInfo,
    OnlineCounts,
    PresenceStore,
    Publication,
    StreamPosition,
    UserMessage,
)
from pushgate.brokers.memory import MemoryBroker, MemoryLeaseStore, MemoryPresenceStore

__all__ = [
    "Broker",
    "BrokerHandler",
    "ChannelEvent",
    "ChannelPresence",
    "HistoryOptions",
    "HistoryResult",
    "HistoryStore",
    "LeaseStore",
    "MemoryBroker",
    "MemoryLeaseStore",
    "MemoryPresenceStore",
    "NodeInfo",
    "OnlineCounts",
    "PresenceStore",
    "Publication",
    "StreamPosition",
    "UserMessage",
    "create_stores",
]


def create_stores(url: str, *, prefix: str = "pg") -> tuple[Broker, PresenceStore, LeaseStore]:
    """Build the broker, presence store and lease store named by ``url``.

    ``memory://`` gives the single-node trio; ``redis://`` and ``redis+cluster://`` (also
    ``rediss://``, ``valkey://``) give the Redis/Valkey trio sharing one key ``prefix``.
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "memory":
        return MemoryBroker(), MemoryPresenceStore(), MemoryLeaseStore()
    # Imported here so a memory-only node never imports redis-py.
    from pushgate.brokers.redis import RedisBroker, RedisConnection, RedisLeaseStore, RedisPresenceStore

    try:
        conn = RedisConnection(url)
    except ValueError:
        pass
    else:
        return (
            RedisBroker(conn, prefix=prefix),
            RedisPresenceStore(conn, prefix=prefix),
            RedisLeaseStore(conn, prefix=prefix),
        )
    raise ValueError(f"unsupported broker URL scheme {scheme!r} in {url!r}")
