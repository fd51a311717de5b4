"""The Redis publish hot path (``redis/pipe.py``, ``redis/publishing.py``) against real servers.

What the pipe promises beyond the conformance suite: publications issued together leave
together (one write per server per loop iteration) and are applied in call order; a Redis that
goes away mid-pipeline fails what was pending with BrokerUnavailable (a prefix of the calls
succeeded, never a later one without an earlier one) and the pipe comes back by itself; a
flushed script cache costs nothing but a reload; a burst larger than ``max_in_flight`` waits
instead of piling up; and on a cluster, publications caught by a slot move keep their order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvloop
from redis.asyncio import Redis
from redis.crc import key_slot

from pushgate.backends import HistoryOptions, StreamPosition
from pushgate.backends.redis import RedisBroker
from pushgate.backends.redis.pipe import PublishPipe
from pushgate.errors import BrokerUnavailable

from ..servers import RedisServer, ValkeyCluster
from .conftest import Backend, wait_until
from .test_cluster import _move_slot, _owner_port

OPTS = HistoryOptions(size=10_000, ttl=60)


def _pipes(broker: Any) -> list[PublishPipe]:
    assert isinstance(broker, RedisBroker)
    return broker.publish_pipes


async def _history_data(broker: Any, channel: str) -> list[bytes]:
    return [p.data for p in (await broker.history(channel)).publications]


@pytest.fixture(params=["redis", "cluster"])
async def redis_kind(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """A Redis backend: one server, then a 3-shard cluster (``backend`` without memory)."""
    server = request.getfixturevalue("redis_server" if request.param == "redis" else "valkey_cluster")
    b = Backend(request.param, server.url, server)
    yield b
    await b.close()


async def test_concurrent_publishes_keep_call_order_and_leave_together(redis_kind: Backend) -> None:
    backend = redis_kind
    broker, _ = await backend.broker()
    await broker.publish("warm", b"0", OPTS)  # connected, script loaded
    channels = [f"order-{i}" for i in range(4)]
    writes_before = sum(p.writes for p in _pipes(broker))
    # 4 x 250 publications started in one loop iteration, the channels interleaved.
    calls = [(channels[i % 4], b"%d" % i) for i in range(1000)]
    positions = await asyncio.gather(*(broker.publish(ch, data, OPTS) for ch, data in calls))
    for ch in channels:
        mine = [(pos, data) for (c, data), pos in zip(calls, positions, strict=True) if c == ch]
        assert [pos.offset for pos, _ in mine] == list(range(1, 251)), "offsets follow call order"
        assert await _history_data(broker, ch) == [data for _, data in mine]
    # One write per server for the whole burst (a cluster spreads the 4 channels over its primaries).
    writes = sum(p.writes for p in _pipes(broker)) - writes_before
    assert writes <= len(_pipes(broker)), f"{writes} writes for one loop iteration's publications"


async def test_many_publishers_interleaved_over_iterations(redis_backend: Backend) -> None:
    """Tasks that each publish a sequence, awaiting every publish: each sequence stays in order."""
    broker, _ = await redis_backend.broker()

    async def sequence(n: int) -> list[StreamPosition]:
        return [await broker.publish("shared", b"[%d,%d]" % (n, i), OPTS) for i in range(50)]

    results = await asyncio.gather(*(sequence(n) for n in range(20)))
    for positions in results:
        offsets = [p.offset for p in positions]
        assert offsets == sorted(offsets) and len(set(offsets)) == 50
    kept = await _history_data(broker, "shared")
    assert len(kept) == 1000
    for n in range(20):
        assert [d for d in kept if d.startswith(b"[%d," % n)] == [b"[%d,%d]" % (n, i) for i in range(50)]


async def test_redis_stop_mid_pipeline_fails_a_suffix_then_recovers(own_redis: RedisServer) -> None:
    backend = Backend("redis", own_redis.url, own_redis)
    try:
        broker, _ = await backend.broker()
        before = await broker.publish("c", b"0", OPTS)
        # More than Redis gets through before it acts on SIGTERM (its cron runs every 100 ms).
        tasks = [asyncio.ensure_future(broker.publish("c", b"%d" % i, OPTS)) for i in range(1, 50_001)]
        await asyncio.sleep(0)  # the burst is written
        own_redis.stop()  # blocks the loop: whatever Redis does meanwhile, replies are cut off
        results = await asyncio.gather(*tasks, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        assert failed, "the stop came too late to catch anything in flight"
        for exc in failed:
            assert isinstance(exc, BrokerUnavailable), repr(exc)
            assert exc.__cause__ is not None  # translated once, the Redis-side error kept
        # Redis applies a connection's commands in order: the answered ones are a prefix of the calls.
        done = [r for r in results if isinstance(r, StreamPosition)]
        assert results[: len(done)] == done
        assert [p.offset for p in done] == list(range(before.offset + 1, before.offset + 1 + len(done)))

        # Down: publications fail fast (no connect attempt per call inside the backoff window).
        with pytest.raises(BrokerUnavailable):
            await asyncio.wait_for(broker.publish("c", b"down", OPTS), 2)

        own_redis.start()

        async def works() -> bool:
            try:
                await broker.publish("c", b"back", OPTS)
            except BrokerUnavailable:
                return False
            return True

        await wait_until(works, 10.0, "publishing to work again after the restart")
        after = await broker.publish("c", b"after", OPTS)
        assert after.epoch == before.epoch  # the AOF kept the stream
        assert after.offset > before.offset + len(done)
    finally:
        if own_redis.proc is None:
            own_redis.start()  # so that the closers can clean up
        await backend.close()


async def test_script_flush_reloads_and_keeps_order(redis_backend: Backend) -> None:
    broker, _ = await redis_backend.broker()
    await broker.publish("flushed", b"0", OPTS)
    admin = redis_backend.admin()
    first = [asyncio.ensure_future(broker.publish("flushed", b"%d" % i, OPTS)) for i in range(1, 201)]
    await admin.script_flush()
    second = [asyncio.ensure_future(broker.publish("flushed", b"%d" % i, OPTS)) for i in range(201, 401)]
    positions = await asyncio.gather(*first, *second)
    assert [p.offset for p in positions] == list(range(2, 402))
    assert await _history_data(broker, "flushed") == [b"%d" % i for i in range(401)]


async def test_huge_burst_stays_bounded_and_in_order(redis_backend: Backend) -> None:
    broker, _ = await redis_backend.broker(max_in_flight=64)
    await broker.publish("burst", b"0", OPTS)
    (pipe,) = _pipes(broker)
    peak = 0
    stop = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, pipe.in_flight)
            await asyncio.sleep(0)

    watcher = asyncio.ensure_future(watch())
    positions = await asyncio.gather(*(broker.publish("burst", b"%d" % i, OPTS) for i in range(1, 20_001)))
    stop.set()
    await watcher
    assert 0 < peak <= 64, peak
    assert [p.offset for p in positions] == list(range(2, 20_002))
    assert pipe.in_flight == 0


async def test_burst_against_a_hung_redis_fails_within_the_timeout(own_redis: RedisServer) -> None:
    from pushgate.backends.redis import RedisConnection

    backend = Backend("redis", own_redis.url, own_redis)
    broker = RedisBroker(RedisConnection(own_redis.url, timeout=0.5), prefix=backend.prefix, max_in_flight=16)
    await broker.start(None)
    try:
        await broker.publish("hung", b"0", OPTS)
        own_redis.pause()
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            results = await asyncio.wait_for(
                asyncio.gather(*(broker.publish("hung", b"1", OPTS) for _ in range(200)), return_exceptions=True),
                10,
            )
            assert loop.time() - started < 2.0
            assert all(isinstance(r, BrokerUnavailable) for r in results), {type(r) for r in results}
            assert _pipes(broker)[0].in_flight == 0
        finally:
            own_redis.resume()

        async def works() -> bool:
            try:
                await broker.publish("hung", b"2", OPTS)
            except BrokerUnavailable:
                return False
            return True

        await wait_until(works, 10.0, "publishing after SIGCONT")
    finally:
        await broker.close()
        await backend.close()


async def test_publish_path_under_uvloop(redis_server: RedisServer) -> None:
    """Nodes run on uvloop, whose transports are not asyncio.Transport subclasses."""
    prefix = "uvloop-pipe"

    async def run() -> list[int]:
        broker = RedisBroker(redis_server.url, prefix=prefix)
        await broker.start(None)
        try:
            positions = await asyncio.gather(*(broker.publish("uv", b"%d" % i, OPTS) for i in range(100)))
            return [p.offset for p in positions]
        finally:
            await broker.close()
            client = Redis.from_url(redis_server.url)
            await client.delete(*[k async for k in client.scan_iter(match=f"{prefix}:*")])
            await client.aclose()

    offsets = await asyncio.to_thread(lambda: uvloop.run(run()))
    assert offsets == list(range(1, 101))


async def test_cluster_slot_move_keeps_publications_in_order(
    cluster_backend: Backend, valkey_cluster: ValkeyCluster
) -> None:
    """Publications sent to the old owner come back MOVED and take the detour through redis-py;
    those issued meanwhile wait behind them, so offsets still follow call order."""
    broker, _ = await cluster_backend.broker()
    first = await broker.publish("moving", b"0", OPTS)
    topic = cluster_backend.keys.channel_topic("moving")
    source = await _owner_port(valkey_cluster, topic)
    target = next(p for p in valkey_cluster.ports if p != source)
    await _move_slot(valkey_cluster, key_slot(topic), source, target)

    early = [asyncio.ensure_future(broker.publish("moving", b"%d" % i, OPTS)) for i in range(1, 101)]
    await asyncio.sleep(0)  # written to the old owner, on their way back as MOVED
    late = [asyncio.ensure_future(broker.publish("moving", b"%d" % i, OPTS)) for i in range(101, 201)]
    positions = await asyncio.gather(*early, *late)
    assert [p.offset for p in positions] == list(range(first.offset + 1, first.offset + 201))
    assert await _history_data(broker, "moving") == [b"%d" % i for i in range(201)]
    # Back on the fast path, on the new owner's pipe.
    again = await broker.publish("moving", b"201", OPTS)
    assert again.offset == first.offset + 201
    assert any(p.name.endswith(f":{target}") and p.sent > 0 for p in _pipes(broker))


async def test_url_password_and_database_reach_both_hot_paths(own_redis: RedisServer) -> None:
    """The pipe and the links connect on their own: they must AUTH and SELECT like redis-py."""
    admin = Redis.from_url(own_redis.url)
    await admin.config_set("requirepass", "s3cret")
    await admin.aclose()
    url = f"redis://:s3cret@127.0.0.1:{own_redis.port}/3"
    backend = Backend("redis", url, own_redis)
    try:
        broker, rec = await backend.broker()
        await broker.subscribe("authed")
        pos = await broker.publish("authed", b'"x"', OPTS)
        got = await rec.next()
        assert (got.channel, got.offset, got.data) == ("authed", pos.offset, b'"x"')
        db3 = Redis.from_url(url)
        try:
            assert await db3.exists(backend.keys.history("authed")) == 1
        finally:
            await db3.aclose()
        # A wrong password: publishing fails as unavailable, it does not hang or crash.
        wrong = RedisBroker(f"redis://:nope@127.0.0.1:{own_redis.port}/3", prefix=backend.prefix)
        await wrong.start(None)
        try:
            with pytest.raises(BrokerUnavailable):
                await asyncio.wait_for(wrong.publish("authed", b"1", OPTS), 5)
        finally:
            await wrong.close()
    finally:
        await backend.close()
        admin = Redis.from_url(url)
        await admin.config_set("requirepass", "")
        await admin.aclose()


async def test_the_in_flight_bound_is_a_node_setting(redis_server: RedisServer) -> None:
    """``broker_publish_max_in_flight`` reaches every publish pipeline a node opens."""
    from pushgate.config import load_config
    from pushgate.node import Node

    config = load_config(env={}, cli={"broker": redis_server.url, "broker_publish_max_in_flight": 64,
                                      "port": 0})
    node = Node(config)
    await node.start()
    try:
        await node.publish("bound", b"1")
        pipes = node.broker.publish_pipes  # type: ignore[attr-defined]
        assert pipes and all(p.max_in_flight == 64 for p in pipes)
    finally:
        await node.stop()
