"""Brokers, presence and lease stores: memory (single node) and Redis/Valkey (cluster).

Pick an implementation with :func:`create_stores` and a URL: ``memory://``, ``redis://host:port/db``
or ``redis+cluster://host:port``.
"""

from __future__ import annotations

from pushgate.backends.broker import (
    Broker,
    BrokerHandler,
    ChannelEvent,
    HistoryOptions,
    HistoryResult,
    HistoryStore,
    Publication,
    StreamPosition,
    UserMessage,
)
from pushgate.backends.lease import LeaseStore
from pushgate.backends.memory import MemoryBroker, MemoryLeaseStore, MemoryPresenceStore
from pushgate.backends.presence import ChannelPresence, NodeInfo, OnlineCounts, PresenceStore

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
    "is_unavailable",
]


def create_stores(
    url: str, *, prefix: str = "pg", node_ttl: float = 10.0
) -> tuple[Broker, PresenceStore, LeaseStore]:
    """Build the broker, presence store and lease store named by ``url``.

    ``memory://`` gives the single-node trio; ``redis://`` and ``redis+cluster://`` (also
    ``rediss://``, ``valkey://``) give the Redis/Valkey trio sharing one key ``prefix``.
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "memory":
        return MemoryBroker(), MemoryPresenceStore(), MemoryLeaseStore()
    # Imported here so a memory-only node never imports redis-py.
    from pushgate.backends.redis import RedisBroker, RedisConnection, RedisLeaseStore, RedisPresenceStore

    try:
        conn = RedisConnection(url)
    except ValueError:
        pass
    else:
        return (
            RedisBroker(conn, prefix=prefix),
            RedisPresenceStore(conn, prefix=prefix, node_ttl=node_ttl),
            RedisLeaseStore(conn, prefix=prefix),
        )
    raise ValueError(f"unsupported broker URL scheme {scheme!r} in {url!r}")


def is_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means the broker cannot be reached right now (a retry may succeed)."""
    from pushgate.errors import BrokerUnavailable

    if isinstance(exc, BrokerUnavailable | ConnectionError | TimeoutError):
        return True
    try:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, RedisConnectionError | RedisTimeoutError)
