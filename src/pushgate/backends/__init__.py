"""Brokers, presence and lease stores: memory (single node) and Redis/Valkey (cluster).

Pick an implementation with :func:`create_stores` and a URL: ``memory://``,
``redis://host:port/db``, ``redis+cluster://host:port`` and the other schemes of
:data:`SUPPORTED_SCHEMES` (:mod:`.validation` has the table).

Layout, one file per interface and per implementation::

    broker.py   presence.py   lease.py           interfaces (typing.Protocol) and their data
    history.py                                   the history rules, once, and their Python version
    broker_memory.py  presence_memory.py  lease_memory.py   single-node implementations
    redis/                                       Redis/Valkey implementations (see its __init__)
    validation.py                                URL schemes and key prefix, checked without redis-py

Modules inside this package import from the specific module, never from this one, so that
importing any of them does not pull in the rest (and never redis-py for a memory node).
"""

from __future__ import annotations

import sys

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
from pushgate.backends.broker_memory import MemoryBroker
from pushgate.backends.lease import LeaseStore
from pushgate.backends.lease_memory import MemoryLeaseStore
from pushgate.backends.presence import ChannelPresence, NodeInfo, OnlineCounts, PresenceStore
from pushgate.backends.presence_memory import MemoryPresenceStore
from pushgate.backends.validation import SUPPORTED_SCHEMES, check_url
from pushgate.errors import BrokerUnavailable

__all__ = [
    "SUPPORTED_SCHEMES",
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
    "check_url",
    "create_broker",
    "create_stores",
    "is_unavailable",
]


def create_stores(
    url: str,
    *,
    prefix: str = "pg",
    node_ttl: float = 10.0,
    broker_timeout: float = 5.0,
    idempotency_window: float = 120.0,
    history_max_channels: int = 100_000,
    history_max_bytes: int = 256 * 1024 * 1024,
    publish_max_in_flight: int | None = None,
) -> tuple[Broker, PresenceStore, LeaseStore]:
    """Build the broker, presence store and lease store named by ``url``.

    ``memory://`` gives the single-node trio; the Redis/Valkey schemes give the Redis trio
    sharing one connection pool and one key ``prefix``. Raises ValueError for an unsupported
    scheme or a prefix the key layout cannot hold. ``broker_timeout`` bounds every Redis call
    (memory calls do not wait); ``idempotency_window`` is how long publish idempotency keys are
    remembered; ``history_max_*`` bound the memory broker's history (Redis keeps its own TTLs);
    ``publish_max_in_flight`` bounds the publications queued or awaiting a reply per Redis server
    (None: the Redis broker's default).
    """
    if check_url(url) == "memory":
        broker = MemoryBroker(
            history_max_channels=history_max_channels,
            history_max_bytes=history_max_bytes,
            idempotency_window=idempotency_window,
        )
        return broker, MemoryPresenceStore(), MemoryLeaseStore()
    # Imported here so a memory-only node never imports redis-py.
    from pushgate.backends.redis import RedisBroker, RedisConnection, RedisLeaseStore, RedisPresenceStore
    from pushgate.backends.redis.publishing import DEFAULT_MAX_IN_FLIGHT

    conn = RedisConnection(url, timeout=broker_timeout)
    return (
        RedisBroker(conn, prefix=prefix, idempotency_window=idempotency_window,
                    max_in_flight=DEFAULT_MAX_IN_FLIGHT if publish_max_in_flight is None else publish_max_in_flight),
        RedisPresenceStore(conn, prefix=prefix, node_ttl=node_ttl),
        RedisLeaseStore(conn, prefix=prefix),
    )


def create_broker(
    url: str, *, prefix: str = "pg", broker_timeout: float = 5.0, idempotency_window: float = 120.0
) -> Broker:
    """Just the broker named by ``url`` (for publishers, which need no presence or leases)."""
    if check_url(url) == "memory":
        return MemoryBroker(idempotency_window=idempotency_window)
    from pushgate.backends.redis import RedisBroker, RedisConnection

    return RedisBroker(
        RedisConnection(url, timeout=broker_timeout), prefix=prefix, idempotency_window=idempotency_window
    )


def is_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means the broker cannot be reached right now (a retry may succeed).

    The stores raise :class:`~pushgate.errors.BrokerUnavailable` for that; plain connection
    errors and timeouts count too, and so does an untranslated redis-py error (if redis-py is
    loaded at all), for code that talks to Redis some other way.
    """
    if isinstance(exc, BrokerUnavailable | ConnectionError | TimeoutError):
        return True
    if "redis" not in sys.modules:
        return False
    from pushgate.backends.redis.connection import unavailable

    return unavailable(exc) is not None
