"""Cluster specifics: sharded pub/sub on the owning shard, and traffic across shards."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from pushgate.backends import HistoryOptions, UserMessage

from ..servers import ValkeyCluster
from .conftest import Backend

OPTS = HistoryOptions(size=10, ttl=60)


async def _owner_port(cluster: ValkeyCluster, topic: bytes) -> int:
    """The port of the primary that owns ``topic``'s slot, asked from the cluster itself."""
    client = Redis(port=cluster.ports[0])
    try:
        slots = await client.execute_command("CLUSTER", "SLOTS")
    finally:
        await client.aclose()
    slot = key_slot(topic)
    for start, end, primary, *_ in slots:
        if start <= slot <= end:
            return int(primary[1])
    raise AssertionError(f"slot {slot} not covered")


@pytest.mark.parametrize("channel", ["news", "!u:alice"])  # a channel, and a user's stream
async def test_sharded_pubsub_on_owning_shard(
    cluster_backend: Backend, valkey_cluster: ValkeyCluster, channel: str
) -> None:
    broker, rec = await cluster_backend.broker()
    await broker.subscribe(channel)
    topic = cluster_backend.keys.channel_topic(channel)
    owner = await _owner_port(valkey_cluster, topic)
    pos = await broker.publish(channel, b"1", OPTS)  # SPUBLISH from the script, on that shard
    got = await rec.next()
    assert (got.channel, got.offset) == (channel, pos.offset)
    for port in valkey_cluster.ports:
        client = Redis(port=port)
        try:
            shard = await client.execute_command("PUBSUB", "SHARDCHANNELS", f"{cluster_backend.prefix}:*")
            plain = await client.execute_command("PUBSUB", "CHANNELS", f"{cluster_backend.prefix}:*")
        finally:
            await client.aclose()
        assert plain == []  # nothing on classic (cluster-wide) pub/sub
        assert (topic in shard) == (port == owner)


async def test_two_nodes_across_shards(cluster_backend: Backend, valkey_cluster: ValkeyCluster) -> None:
    keys = cluster_backend.keys
    by_owner: dict[int, str] = {}
    for i in range(200):
        name = f"ch{i}"
        by_owner.setdefault(await _owner_port(valkey_cluster, keys.channel_topic(name)), name)
        if len(by_owner) == len(valkey_cluster.ports):
            break
    assert len(by_owner) == 3, "expected channels on every shard"
    channels = sorted(by_owner.values())

    a, rec_a = await cluster_backend.broker()
    b, rec_b = await cluster_backend.broker()
    for ch in channels:
        await a.subscribe(ch)
        await b.subscribe(ch)
    for ch in channels:
        pos = await b.publish(ch, ch.encode(), OPTS)
        for rec in (rec_a, rec_b):
            got = await rec.next()
            assert (got.channel, got.data, got.offset) == (ch, ch.encode(), pos.offset)
    for ch in channels:
        await a.publish(ch, b"back", OPTS)
        assert (await rec_b.next()).channel == ch
        assert (await rec_a.next()).channel == ch
    # users on different shards
    users = [f"user{i}" for i in range(12)]
    for u in users:
        await b.subscribe_user(u)
    await a.send_to_users(users, UserMessage("direct", data=b"1"))
    got = {(await rec_b.next())[0] for _ in users}
    assert got == set(users)


async def _move_slot(cluster: ValkeyCluster, slot: int, source: int, target: int) -> None:
    """Move ``slot`` (and any keys in it) from the primary on port ``source`` to ``target``."""
    clients = {port: Redis(port=port) for port in cluster.ports}
    try:
        ids = {port: (await c.execute_command("CLUSTER", "MYID")).decode() for port, c in clients.items()}
        await clients[target].execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
        await clients[source].execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
        while keys := await clients[source].execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            await clients[source].execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
        for port in (target, source, *cluster.ports):
            await clients[port].execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target])
    finally:
        for c in clients.values():
            await c.aclose()


async def test_slot_migration_moves_subscription(cluster_backend: Backend, valkey_cluster: ValkeyCluster) -> None:
    a, rec_a = await cluster_backend.broker()
    b, _ = await cluster_backend.broker()
    await a.subscribe("moving")
    pos = await b.publish("moving", b"1", OPTS)
    assert (await rec_a.next()).offset == pos.offset

    topic = cluster_backend.keys.channel_topic("moving")
    source = await _owner_port(valkey_cluster, topic)
    target = next(p for p in valkey_cluster.ports if p != source)
    await _move_slot(valkey_cluster, key_slot(topic), source, target)

    # The old shard drops the subscription; the broker reports a gap, moves the topic to the
    # new owner, then reports the link back.
    assert await rec_a.next_link() is False
    assert await rec_a.next_link() is True
    assert a.healthy
    pos = await b.publish("moving", b"2", OPTS)
    got = await rec_a.next()
    assert (got.data, got.offset) == (b"2", pos.offset) and pos.offset == 2  # history moved too
