"""One conformance suite for every broker, presence and lease implementation.

Each test runs against ``memory``, ``redis`` (one redis-server) and ``cluster`` (3-shard
Valkey Cluster); see ``conftest.py``. Tests that need two nodes skip on memory. No test sleeps
blindly: deliveries are awaited on queues, negatives are proven with a marker sent after them
on the same pub/sub connection, and expiry is a bounded poll.
"""

from __future__ import annotations

import asyncio

import pytest

from pushgate.backends import (
    ChannelEvent,
    HistoryOptions,
    LeaseStore,
    MemoryBroker,
    Publication,
    StreamPosition,
    UserMessage,
    create_stores,
)
from pushgate.backends.redis import RedisBroker

from .conftest import Backend, Recorder, same_slot_name, wait_until

OPTS = HistoryOptions(size=10, ttl=60)


# --- publish and subscribe --------------------------------------------------------------------


async def test_publish_delivered_only_when_subscribed(backend: Backend) -> None:
    broker, rec = await backend.broker()
    marker = same_slot_name("news", backend.keys.channel_topic)
    await broker.subscribe(marker)

    await broker.publish("news", b'{"n":0}', OPTS)  # not subscribed: never delivered
    await broker.publish(marker, b"0", OPTS)
    assert (await rec.next()).channel == marker

    await broker.subscribe("news")
    pos = await broker.publish("news", b'{"n":1}', OPTS)
    got = await rec.next()
    assert got == Publication("news", b'{"n":1}', pos.offset, pos.epoch)

    await broker.unsubscribe("news")
    await broker.publish("news", b'{"n":2}', OPTS)
    await broker.publish(marker, b"1", OPTS)
    got = await rec.next()
    assert got.channel == marker and got.data == b"1"
    assert rec.empty()


async def test_data_passes_through_byte_for_byte(backend: Backend) -> None:
    broker, rec = await backend.broker()
    await broker.subscribe("raw")
    data = b'{"text": "h\\u00e9 : {x}", "bin": "\\u0000", "n": 1.50}'
    await broker.publish("raw", data, OPTS)
    assert (await rec.next()).data == data
    assert (await broker.history("raw")).publications[0].data == data


async def test_offsets_and_epoch(backend: Backend) -> None:
    broker, _ = await backend.broker()
    first = await broker.position("ch")
    assert first.offset == 0
    positions = [await broker.publish("ch", b"1", OPTS) for _ in range(3)]
    assert [p.offset for p in positions] == [1, 2, 3]
    # The epoch announced before the first publication still holds after it, so a client that
    # subscribed to an empty channel can recover from (epoch, 0).
    assert {p.epoch for p in positions} == {first.epoch}
    # size 0 keeps no history but still counts
    pos = await broker.publish("ch", b"4", HistoryOptions(size=0, ttl=60))
    assert pos == StreamPosition(first.epoch, 4)
    assert await broker.position("ch") == pos
    # channels count independently
    assert (await broker.publish("other", b"1", OPTS)).offset == 1


async def test_concurrent_publishes_keep_call_order(backend: Backend) -> None:
    """Publishes issued back to back (batched into pipelines on Redis) get offsets in call order."""
    broker, rec = await backend.broker()
    await broker.subscribe("burst")
    calls = [broker.publish("burst", str(i).encode(), HistoryOptions(size=500, ttl=60)) for i in range(300)]
    positions = await asyncio.gather(*calls)
    assert [p.offset for p in positions] == list(range(1, 301))
    got = [await rec.next() for _ in range(300)]
    assert [p.data for p in got] == [str(i).encode() for i in range(300)]
    history = await broker.history("burst")
    assert [p.offset for p in history.publications] == list(range(1, 301))


async def test_new_memory_broker_has_new_epoch() -> None:
    a, b = MemoryBroker(), MemoryBroker()
    assert (await a.position("x")).epoch != (await b.position("x")).epoch


async def test_epoch_shared_between_redis_nodes(backend: Backend) -> None:
    backend.require_nodes()
    a, _ = await backend.broker()
    b, _ = await backend.broker()
    pa = await a.publish("ch", b"1", OPTS)
    pb = await b.publish("ch", b"2", OPTS)
    assert pb == StreamPosition(pa.epoch, 2)


async def test_lost_keys_mean_new_epoch(backend: Backend) -> None:
    backend.require_nodes()
    broker, _ = await backend.broker()
    old = await broker.publish("ch", b"1", OPTS)
    await backend.admin().delete(backend.keys.meta("ch"))
    new = await broker.publish("ch", b"2", OPTS)
    assert new.epoch != old.epoch and new.offset == 1
    result = await broker.history("ch", since=old)
    assert not result.complete
    assert [p.data for p in result.publications] == [b"2"]  # the orphaned entry is gone


# --- history ----------------------------------------------------------------------------------


async def test_history_since_and_limit(backend: Backend) -> None:
    broker, _ = await backend.broker()
    for i in range(1, 6):
        await broker.publish("h", str(i).encode(), OPTS)
    pos = await broker.position("h")
    epoch = pos.epoch

    everything = await broker.history("h")
    assert [p.offset for p in everything.publications] == [1, 2, 3, 4, 5]
    assert everything.position == StreamPosition(epoch, 5) and everything.complete

    newest = await broker.history("h", limit=2)
    assert [p.data for p in newest.publications] == [b"4", b"5"]

    after = await broker.history("h", since=StreamPosition(epoch, 2))
    assert [p.offset for p in after.publications] == [3, 4, 5] and after.complete
    assert all(p.epoch == epoch and p.channel == "h" for p in after.publications)

    page = await broker.history("h", since=StreamPosition(epoch, 2), limit=2)
    assert [p.offset for p in page.publications] == [3, 4] and page.complete

    assert (await broker.history("h", since=StreamPosition(epoch, 0))).complete
    up_to_date = await broker.history("h", since=pos)
    assert up_to_date.publications == [] and up_to_date.complete
    assert (await broker.history("h", limit=0)).publications == []


async def test_history_incomplete(backend: Backend) -> None:
    broker, _ = await backend.broker()
    small = HistoryOptions(size=3, ttl=60)
    for i in range(1, 6):
        await broker.publish("h", str(i).encode(), small)
    epoch = (await broker.position("h")).epoch

    kept = await broker.history("h")
    assert [p.offset for p in kept.publications] == [3, 4, 5]  # size bound

    ok = await broker.history("h", since=StreamPosition(epoch, 2))
    assert ok.complete and [p.offset for p in ok.publications] == [3, 4, 5]

    trimmed = await broker.history("h", since=StreamPosition(epoch, 1))
    assert not trimmed.complete and [p.offset for p in trimmed.publications] == [3, 4, 5]
    trimmed_page = await broker.history("h", since=StreamPosition(epoch, 1), limit=2)
    assert not trimmed_page.complete and [p.offset for p in trimmed_page.publications] == [3, 4]

    other_epoch = await broker.history("h", since=StreamPosition("not-" + epoch, 4))
    assert not other_epoch.complete and [p.offset for p in other_epoch.publications] == [3, 4, 5]

    future = await broker.history("h", since=StreamPosition(epoch, 9))
    assert not future.complete
    assert future.position == StreamPosition(epoch, 5)


async def test_history_size_zero(backend: Backend) -> None:
    broker, _ = await backend.broker()
    none = HistoryOptions(size=0, ttl=60)
    await broker.publish("z", b"1", none)
    await broker.publish("z", b"2", none)
    result = await broker.history("z")
    assert result.publications == [] and result.position.offset == 2
    lost = await broker.history("z", since=StreamPosition(result.position.epoch, 0))
    assert not lost.complete
    assert (await broker.history("z", since=result.position)).complete


async def test_history_ttl_expiry(backend: Backend) -> None:
    broker, _ = await backend.broker()
    short = HistoryOptions(size=10, ttl=1.0)
    first = await broker.publish("t", b"1", short)
    await broker.publish("t", b"2", short)
    assert len((await broker.history("t")).publications) == 2

    async def expired() -> bool:
        return not (await broker.history("t")).publications

    await wait_until(expired, 5.0, "history to expire")
    # The epoch and offset outlive the history, so a client behind learns it missed something.
    result = await broker.history("t", since=StreamPosition(first.epoch, 1))
    assert result.position == StreamPosition(first.epoch, 2) and not result.complete
    assert (await broker.publish("t", b"3", short)) == StreamPosition(first.epoch, 3)


# --- events, users, broadcast -----------------------------------------------------------------


async def test_channel_events(backend: Backend) -> None:
    broker, rec = await backend.broker()
    marker = same_slot_name("room", backend.keys.channel_topic)
    await broker.subscribe(marker)
    await broker.publish_event(ChannelEvent("room", "join", "alice"))  # not subscribed
    await broker.publish_event(ChannelEvent(marker, "join", None))
    assert await rec.next() == ChannelEvent(marker, "join", None)

    await broker.subscribe("room")
    for event in (
        ChannelEvent("room", "join", "alice"),
        ChannelEvent("room", "leave", None),
        ChannelEvent("room", "leave", ""),
    ):
        await broker.publish_event(event)
        assert await rec.next() == event
    assert (await broker.history("room")).publications == []  # events are not history


async def test_send_to_users_single_node(backend: Backend) -> None:
    broker, rec = await backend.broker()
    await broker.subscribe_user("alice")
    msg = UserMessage("direct", sender="bob", data=b'{"hi":1}')
    await broker.send_to_users(["carol", "alice"], msg)
    assert await rec.next() == ("alice", msg)
    bye = UserMessage("disconnect", code=4501, reason="banned")
    await broker.send_to_users(["alice"], bye)
    assert await rec.next() == ("alice", bye)


async def test_send_to_users_routes_to_holding_node(backend: Backend) -> None:
    backend.require_nodes()
    a, rec_a = await backend.broker()
    b, rec_b = await backend.broker()
    await a.subscribe_user("alice")
    bob = same_slot_name("alice", backend.keys.user_topic)
    await b.subscribe_user(bob)

    msg = UserMessage("direct", sender=None, data=b"[1,2]")
    await b.send_to_users(["alice"], msg)
    assert await rec_a.next() == ("alice", msg)
    await a.send_to_users([bob], msg)  # marker on B's connection to the same shard
    assert await rec_b.next() == (bob, msg)  # so B never got alice's message

    await a.send_to_users(["alice", bob], UserMessage("disconnect", code=4000, reason="x"))
    assert (await rec_a.next())[0] == "alice"
    assert (await rec_b.next())[0] == bob
    assert rec_a.empty()


async def test_broadcast_reaches_every_node(backend: Backend) -> None:
    brokers = [await backend.broker() for _ in range(2 if backend.multi_node else 1)]
    await brokers[0][0].broadcast(b'{"all":true}')
    for _, rec in brokers:
        assert await rec.next() == ("broadcast", b'{"all":true}')


async def test_publication_crosses_nodes(backend: Backend) -> None:
    backend.require_nodes()
    a, rec_a = await backend.broker()
    b, _ = await backend.broker()
    await a.subscribe("x")
    pos = await b.publish("x", b"1", OPTS)
    assert await rec_a.next() == Publication("x", b"1", pos.offset, pos.epoch)


async def test_handler_failure_does_not_stop_delivery(backend: Backend) -> None:
    broker, rec = await backend.broker(Recorder(fail_first=True))
    await broker.subscribe("f")
    await broker.publish("f", b"1", OPTS)  # the handler raises on this one
    await broker.publish("f", b"2", OPTS)
    assert (await rec.next()).data == b"2"
    assert broker.healthy


async def test_healthy_after_start_and_not_after_close(backend: Backend) -> None:
    broker, rec = await backend.broker()
    assert broker.healthy
    await broker.close()
    assert rec.links.empty()  # a clean close is not a link loss


async def test_publish_only_broker(backend: Backend) -> None:
    """start(None): publishes with offsets and history like any broker, refuses to subscribe."""
    broker = create_stores(backend.url, prefix=backend.prefix)[0]
    await broker.start(None)
    try:
        pos = await broker.publish("po", b"1", OPTS)
        assert pos.offset == 1 and broker.healthy
        assert [p.data for p in (await broker.history("po")).publications] == [b"1"]
        with pytest.raises(RuntimeError):
            await broker.subscribe("po")
        with pytest.raises(RuntimeError):
            await broker.subscribe_user("u")
        if backend.multi_node:
            node, rec = await backend.broker()
            await node.subscribe("po")
            await node.subscribe_user("u")
            pos = await broker.publish("po", b"2", OPTS)
            got = await rec.next()
            assert (got.data, got.offset, pos.offset) == (b"2", 2, 2)
            await broker.send_to_users(["u"], UserMessage("direct", data=b"3"))
            assert (await rec.next())[0] == "u"
    finally:
        await broker.close()


# --- presence ---------------------------------------------------------------------------------


async def test_presence_exact_counts(backend: Backend) -> None:
    store = await backend.presence("n1")
    for conn, user in [("n1-a1", "alice"), ("n1-a2", "alice"), ("n1-b", "bob"), ("n1-x", None)]:
        await store.add_connection(conn, user)
        await store.join("room", conn, user)
    p = await store.presence("room")
    assert (p.channel, p.users, p.connections) == ("room", ["alice", "bob"], 4)
    online = await store.online()
    assert (online.connections, online.users) == (4, 2)
    assert online.nodes["n1"].connections == 4 and online.nodes["n1"].users == 2

    await store.leave("room", "n1-a1")
    await store.leave("room", "n1-b")
    await store.remove_connection("n1-b", "bob")
    await store.remove_connection("n1-b", "bob")  # twice is harmless
    p = await store.presence("room")
    assert (p.users, p.connections) == (["alice"], 2)
    online = await store.online()
    assert (online.connections, online.users) == (3, 1)
    assert await store.nodes() == ["n1"]
    assert (await store.presence("empty")).connections == 0


async def test_presence_distinct_users_across_nodes(backend: Backend) -> None:
    backend.require_nodes()
    n1 = await backend.presence("n1")
    n2 = await backend.presence("n2")
    for store, conn, user in [
        (n1, "n1-1", "alice"),
        (n1, "n1-2", "bob"),
        (n1, "n1-3", None),
        (n2, "n2-1", "alice"),
        (n2, "n2-2", "carol"),
    ]:
        await store.add_connection(conn, user)
        await store.join("room", conn, user)
    for store in (n1, n2):
        online = await store.online()
        assert (online.connections, online.users) == (5, 3)
        assert {k: (v.connections, v.users) for k, v in online.nodes.items()} == {"n1": (3, 2), "n2": (2, 2)}
        p = await store.presence("room")
        assert (p.users, p.connections) == (["alice", "bob", "carol"], 5)
    assert await n1.nodes() == ["n1", "n2"]


async def test_dead_node_vanishes_and_is_purged(backend: Backend) -> None:
    backend.require_nodes()
    live = await backend.presence("live")
    dying = await backend.presence("dying", node_ttl=1.0)  # never heartbeats again
    await live.add_connection("live-1", "alice")
    await live.join("room", "live-1", "alice")
    await dying.add_connection("dying-1", "bob")
    await dying.join("room", "dying-1", "bob")
    await dying.join("lobby", "dying-1", "bob")
    assert (await live.presence("room")).users == ["alice", "bob"]

    async def gone() -> bool:
        return await live.nodes() == ["live"]

    await wait_until(gone, 5.0, "the dying node's alive key to expire")
    # Not purged yet, and already invisible.
    assert await backend.keys_matching("node:{dying}:*")
    assert (await live.presence("room")).users == ["alice"]
    assert (await live.presence("lobby")).connections == 0
    online = await live.online()
    assert (online.connections, online.users, list(online.nodes)) == (1, 1, ["live"])

    assert await live.purge_dead_nodes() == ["dying"]
    assert await backend.keys_matching("node:{dying}:*") == []
    assert await backend.keys_matching("pres:*:dying") == []
    assert await live.purge_dead_nodes() == []
    assert (await live.presence("room")).users == ["alice"]


async def test_close_removes_entries_at_once(backend: Backend) -> None:
    backend.require_nodes()
    n1 = await backend.presence("n1")
    n2 = await backend.presence("n2")
    await n2.add_connection("n2-1", "bob")
    await n2.join("room", "n2-1", "bob")
    assert (await n1.presence("room")).users == ["bob"]
    await n2.close()
    assert (await n1.presence("room")).connections == 0
    assert await n1.nodes() == ["n1"]
    assert await backend.keys_matching("*n2*") == []


async def test_resync_rewrites_own_entries(backend: Backend) -> None:
    store = await backend.presence("n1")
    await store.add_connection("n1-old", "old")
    await store.join("stale", "n1-old", "old")
    await store.resync({"n1-a": "alice", "n1-b": None}, {"room": {"n1-a": "alice", "n1-b": None}})
    assert (await store.presence("stale")).connections == 0
    p = await store.presence("room")
    assert (p.users, p.connections) == (["alice"], 2)
    online = await store.online()
    assert (online.connections, online.users) == (2, 1)


async def test_heartbeat_heals_lost_data(backend: Backend) -> None:
    backend.require_nodes()
    store = await backend.presence("n1")
    await store.add_connection("n1-a", "alice")
    await store.join("room", "n1-a", "alice")
    await store.heartbeat()
    # Redis lost everything (flush, failover without replica, restart without persistence).
    for key in await backend.keys_matching("*"):
        await backend.admin().delete(key)
    assert (await store.presence("room")).connections == 0
    await store.heartbeat()
    assert (await store.presence("room")).users == ["alice"]
    assert (await store.online()).connections == 1


# --- leases -----------------------------------------------------------------------------------


async def test_lease_acquire_renew_takeover(backend: Backend) -> None:
    a, b = backend.lease(), backend.lease()
    assert await a.acquire("job", "node-a", 0.5)
    assert await a.acquire("job", "node-a", 0.5)  # renew
    assert not await b.acquire("job", "node-b", 0.5)
    await b.release("job", "node-b")  # not the holder: no effect
    assert not await b.acquire("job", "node-b", 0.5)

    async def taken_over() -> bool:
        return await b.acquire("job", "node-b", 5.0)

    await wait_until(taken_over, 5.0, "the lease to expire")
    assert not await a.acquire("job", "node-a", 5.0)
    await b.release("job", "node-b")
    assert await a.acquire("job", "node-a", 5.0)


async def test_claim_once_exactly_once(backend: Backend) -> None:
    stores: list[LeaseStore] = [backend.lease(), backend.lease()]
    results = await asyncio.gather(*(s.claim_once("tick-1", 0.5) for s in stores for _ in range(5)))
    assert sum(results) == 1
    assert await stores[1].claim_once("tick-2", 0.5)

    async def claimable_again() -> bool:
        return await stores[1].claim_once("tick-1", 5.0)

    await wait_until(claimable_again, 5.0, "the claim to expire")
    assert not await stores[0].claim_once("tick-1", 5.0)


# --- factory ----------------------------------------------------------------------------------


async def test_create_stores(backend: Backend) -> None:
    broker, presence, lease = create_stores(backend.url, prefix=backend.prefix)
    expected = MemoryBroker if backend.kind == "memory" else RedisBroker
    assert isinstance(broker, expected)
    rec = Recorder()
    await broker.start(rec)
    await presence.start("n1")
    try:
        await broker.subscribe("c")
        await broker.publish("c", b"1", OPTS)
        assert (await rec.next()).data == b"1"
        assert await lease.claim_once("k", 5)
        await presence.add_connection("n1-1", "u")
        assert (await presence.online()).users == 1
    finally:
        await presence.close()
        await broker.close()
        close = getattr(lease, "close", None)
        if close is not None:
            await close()


def test_create_stores_rejects_unknown_scheme() -> None:
    with pytest.raises(ValueError):
        create_stores("nats://localhost")
