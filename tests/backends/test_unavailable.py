"""Redis down: every store method that talks to Redis raises BrokerUnavailable, promptly.

redis-py's own exceptions are a detail of the Redis backends; the rest of pushgate only knows
:class:`pushgate.errors.BrokerUnavailable` (and ``is_unavailable``). A real redis-server is
stopped under started stores and each public method is called with a bound on its duration.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.exceptions

from pushgate.backends import ChannelEvent, HistoryOptions, StreamPosition, UserMessage, is_unavailable
from pushgate.backends.redis import RedisBroker, RedisPresenceStore
from pushgate.errors import BrokerUnavailable

from ..helpers import timeout as scaled
from ..servers import RedisServer
from .conftest import Backend

OPTS = HistoryOptions(size=10, ttl=60)
BOUND = 5.0  # seconds (scaled): redis-py's retries plus our own, far below a request timeout


async def _raises_unavailable(what: str, call: Callable[[], Awaitable[Any]]) -> BrokerUnavailable:
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as info:
        await asyncio.wait_for(call(), scaled(BOUND))
    elapsed = time.monotonic() - started
    assert elapsed < scaled(BOUND), f"{what} took {elapsed:.1f}s"
    exc = info.value
    assert is_unavailable(exc)
    # Translated once, at the boundary, with the Redis error kept as the cause.
    assert isinstance(exc.__cause__, redis.exceptions.RedisError | ConnectionError | TimeoutError), (what, exc)
    return exc


async def test_every_store_method_raises_broker_unavailable(own_redis: RedisServer) -> None:
    backend = Backend("redis", own_redis.url, own_redis)
    try:
        broker, rec = await backend.broker()
        await broker.subscribe("c")
        presence = await backend.presence("n1")
        await presence.add_connection("n1-a", "alice")
        lease = backend.lease()
        assert await lease.acquire("job", "n1", 5)
        publisher = RedisBroker(own_redis.url, prefix=backend.prefix)
        fresh = RedisPresenceStore(own_redis.url, prefix=backend.prefix)
        await publisher.start(None)
        try:
            own_redis.stop()
            assert await rec.next_link() is False

            pos = StreamPosition("e", 0)
            calls: dict[str, Callable[[], Awaitable[Any]]] = {
                "broker.publish": lambda: broker.publish("c", b"1", OPTS),
                "broker.publish (pipelined batch)": lambda: asyncio.gather(
                    *(broker.publish("c", str(i).encode(), OPTS) for i in range(5))
                ),
                "publisher.publish": lambda: publisher.publish("c", b"1", OPTS),
                "broker.publish_event": lambda: broker.publish_event(ChannelEvent("c", "join", "alice")),
                "broker.send_to_users": lambda: broker.send_to_users(["alice"], UserMessage("direct", data=b"1")),
                "broker.broadcast": lambda: broker.broadcast(b"1"),
                "broker.history": lambda: broker.history("c", since=pos),
                "broker.position": lambda: broker.position("c"),
                "broker.ack": lambda: broker.ack("!u:alice", pos, 60),
                "broker.acked": lambda: broker.acked("!u:alice"),
                "presence.user_connections": lambda: presence.user_connections(["alice"]),
                "presence.heartbeat": presence.heartbeat,
                "presence.add_connection": lambda: presence.add_connection("n1-b", "bob"),
                "presence.remove_connection": lambda: presence.remove_connection("n1-a", "alice"),
                "presence.join": lambda: presence.join("room", "n1-a", "alice"),
                "presence.leave": lambda: presence.leave("room", "n1-a"),
                "presence.presence": lambda: presence.presence("room"),
                "presence.online": presence.online,
                "presence.nodes": presence.nodes,
                "presence.purge_dead_nodes": presence.purge_dead_nodes,
                "presence.resync": lambda: presence.resync({"n1-a": "alice"}, {"room": {"n1-a": "alice"}}),
                "lease.acquire": lambda: lease.acquire("job", "n1", 5),
                "lease.release": lambda: lease.release("job", "n1"),
                "lease.claim_once": lambda: lease.claim_once("tick", 5),
                "new presence store start": lambda: fresh.start("n2"),
                "presence.close": presence.close,
            }
            for what, call in calls.items():
                await _raises_unavailable(what, call)
        finally:
            await publisher.close()
    finally:
        own_redis.start()  # so that the remaining closers can clean up
        await backend.close()


def test_is_unavailable() -> None:
    assert is_unavailable(BrokerUnavailable("down"))
    assert is_unavailable(ConnectionRefusedError())
    assert is_unavailable(redis.exceptions.ConnectionError("x"))  # untranslated, from elsewhere
    assert not is_unavailable(redis.exceptions.ResponseError("WRONGTYPE"))
    assert not is_unavailable(ValueError("x"))
    assert is_unavailable(redis.exceptions.ClusterDownError("CLUSTERDOWN The cluster is down"))
    assert is_unavailable(redis.exceptions.TryAgainError("TRYAGAIN"))
    no_node = redis.exceptions.RedisClusterException("Redis Cluster cannot be connected. Please provide ...")
    assert is_unavailable(no_node)
    assert not is_unavailable(redis.exceptions.RedisClusterException("EVALSHA - all keys must map to one slot"))
