"""Writes lost to asynchronous replication: the stream in Redis goes *back* behind what nodes and
clients already received (a failover to a replica that missed the old primary's last writes).

Made deterministic on one real server: publish, then rewrite the channel's meta hash and history
list back (the lost tail), optionally publish again so the lost offsets are *reused* (the hazard:
everyone would drop those as duplicates), then drop the node's pub/sub link (``CLIENT KILL TYPE
pubsub``), as a failover does. The node must start a new epoch and tell its subscribers in-band
(``resync``), on channels and user streams alike, and then deliver what follows; the WebSocket
stays open.
"""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis

from pushgate.backends import HistoryOptions, StreamPosition
from pushgate.backends.redis import RedisBroker
from pushgate.backends.redis.keys import Keys
from pushgate.names import user_stream

from ..conftest import ServerFactory
from ..servers import RedisServer


async def _rewind(admin: Redis, keys: Keys, channel: str, to: int) -> None:
    """What a failover to a lagging replica leaves: the newest offset is ``to``, and history keeps
    only the publications up to it."""
    meta, history = keys.meta(channel), keys.history(channel)
    top = int(await admin.hget(meta, "o") or 0)
    kept = await admin.llen(history)
    await admin.hset(meta, "o", to)
    await admin.ltrim(history, 0, kept - (top - to) - 1)


async def test_rewound_streams_get_a_new_epoch_and_subscribers_resync(
    own_redis: RedisServer, make_server: ServerFactory
) -> None:
    prefix = "rw"
    keys = Keys(prefix)
    server = await make_server(broker=own_redis.url, redis_prefix=prefix)
    c = await server.client("user=alice")
    ok = await c.ok({"type": "subscribe", "channel": "news"})
    for i in range(1, 4):
        await server.node.publish_json("news", i)
    assert [m["offset"] for m in await c.messages(3)] == [1, 2, 3]
    for k in range(1, 3):
        await server.node.send_to_users(["alice"], b'{"k":%d}' % k, sender=None)
    directs = [await c.next("direct") for _ in range(2)]
    user_epoch = directs[0]["epoch"]
    assert [d["offset"] for d in directs] == [1, 2]

    admin = Redis.from_url(own_redis.url)
    try:
        # The channel: offsets 2 and 3 lost, then two new publications reuse them (the node does
        # not hear them live: as if they were published while its link was down).
        await _rewind(admin, keys, "news", 1)
        await server.node.broker.unsubscribe("news")
        for i in ("reused-2", "reused-3"):
            await server.node.publish_json("news", i)
        await server.node.broker.subscribe("news")
        # The user stream: offset 2 lost, nothing published since (top below what was seen).
        await _rewind(admin, keys, user_stream("alice"), 1)
        assert await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub") >= 1
    finally:
        await admin.aclose()

    frames: list[dict[str, Any]] = [await c.next(seconds=10), await c.next(seconds=10)]
    resyncs = {("user" if f.get("stream") == "user" else f.get("channel")): f for f in frames}
    assert set(resyncs) == {"news", "user"}, frames
    assert all(f["type"] == "resync" for f in frames), frames
    assert resyncs["news"]["epoch"] != ok["epoch"] and resyncs["news"]["offset"] == 0
    assert resyncs["user"]["epoch"] != user_epoch and resyncs["user"]["offset"] == 0
    assert server.node.metrics.broker_rewinds._value.get() == 2

    # what follows is delivered, in the new epochs, on the same connection
    await server.node.publish_json("news", 4)
    got = await c.next("message")
    assert (got["epoch"], got["offset"], got["data"]) == (resyncs["news"]["epoch"], 1, 4)
    await server.node.send_to_users(["alice"], b'{"k":3}', sender=None)
    direct = await c.next("direct")
    assert (direct["epoch"], direct["offset"]) == (resyncs["user"]["epoch"], 1)
    await c.nothing_more()
    assert c.close_code is None and not c.closed.is_set()


@pytest.mark.parametrize("case", ["not rewound", "other epoch", "trimmed"])
async def test_reset_if_rewound_leaves_healthy_streams_alone(own_redis: RedisServer, case: str) -> None:
    broker = RedisBroker(own_redis.url, prefix=f"rw-{case.replace(' ', '-')}")
    await broker.start(None)
    try:
        opts = HistoryOptions(size=2, ttl=60)
        positions = [await broker.publish("c", b"%d" % i, opts) for i in range(1, 5)]
        seen, data = positions[-1], b"4"
        if case == "other epoch":
            seen = StreamPosition("another", 4)
        elif case == "trimmed":
            seen, data = positions[0], b"changed"  # no longer kept: cannot be compared, not reset
        assert await broker.reset_if_rewound("c", seen, data) is None
        assert await broker.position("c") == positions[-1]
        # and a real rewind is reset once: a second node finds the new epoch and does nothing
        if case == "not rewound":
            assert await broker.reset_if_rewound("c", positions[-1], b"not what is kept") is not None
            assert await broker.reset_if_rewound("c", positions[-1], b"4") is None
    finally:
        await broker.close()
