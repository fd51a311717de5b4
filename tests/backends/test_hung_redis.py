"""A hung Redis (SIGSTOP: sockets open, nothing answered) costs a caller ``broker_timeout``.

Before, a publish waited redis-py's socket timeout once per retry (20-100 s), and a publish
answered 503 could still be applied when Redis woke up, so a retry published twice. Now every
store call fails with BrokerUnavailable within the connection's ``timeout`` (plus slack), the
broker works again after SIGCONT, and a retry with the publish's ``idempotency_key`` is answered
with the position of the publish that was applied late, instead of publishing it again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pushgate.backends import ChannelEvent, HistoryOptions, StreamPosition, UserMessage
from pushgate.backends.redis import LinkOptions, RedisBroker, RedisConnection, RedisLeaseStore, RedisPresenceStore
from pushgate.errors import BrokerUnavailable

from ..helpers import timeout as scaled
from ..servers import RedisServer
from .conftest import Backend, Recorder, wait_until

OPTS = HistoryOptions(size=10, ttl=60)
BROKER_TIMEOUT = 1.0
SLACK = 2.0


async def _fails_in_time(what: str, call: Callable[[], Awaitable[Any]]) -> None:
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable):
        # the outer bound only keeps a regression from hanging the suite
        await asyncio.wait_for(call(), scaled(BROKER_TIMEOUT + 30))
    elapsed = time.monotonic() - started
    assert elapsed < BROKER_TIMEOUT + scaled(SLACK), f"{what} took {elapsed:.1f}s"


async def test_every_call_fails_within_broker_timeout_then_recovers(own_redis: RedisServer) -> None:
    backend = Backend("redis", own_redis.url, own_redis)
    conn = RedisConnection(own_redis.url, timeout=BROKER_TIMEOUT)
    links = LinkOptions(ping_interval=0.3, ping_timeout=0.5, backoff_min=0.05, backoff_max=0.3)
    broker = RedisBroker(conn, prefix=backend.prefix, links=links)
    presence = RedisPresenceStore(conn, prefix=backend.prefix)
    lease = RedisLeaseStore(conn, prefix=backend.prefix)
    rec = Recorder()
    await broker.start(rec)
    await presence.start("n1")
    try:
        await broker.subscribe("c")
        before = await broker.publish("c", b'"before"', OPTS)
        assert (await rec.next()).offset == before.offset
        own_redis.pause()
        try:
            pos = StreamPosition(before.epoch, 0)
            calls: dict[str, Callable[[], Awaitable[Any]]] = {
                "publish with a key": lambda: broker.publish("c", b'"late"', OPTS, idempotency_key="order-7"),
                "publish": lambda: broker.publish("c", b'"x"', OPTS),
                "pipelined publishes": lambda: asyncio.gather(
                    *(broker.publish("c", str(i).encode(), OPTS) for i in range(5))
                ),
                "history": lambda: broker.history("c", since=pos),
                "position": lambda: broker.position("c"),
                "publish_event": lambda: broker.publish_event(ChannelEvent("c", "join", "alice")),
                "send_to_users": lambda: broker.send_to_users(["alice"], UserMessage("direct", data=b"1")),
                "broadcast": lambda: broker.broadcast(b"1"),
                "presence.add_connection": lambda: presence.add_connection("n1-a", "alice"),
                "presence.online": presence.online,
                "ack": lambda: broker.ack("!u:alice", pos, 60),
                "acked": lambda: broker.acked("!u:alice"),
                "presence.user_connections": lambda: presence.user_connections(["alice"]),
                "lease.claim_once": lambda: lease.claim_once("tick", 5),
            }
            # All at once (each timed on its own): a hung Redis must not make them queue up.
            await asyncio.gather(*(_fails_in_time(what, call) for what, call in calls.items()))
        finally:
            own_redis.resume()

        # Redis is back: the same broker and stores work again (pooled connections reconnect).
        async def publishes() -> bool:
            try:
                await broker.publish("probe", b"1", OPTS)
            except BrokerUnavailable:
                return False
            return True

        await wait_until(publishes, 10.0, "publishing to work again after SIGCONT")
        await presence.heartbeat()  # the node's alive key may have lapsed meanwhile
        await presence.add_connection("n1-a", "alice")
        assert (await presence.online()).connections == 1
        # The publish that failed with "order-7" may have been applied once Redis woke up (its
        # bytes were in the server's socket buffer). A retry with the key never adds a second one.
        retry = await broker.publish("c", b'"late"', OPTS, idempotency_key="order-7")
        again = await broker.publish("c", b'"late"', OPTS, idempotency_key="order-7")
        assert retry == again
        kept = [p.data for p in (await broker.history("c")).publications]
        assert kept.count(b'"late"') == 1

        # And live delivery resumes on the pub/sub link.
        async def delivered() -> bool:
            await broker.publish("c", b'"after"', OPTS)
            try:
                while True:
                    got = await asyncio.wait_for(rec.items.get(), 0.2)
                    if got.data == b'"after"':
                        return True
            except TimeoutError:
                return False

        await wait_until(delivered, 15.0, "live delivery after SIGCONT")
    finally:
        await presence.close()
        await broker.close()
        await backend.close()
