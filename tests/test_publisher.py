"""Publisher: publishes into a cluster through Redis without opening any pub/sub connection.

A node-side RedisBroker subscribes and must receive what the Publisher sends (publication with
offset and history, direct message, broadcast, disconnect). ``CLIENT LIST`` then shows that
every connection the Publisher opened is a plain command connection (no sub/psub/ssub).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

import pushgate
from pushgate.backends import ChannelEvent, HistoryOptions, Publication, StreamPosition, UserMessage
from pushgate.backends.redis import LinkOptions, RedisBroker
from pushgate.errors import ClientError, CloseCode
from pushgate.names import user_stream

from .helpers import timeout as scaled
from .servers import RedisServer, start_redis


class Inbox:
    """A BrokerHandler that queues what a node would receive."""

    def __init__(self) -> None:
        self.items: asyncio.Queue[Any] = asyncio.Queue()
        self.links: asyncio.Queue[bool] = asyncio.Queue()

    def on_publication(self, pub: Publication) -> None:
        self.items.put_nowait(pub)

    def on_channel_event(self, event: ChannelEvent) -> None:
        self.items.put_nowait(event)

    def on_user_message(self, user: str, message: UserMessage) -> None:
        self.items.put_nowait((user, message))

    def on_broadcast(self, data: bytes) -> None:
        self.items.put_nowait(("broadcast", data))

    def on_link_state(self, up: bool) -> None:
        self.links.put_nowait(up)

    async def next(self) -> Any:
        return await asyncio.wait_for(self.items.get(), scaled(5.0))


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path)
    yield server
    server.stop()


async def _clients(admin: Redis) -> dict[int, dict[str, str]]:
    """CLIENT LIST as {id: fields}; ``ssub`` only exists on Redis 7+, so missing counts as 0."""
    raw: bytes = await admin.execute_command("CLIENT", "LIST")
    out: dict[int, dict[str, str]] = {}
    for line in raw.decode().splitlines():
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        out[int(fields["id"])] = fields
    return out


def _subscribed(fields: dict[str, str]) -> bool:
    return any(int(fields.get(k, "0")) > 0 for k in ("sub", "psub", "ssub"))


async def test_publisher_publishes_without_a_pubsub_connection(redis_server: RedisServer) -> None:
    node = RedisBroker(redis_server.url, prefix="pp", links=LinkOptions(backoff_min=0.05, backoff_max=0.5))
    inbox = Inbox()
    await node.start(inbox)
    admin = Redis.from_url(redis_server.url)
    try:
        await node.subscribe("news")
        await node.subscribe(user_stream("alice"))  # direct messages: alice's user stream
        await node.subscribe_user("alice")  # control messages (disconnect)
        before = await _clients(admin)

        async with pushgate.Publisher(redis_server.url, prefix="pp", history_size=10) as pub:
            pos = await pub.publish("news", {"headline": "hi"})
            got = await inbox.next()
            assert isinstance(got, Publication)
            assert (got.channel, got.data, got.offset, got.epoch) == ("news", b'{"headline":"hi"}', 1, pos.epoch)
            assert pos == StreamPosition(pos.epoch, 1)
            history = await node.history("news")
            assert [p.data for p in history.publications] == [b'{"headline":"hi"}']  # same history

            positions = await pub.send_to_users(["alice"], {"text": "hi"}, sender="bob")
            got = await inbox.next()
            assert isinstance(got, Publication)
            envelope = b'{"from":"bob","data":{"text":"hi"}}'
            assert (got.channel, got.data, got.offset) == (user_stream("alice"), envelope, 1)
            assert positions == {"alice": StreamPosition(got.epoch, 1)}
            await pub.broadcast({"maintenance": True})
            assert await inbox.next() == ("broadcast", b'{"maintenance":true}')
            await pub.disconnect_user("alice", "bye")
            user, message = await inbox.next()
            assert (user, message.kind, message.code) == ("alice", "disconnect", int(CloseCode.DISCONNECTED))

            after = await _clients(admin)
            opened = {cid: f for cid, f in after.items() if cid not in before and f.get("cmd") != "client|list"}
            assert opened, "the publisher opened no connection at all?"
            assert not any(_subscribed(f) for f in opened.values()), opened
            # Only the node's own link is subscribed: one connection, as before the publisher came.
            assert sum(_subscribed(f) for f in after.values()) == sum(_subscribed(f) for f in before.values()) == 1
            numsub = await admin.execute_command("PUBSUB", "NUMSUB", "pp:b")
            assert numsub[1] == 1  # the broadcast topic: the node only, not the publisher
    finally:
        await admin.aclose()
        await node.close()


async def test_publish_only_broker_refuses_subscriptions(redis_server: RedisServer) -> None:
    broker = RedisBroker(redis_server.url, prefix="po")
    await broker.start(None)
    try:
        assert broker.healthy
        with pytest.raises(RuntimeError):
            await broker.subscribe("news")
        with pytest.raises(RuntimeError):
            await broker.subscribe_user("alice")
        assert (await broker.publish("news", b"1", HistoryOptions(size=5, ttl=60))).offset == 1
    finally:
        await broker.close()
    assert not broker.healthy


async def test_publisher_validates_names() -> None:
    async with pushgate.Publisher("memory://") as pub:
        with pytest.raises(ClientError):
            await pub.publish("bad channel name", 1)
        with pytest.raises(ClientError):
            await pub.send_to_users([], 1)
        with pytest.raises(ClientError):
            await pub.disconnect_user("")
        assert (await pub.publish("ok", 1)).offset == 1


def test_publisher_refuses_unknown_scheme() -> None:
    with pytest.raises(ValueError):
        pushgate.Publisher("kafka://localhost")


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


async def test_publisher_checks_data_before_sending() -> None:
    """Issue 7, item 1: the Publisher is a door like the others; nothing invalid is sent."""
    async with pushgate.Publisher("memory://", max_json_depth=8) as pub:
        bad: list[Any] = [_nested(9), "\ud800", {"x": object()}, _nested(100_000)]
        for data in bad:
            for call in (
                lambda d=data: pub.publish("c", d),
                lambda d=data: pub.send_to_users(["alice"], d),
                lambda d=data: pub.broadcast(d),
            ):
                with pytest.raises(ClientError) as info:
                    await call()
                assert info.value.code == "bad_request"
        assert (await pub.publish("c", _nested(8))).offset == 1  # at the limit: fine
    async with pushgate.Publisher("memory://") as pub:  # the server's default depth
        assert (await pub.publish("c", _nested(32))).offset == 1
        with pytest.raises(ClientError):
            await pub.publish("c", _nested(33))


async def test_publisher_idempotency_key_memory() -> None:
    async with pushgate.Publisher("memory://") as pub:
        first = await pub.publish("orders", {"id": 7}, idempotency_key="order-7")
        assert await pub.publish("orders", {"id": 7}, idempotency_key="order-7") == first
        assert (await pub.publish("orders", {"id": 8}, idempotency_key="order-8")).offset == 2
        with pytest.raises(ClientError):
            await pub.publish("orders", 1, idempotency_key="not a key")


async def test_publisher_idempotency_key_is_cluster_wide(redis_server: RedisServer) -> None:
    """A Publisher's key and a node's key are the same key: a retry through either is deduplicated."""
    node = RedisBroker(redis_server.url, prefix="pi", idempotency_window=60)
    inbox = Inbox()
    await node.start(inbox)
    try:
        await node.subscribe("orders")
        async with pushgate.Publisher(redis_server.url, prefix="pi", idempotency_window=60) as pub:
            first = await pub.publish("orders", {"id": 7}, idempotency_key="order-7")
            assert await pub.publish("orders", {"id": 7}, idempotency_key="order-7") == first
            assert await node.publish("orders", b'{"id":7}', HistoryOptions(), idempotency_key="order-7") == first
            second = await pub.publish("orders", {"id": 8}, idempotency_key="order-8")
            assert second.offset == first.offset + 1
        assert [(await inbox.next()).offset for _ in range(2)] == [first.offset, second.offset]
        assert [p.offset for p in (await node.history("orders")).publications] == [1, 2]
    finally:
        await node.close()
