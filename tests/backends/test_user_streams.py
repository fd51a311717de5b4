"""User streams in the backends, over memory, redis-server and the 3-shard Valkey cluster.

A user's stream is the internal channel ``"!u:" + user``: these cases prove that a name starting
with ``!`` goes through every part of the channel machinery (keys, hash tags, topics, history,
idempotency, the memory bounds), and they hold every broker to the acknowledged-position rules
of :meth:`pushgate.backends.broker.Broker.ack`, to ``ack`` notifications on the user topic, and
every presence store to :meth:`~pushgate.backends.presence.PresenceStore.user_connections`.
"""

from __future__ import annotations

import asyncio
import random

import msgspec
import pytest
from redis.crc import key_slot

from pushgate.backends import HistoryOptions, MemoryBroker, StreamPosition, UserMessage, create_stores
from pushgate.backends.ack_memory import MemoryAcks, apply_ack
from pushgate.backends.broker import ack_message, parse_ack
from pushgate.backends.redis import RedisBroker
from pushgate.backends.redis.envelope import decode_user_message, encode_user_message

from .conftest import Backend, same_slot_name, wait_until


def user_stream(user: str) -> str:
    """The lead's rule (``pushgate.names.user_stream``), spelled out: the backends must not
    care what the name is, only that ``!`` works everywhere."""
    return "!u:" + user


USER_OPTS = HistoryOptions(size=100, ttl=86400)
TTL = 60.0
ALICE = user_stream("alice")  # "!u:alice"


# --- the "!u:" name through the channel machinery ----------------------------------------------


async def test_user_stream_is_a_channel(backend: Backend) -> None:
    broker, rec = await backend.broker()
    assert ALICE == "!u:alice"
    first = await broker.position(ALICE)
    assert first.offset == 0
    await broker.subscribe(ALICE)
    positions = [await broker.publish(ALICE, f'{{"n":{i}}}'.encode(), USER_OPTS) for i in range(3)]
    assert [p.offset for p in positions] == [1, 2, 3] and {p.epoch for p in positions} == {first.epoch}
    for i, pos in enumerate(positions):
        got = await rec.next()
        assert (got.channel, got.data, got.offset, got.epoch) == (ALICE, f'{{"n":{i}}}'.encode(), pos.offset, pos.epoch)
    history = await broker.history(ALICE, since=positions[0])
    assert history.complete and [p.offset for p in history.publications] == [2, 3]
    assert all(p.channel == ALICE for p in history.publications)
    # An idempotent send to a user is applied once.
    once = await broker.publish(ALICE, b'"x"', USER_OPTS, idempotency_key="send-1")
    assert await broker.publish(ALICE, b'"x"', USER_OPTS, idempotency_key="send-1") == once
    assert (await broker.position(ALICE)).offset == 4
    # The user's stream and a channel called "alice" / "u:alice" are separate streams.
    assert (await broker.publish("u:alice", b"1", USER_OPTS)).offset == 1
    assert (await broker.publish("alice", b"1", USER_OPTS)).offset == 1
    await broker.unsubscribe(ALICE)
    marker = same_slot_name(ALICE, backend.keys.channel_topic)
    await broker.subscribe(marker)
    await broker.publish(ALICE, b'"late"', USER_OPTS)
    await broker.publish(marker, b"0", USER_OPTS)
    assert (await rec.next()).data == b'"x"'  # the idempotent one, delivered once
    assert (await rec.next()).channel == marker
    assert rec.empty()


async def test_user_stream_crosses_nodes(backend: Backend) -> None:
    backend.require_nodes()
    a, rec_a = await backend.broker()
    b, _ = await backend.broker()
    await a.subscribe(ALICE)
    pos = await b.publish(ALICE, b'{"hi":1}', USER_OPTS)
    got = await rec_a.next()
    assert (got.channel, got.offset, got.epoch) == (ALICE, pos.offset, pos.epoch)
    assert await a.position(ALICE) == pos


async def test_user_stream_keys_share_one_slot(backend: Backend) -> None:
    """``{!u:alice}`` is the hash tag of every key of the stream, so its scripts run on one shard."""
    backend.require_nodes()
    broker, _ = await backend.broker()
    keys = backend.keys
    names = [keys.meta(ALICE), keys.history(ALICE), keys.ack(ALICE), keys.idempotency(ALICE, "k")]
    assert all("{!u:alice}" in name for name in names)
    assert keys.channel_topic(ALICE).endswith(b"{!u:alice}")
    assert len({key_slot(n.encode()) for n in names} | {key_slot(keys.channel_topic(ALICE))}) == 1
    await broker.publish(ALICE, b"1", USER_OPTS)
    await broker.ack(ALICE, await broker.position(ALICE), TTL)
    admin = backend.admin()
    assert await admin.exists(keys.meta(ALICE)) and await admin.exists(keys.history(ALICE))
    assert await admin.get(keys.ack(ALICE)) is not None


async def test_user_streams_count_against_memory_history_bounds() -> None:
    broker = MemoryBroker(history_max_channels=2)
    await broker.publish(user_stream("a"), b"1", USER_OPTS)
    await broker.publish(user_stream("b"), b"1", USER_OPTS)
    await broker.publish("news", b"1", USER_OPTS)
    assert broker.history_channels == 2
    assert (await broker.history(user_stream("a"))).publications == []  # least recently published
    assert (await broker.position(user_stream("a"))).offset == 1  # the position outlives it


# --- acknowledged positions ---------------------------------------------------------------------


async def test_ack_moves_forward_only(backend: Backend) -> None:
    broker, _ = await backend.broker()
    assert await broker.acked(ALICE) is None
    for i in range(5):
        await broker.publish(ALICE, str(i).encode(), USER_OPTS)
    epoch = (await broker.position(ALICE)).epoch
    assert await broker.ack(ALICE, StreamPosition(epoch, 3), TTL) == StreamPosition(epoch, 3)
    assert await broker.acked(ALICE) == StreamPosition(epoch, 3)
    assert await broker.ack(ALICE, StreamPosition(epoch, 2), TTL) == StreamPosition(epoch, 3)  # not back
    assert await broker.ack(ALICE, StreamPosition(epoch, -7), TTL) == StreamPosition(epoch, 3)
    assert await broker.ack(ALICE, StreamPosition(epoch, 4), TTL) == StreamPosition(epoch, 4)
    assert await broker.acked(ALICE) == StreamPosition(epoch, 4)
    assert await broker.acked(user_stream("bob")) is None  # one ack per stream


async def test_ack_beyond_the_stream_is_clamped(backend: Backend) -> None:
    broker, _ = await backend.broker()
    pos = await broker.publish(ALICE, b"1", USER_OPTS)
    pos = await broker.publish(ALICE, b"2", USER_OPTS)
    assert await broker.ack(ALICE, StreamPosition(pos.epoch, 10**12), TTL) == pos
    assert await broker.acked(ALICE) == pos
    later = await broker.publish(ALICE, b"3", USER_OPTS)
    assert await broker.ack(ALICE, later, TTL) == later
    # A stream nothing was published to: acks clamp to 0 of the epoch it will have.
    empty = user_stream("nobody")
    current = await broker.position(empty)
    assert await broker.ack(empty, StreamPosition(current.epoch, 5), TTL) == StreamPosition(current.epoch, 0)
    assert (await broker.publish(empty, b"1", USER_OPTS)).epoch == current.epoch


async def test_ack_of_another_epoch_is_ignored(backend: Backend) -> None:
    broker, _ = await backend.broker()
    # Nothing stored: the answer is (current epoch, 0) and nothing is stored.
    pos = await broker.publish(ALICE, b"1", USER_OPTS)
    assert await broker.ack(ALICE, StreamPosition("not-" + pos.epoch, 1), TTL) == StreamPosition(pos.epoch, 0)
    assert await broker.acked(ALICE) is None
    # Something stored: it is answered, unchanged.
    await broker.publish(ALICE, b"2", USER_OPTS)
    assert await broker.ack(ALICE, pos, TTL) == pos
    assert await broker.ack(ALICE, StreamPosition("not-" + pos.epoch, 2), TTL) == pos
    assert await broker.acked(ALICE) == pos


async def test_ack_after_history_was_lost(backend: Backend) -> None:
    """A stored ack of an older epoch acknowledges nothing of the new one and is replaced."""
    backend.require_nodes()
    broker, _ = await backend.broker()
    await broker.publish(ALICE, b"1", USER_OPTS)
    old = await broker.publish(ALICE, b"2", USER_OPTS)
    assert await broker.ack(ALICE, old, TTL) == old
    await backend.admin().delete(backend.keys.meta(ALICE))  # Redis lost the stream
    new = await broker.publish(ALICE, b"3", USER_OPTS)
    assert new.epoch != old.epoch and new.offset == 1
    assert await broker.acked(ALICE) == old  # as stored: the reader compares epochs
    assert await broker.ack(ALICE, old, TTL) == StreamPosition(new.epoch, 0)  # old epoch: ignored
    assert await broker.acked(ALICE) == old
    assert await broker.ack(ALICE, StreamPosition(new.epoch, 0), TTL) == StreamPosition(new.epoch, 0)
    assert await broker.acked(ALICE) == StreamPosition(new.epoch, 0)
    assert await broker.ack(ALICE, new, TTL) == new


async def test_ack_expires_after_the_last_ack(backend: Backend) -> None:
    broker, _ = await backend.broker()
    pos = await broker.publish(ALICE, b"1", USER_OPTS)
    assert await broker.ack(ALICE, pos, 0.3) == pos

    async def forgotten() -> bool:
        return await broker.acked(ALICE) is None

    await wait_until(forgotten, 5.0, "the ack to expire")
    # Each ack restarts the lifetime, even one that does not move the position.
    assert await broker.ack(ALICE, pos, 0.3) == pos
    assert await broker.ack(ALICE, StreamPosition(pos.epoch, 0), 60) == pos
    # A negative (it did NOT expire) has no event to wait for: outlast the first ttl, bounded.
    await asyncio.sleep(0.6)
    assert await broker.acked(ALICE) == pos
    # ttl <= 0: the ack is answered but not kept, and what was kept is dropped.
    assert await broker.ack(ALICE, pos, 0) == pos
    assert await broker.acked(ALICE) is None


async def test_two_nodes_see_one_ack(backend: Backend) -> None:
    backend.require_nodes()
    a, _ = await backend.broker()
    b, _ = await backend.broker()
    last = StreamPosition("", 0)
    for i in range(20):
        last = await a.publish(ALICE, str(i).encode(), USER_OPTS)
    epoch = last.epoch
    assert await a.ack(ALICE, StreamPosition(epoch, 7), TTL) == StreamPosition(epoch, 7)
    assert await b.acked(ALICE) == StreamPosition(epoch, 7)
    assert await b.ack(ALICE, StreamPosition(epoch, 5), TTL) == StreamPosition(epoch, 7)
    # Racing acks from both nodes, in any order: the result is the largest, never less.
    offsets = list(range(1, 21))
    random.Random(8).shuffle(offsets)
    results = await asyncio.gather(
        *((a if i % 2 else b).ack(ALICE, StreamPosition(epoch, o), TTL) for i, o in enumerate(offsets))
    )
    assert all(r.epoch == epoch and r.offset >= 7 for r in results)
    assert await a.acked(ALICE) == await b.acked(ALICE) == last


async def test_publish_only_broker_acks(backend: Backend) -> None:
    """A Publisher-side broker can read and write acks too (no subscription link needed)."""
    broker = create_stores(backend.url, prefix=backend.prefix)[0]
    await broker.start(None)
    try:
        pos = await broker.publish(ALICE, b"1", USER_OPTS)
        assert await broker.ack(ALICE, pos, TTL) == pos
        assert await broker.acked(ALICE) == pos
    finally:
        await broker.close()


def test_memory_acks_rules_bounds_and_expiry() -> None:
    """The memory store with hand-driven time: rules, the bound (least recently acked go
    first) and the sweep from the front."""
    cur = StreamPosition("e", 10)
    assert apply_ack(cur, None, StreamPosition("e", 4)) == (StreamPosition("e", 4), True)
    assert apply_ack(cur, StreamPosition("e", 6), StreamPosition("e", 4)) == (StreamPosition("e", 6), True)
    assert apply_ack(cur, StreamPosition("old", 9), StreamPosition("e", 4)) == (StreamPosition("e", 4), True)
    assert apply_ack(cur, StreamPosition("e", 6), StreamPosition("x", 9)) == (StreamPosition("e", 6), False)
    assert apply_ack(cur, StreamPosition("old", 6), StreamPosition("x", 9)) == (StreamPosition("e", 0), False)
    assert apply_ack(cur, None, StreamPosition("e", 99)) == (StreamPosition("e", 10), True)

    acks = MemoryAcks(max_streams=3)
    for i, name in enumerate("abcd"):
        acks.ack(name, cur, StreamPosition("e", i), 10.0, now=float(i))
    assert len(acks) == 3 and acks.get("a", 3.0) is None  # bounded: "a" forgotten early
    acks.ack("b", cur, StreamPosition("e", 5), 10.0, now=4.0)  # "b" moves to the end
    acks.sweep(now=12.5)  # "c" (deadline 12) expired; "d" (13) and "b" (14) not
    assert len(acks) == 2 and acks.get("d", 12.5) == StreamPosition("e", 3)
    assert acks.get("d", 13.0) is None  # never answered after its deadline
    assert acks.get("b", 13.0) == StreamPosition("e", 5)
    acks.sweep(now=14.0)
    assert len(acks) == 0


# --- ack notifications on the user topic --------------------------------------------------------


def test_ack_message_encoding() -> None:
    msg = ack_message("n1.5f2c.1a", StreamPosition("4c1d9e0b7a2f3e61", 20))
    assert (msg.kind, msg.sender, msg.data) == ("ack", "n1.5f2c.1a", b"4c1d9e0b7a2f3e61:20")
    assert parse_ack(msg.data) == StreamPosition("4c1d9e0b7a2f3e61", 20)
    assert decode_user_message(encode_user_message(msg)) == msg
    assert parse_ack(b"abcd.3:0") == StreamPosition("abcd.3", 0)  # a derived memory epoch
    for bad in (b"", b"20", b":20", b"e:", b"e:-1", b"e:x", b"\xff:1"):
        with pytest.raises(ValueError):
            parse_ack(bad)
    with pytest.raises(ValueError):
        decode_user_message(msgspec.msgpack.encode(["ack", "c1", b"no-position", 0, ""]))


async def test_ack_notification_reaches_the_user_nodes(backend: Backend) -> None:
    a, rec_a = await backend.broker()
    await a.subscribe_user("alice")
    msg = ack_message("n2.9e.1", StreamPosition("4c1d9e0b7a2f3e61", 17))
    await a.send_to_users(["alice", "carol"], msg)
    assert await rec_a.next() == ("alice", msg)
    if not backend.multi_node:
        return
    b, rec_b = await backend.broker()
    await b.subscribe_user("alice")
    bob = same_slot_name("alice", backend.keys.user_topic)
    await a.subscribe_user(bob)
    await b.send_to_users(["alice"], msg)
    assert await rec_a.next() == ("alice", msg)
    assert await rec_b.next() == ("alice", msg)
    await b.send_to_users([bob], msg)  # marker: nothing else reached A before it
    assert await rec_a.next() == (bob, msg)
    assert rec_a.empty() and rec_b.empty()


async def test_malformed_ack_notification_is_dropped(backend: Backend) -> None:
    backend.require_nodes()
    broker, rec = await backend.broker()
    assert isinstance(broker, RedisBroker)
    await broker.subscribe_user("alice")
    admin = backend.admin()
    cmd = "SPUBLISH" if backend.kind == "cluster" else "PUBLISH"
    await admin.execute_command(
        cmd, backend.keys.user_topic("alice"), msgspec.msgpack.encode(["ack", "c1", b"garbage", 0, ""])
    )
    good = ack_message("c1", StreamPosition("e", 1))
    await broker.send_to_users(["alice"], good)
    assert await rec.next() == ("alice", good)
    assert broker.dropped_messages == 1 and rec.empty()


async def test_direct_and_disconnect_unchanged_by_ack_kind(backend: Backend) -> None:
    broker, rec = await backend.broker()
    await broker.subscribe_user("alice")
    for msg in (
        UserMessage("direct", sender="bob", data=b'{"x":1}'),
        ack_message("c", StreamPosition("e", 3)),
        UserMessage("disconnect", code=4501, reason="bye"),
    ):
        await broker.send_to_users(["alice"], msg)
        assert await rec.next() == ("alice", msg)


# --- connections per user, cluster-wide -----------------------------------------------------------


async def test_user_connections_single_node(backend: Backend) -> None:
    store = await backend.presence("n1")
    assert await store.user_connections([]) == {}
    assert await store.user_connections(["alice"]) == {"alice": 0}
    for conn, user in [("n1-a1", "alice"), ("n1-a2", "alice"), ("n1-b", "bob"), ("n1-x", None)]:
        await store.add_connection(conn, user)
    assert await store.user_connections(["alice", "bob", "carol", "alice"]) == {"alice": 2, "bob": 1, "carol": 0}
    await store.remove_connection("n1-a1", "alice")
    await store.remove_connection("n1-a1", "alice")  # twice is harmless
    await store.remove_connection("n1-b", "bob")
    assert await store.user_connections(["alice", "bob"]) == {"alice": 1, "bob": 0}
    await store.resync({"n1-c1": "carol", "n1-c2": "carol", "n1-y": None}, {})
    assert await store.user_connections(["alice", "carol"]) == {"alice": 0, "carol": 2}
    # Names with every allowed mark, and many users at once (more than one HMGET chunk).
    odd = "a-b_c:d.e@f/g=h+i#j$k"
    await store.add_connection("n1-odd", odd)
    many = [f"u{i}" for i in range(2500)]
    counts = await store.user_connections([*many, odd])
    assert counts[odd] == 1 and len(counts) == 2501 and sum(counts.values()) == 1


async def test_user_connections_across_nodes(backend: Backend) -> None:
    backend.require_nodes()
    n1 = await backend.presence("n1")
    n2 = await backend.presence("n2")
    await n1.add_connection("n1-1", "alice")
    await n1.add_connection("n1-2", "bob")
    await n2.add_connection("n2-1", "alice")
    await n2.add_connection("n2-2", "alice")
    for store in (n1, n2):
        assert await store.user_connections(["alice", "bob", "carol"]) == {"alice": 3, "bob": 1, "carol": 0}
    await n2.close()
    assert await n1.user_connections(["alice"]) == {"alice": 1}


async def test_user_connections_leave_out_dead_nodes(backend: Backend) -> None:
    backend.require_nodes()
    live = await backend.presence("live")
    dying = await backend.presence("dying", node_ttl=1.0)  # never heartbeats again
    await live.add_connection("live-1", "alice")
    await dying.add_connection("dying-1", "alice")
    await dying.add_connection("dying-2", "bob")
    assert await live.user_connections(["alice", "bob"]) == {"alice": 2, "bob": 1}

    async def lapsed() -> bool:
        return await live.nodes() == ["live"]

    await wait_until(lapsed, 5.0, "the dying node's alive key to expire")
    assert await backend.keys_matching("node:{dying}:users")  # not purged, and already not counted
    assert await live.user_connections(["alice", "bob"]) == {"alice": 1, "bob": 0}
    assert await live.purge_dead_nodes() == ["dying"]
    assert await live.user_connections(["alice", "bob"]) == {"alice": 1, "bob": 0}
