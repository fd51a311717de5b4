"""Idempotent publish, over memory, redis-server and the 3-shard Valkey cluster.

Within ``idempotency_window`` a publish to the same channel with the same key is not applied
again: it answers the first publication's position, is delivered once and kept once. Different
keys (or channels) are separate publications; after the window the key is free again. On Redis
the key is checked inside the publish script, so two nodes racing with one key apply it once.
"""

from __future__ import annotations

import asyncio

import pytest

from pushgate.backends import HistoryOptions
from pushgate.backends.redis import RedisBroker
from pushgate.errors import ClientError

from ..conftest import ServerFactory
from .conftest import Backend, same_slot_name, wait_until

OPTS = HistoryOptions(size=10, ttl=60)


async def test_same_key_twice_is_applied_once(backend: Backend) -> None:
    broker, rec = await backend.broker()
    await broker.subscribe("orders")
    marker = same_slot_name("orders", backend.keys.channel_topic)
    await broker.subscribe(marker)
    first = await broker.publish("orders", b'{"n":1}', OPTS, idempotency_key="req-1")
    again = await broker.publish("orders", b'{"n":1}', OPTS, idempotency_key="req-1")
    assert again == first
    await broker.publish(marker, b"0", OPTS)  # proves nothing else was delivered before it
    assert (await rec.next()).offset == first.offset
    assert (await rec.next()).channel == marker
    assert rec.empty()
    history = await broker.history("orders")
    assert [p.offset for p in history.publications] == [first.offset] and history.position == first


async def test_different_keys_and_channels_are_separate(backend: Backend) -> None:
    broker, _ = await backend.broker()
    a = await broker.publish("c", b"1", OPTS, idempotency_key="k1")
    b = await broker.publish("c", b"2", OPTS, idempotency_key="k2")
    c = await broker.publish("c", b"3", OPTS)  # no key: always applied
    d = await broker.publish("c", b"3", OPTS)
    other = await broker.publish("other", b"1", OPTS, idempotency_key="k1")  # same key, other channel
    assert [a.offset, b.offset, c.offset, d.offset] == [1, 2, 3, 4]
    assert other.offset == 1
    assert [p.data for p in (await broker.history("c")).publications] == [b"1", b"2", b"3", b"3"]
    assert await broker.publish("c", b"1", OPTS, idempotency_key="k1") == a


async def test_after_the_window_the_key_applies_again(backend: Backend) -> None:
    broker, _ = await backend.broker(idempotency_window=0.3)
    first = await broker.publish("w", b"1", OPTS, idempotency_key="retry")

    async def applied_again() -> bool:
        pos = await broker.publish("w", b"1", OPTS, idempotency_key="retry")
        return pos != first

    await wait_until(applied_again, 5.0, "the idempotency window to pass")
    assert (await broker.position("w")).offset == 2


async def test_racing_retries_apply_once_across_nodes(backend: Backend) -> None:
    backend.require_nodes()
    a, _ = await backend.broker()
    b, _ = await backend.broker()
    calls = [x.publish("race", b"1", OPTS, idempotency_key="once") for x in (a, b) for _ in range(5)]
    positions = await asyncio.gather(*calls)
    assert len(set(positions)) == 1
    assert [p.offset for p in (await a.history("race")).publications] == [1]


@pytest.mark.parametrize("key", ["", "x" * 129, "has space", "brace{", "nl\n", "é"])
async def test_bad_keys_are_refused(backend: Backend, key: str) -> None:
    broker, _ = await backend.broker()
    with pytest.raises(ClientError) as info:
        await broker.publish("k", b"1", OPTS, idempotency_key=key)
    assert info.value.code == "bad_request"
    assert (await broker.position("k")).offset == 0  # nothing was applied


async def test_good_keys_are_accepted(backend: Backend) -> None:
    broker, _ = await backend.broker()
    for i, key in enumerate(["a", "x" * 128, "0b7e-4c1a_9f.2:~+/="], 1):
        assert (await broker.publish("k", b"1", OPTS, idempotency_key=key)).offset == i


async def test_redis_node_gets_timeout_and_window(redis_backend: Backend, make_server: ServerFactory) -> None:
    """A node built from config passes broker_timeout and idempotency_window to its Redis broker."""
    server = await make_server(
        broker=redis_backend.url, redis_prefix=redis_backend.prefix, broker_timeout=0.7, idempotency_window=30
    )
    broker = server.node.broker
    assert isinstance(broker, RedisBroker)
    assert broker._conn.timeout == 0.7 and broker._conn.socket_timeout == 0.7
    first = await server.node.publish("orders", b"1", idempotency_key="k")
    assert await server.node.publish("orders", b"1", idempotency_key="k") == first
    ttl = await redis_backend.admin().pttl(redis_backend.keys.idempotency("orders", "k"))
    assert 0 < ttl <= 30_000
