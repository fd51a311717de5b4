"""Data is checked again where it arrives from Redis: invalid UTF-8 never reaches a subscriber.

Every pushgate door checks data, but Redis is shared: something that is not pushgate can
PUBLISH onto a channel topic or RPUSH into a history list. A text frame with invalid UTF-8 makes
every subscriber's client fail its connection (RFC 6455 §8.1), and recovery would replay it
forever. The broker drops such messages (counted, one warning per topic per minute), history
reads leave such entries out, and the node's gap fill steps over the dropped offset.
"""

from __future__ import annotations

import logging

import msgspec
import pytest

from pushgate.backends import HistoryOptions, StreamPosition, UserMessage
from pushgate.backends.redis import RedisBroker

from ..conftest import ServerFactory
from .conftest import Backend

OPTS = HistoryOptions(size=10, ttl=60)
BAD = b'"\xff\xfe"'  # a JSON string whose bytes are not UTF-8


async def _foreign_publish(backend: Backend, topic: bytes, payload: bytes) -> None:
    """PUBLISH/SPUBLISH straight into Redis, as a writer that is not pushgate would."""
    admin = backend.admin()
    await admin.execute_command("SPUBLISH" if backend.kind == "cluster" else "PUBLISH", topic, payload)


async def _foreign_append(backend: Backend, channel: str, data: bytes) -> StreamPosition:
    """Append ``data`` to the channel's stream the way the publish script would, and announce it."""
    admin = backend.admin()
    meta, hist = backend.keys.meta(channel), backend.keys.history(channel)
    epoch = (await admin.hget(meta, "e")).decode()
    offset = int(await admin.hincrby(meta, "o", 1))
    await admin.rpush(hist, data)
    await _foreign_publish(backend, backend.keys.channel_topic(channel), b"P%d:%s:%s" % (offset, epoch.encode(), data))
    return StreamPosition(epoch, offset)


async def test_invalid_messages_are_dropped_and_counted(backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    backend.require_nodes()
    broker, rec = await backend.broker()
    assert isinstance(broker, RedisBroker)
    await broker.subscribe("feed")
    await broker.subscribe_user("alice")
    good = await broker.publish("feed", b'"ok-1"', OPTS)
    assert (await rec.next()).offset == good.offset

    caplog.set_level(logging.WARNING, logger="pushgate.backends.redis.broker")
    bad = await _foreign_append(backend, "feed", BAD)
    topic = backend.keys.channel_topic("feed")
    await _foreign_publish(backend, topic, b"Pnot-an-offset")  # an envelope that does not parse
    await _foreign_publish(backend, topic, b"J=\xff")  # a join whose user is not UTF-8
    # Later good traffic arrives, in order, and nothing before it.
    after = await broker.publish("feed", b'"ok-3"', OPTS)
    got = await rec.next()
    assert (got.offset, got.data) == (after.offset, b'"ok-3"') and after.offset == bad.offset + 1
    assert broker.dropped_messages == 3
    warnings = [r for r in caplog.records if "dropped an invalid" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].exc_info is None  # one line per topic per minute

    # A direct message and a broadcast with bad data are dropped too; good ones still arrive.
    user_topic = backend.keys.user_topic("alice")
    bad_direct = msgspec.msgpack.encode(["direct", None, BAD, 0, ""])
    await _foreign_publish(backend, user_topic, bad_direct)
    await _foreign_publish(backend, user_topic, b"\xc1 not msgpack")
    await broker.send_to_users(["alice"], UserMessage("direct", data=b'"hi"'))
    assert await rec.next() == ("alice", UserMessage("direct", data=b'"hi"'))
    await _foreign_publish(backend, backend.keys.broadcast_topic, BAD)
    await broker.broadcast(b'"all"')
    assert await rec.next() == ("broadcast", b'"all"')
    assert broker.dropped_messages == 6
    assert rec.empty()

    # History reads leave the bad entry out; the stream is still complete.
    result = await broker.history("feed", since=good)
    assert result.complete and [(p.offset, p.data) for p in result.publications] == [(after.offset, b'"ok-3"')]
    assert [p.data for p in (await broker.history("feed")).publications] == [b'"ok-1"', b'"ok-3"']


async def test_subscribers_never_see_invalid_data(redis_backend: Backend, make_server: ServerFactory) -> None:
    """End to end: subscribers stay connected, the node fills the gap over the dropped offset,
    and a client recovering across it gets only the good publications."""
    backend = redis_backend
    server = await make_server(broker=backend.url, redis_prefix=backend.prefix)
    c = await server.client("user=a")
    ok = await c.ok({"type": "subscribe", "channel": "feed"})
    await server.node.publish_json("feed", 1)
    first = await c.next("message")

    bad = await _foreign_append(backend, "feed", BAD)
    await _foreign_publish(backend, backend.keys.broadcast_topic, BAD)
    await server.node.publish_json("feed", 3)
    got = await c.next("message")
    assert (got["offset"], got["data"]) == (bad.offset + 1, 3)  # the bad one never came before it

    c2 = await server.client("user=b")
    since = {"epoch": ok["epoch"], "offset": first["offset"]}
    reply = await c2.ok({"type": "subscribe", "channel": "feed", "since": since})
    assert reply["recovered"] is True
    replay = await c2.next("message")
    assert (replay["offset"], replay["data"]) == (bad.offset + 1, 3)

    await server.node.publish_json("feed", 4)
    for client in (c, c2):
        assert (await client.next("message"))["data"] == 4
        assert client.close_code is None and not client.closed.is_set()
    assert server.node.broker.dropped_messages >= 2
