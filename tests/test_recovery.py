"""Reconnect with `since`: missed publications are replayed in order, then live ones."""

from __future__ import annotations

import asyncio

from .conftest import Running, ServerFactory
from .helpers import WsClient


async def test_recover_missed_messages_in_order(server: Running) -> None:
    c = await server.client("user=a")
    ok = await c.ok({"type": "subscribe", "channel": "feed"})
    for i in range(3):
        await server.node.publish_json("feed", i)
    seen = await c.messages(3)
    await c.close()
    for i in range(3, 8):
        await server.node.publish_json("feed", i)
    c2 = await server.client("user=a")
    since = {"epoch": ok["epoch"], "offset": seen[-1]["offset"]}
    reply = await c2.ok({"type": "subscribe", "channel": "feed", "since": since})
    assert reply["recovered"] is True and reply["offset"] == 8
    await server.node.publish_json("feed", 8)
    got = await c2.messages(6)
    assert [m["data"] for m in got] == [3, 4, 5, 6, 7, 8]
    assert [m["offset"] for m in got] == [4, 5, 6, 7, 8, 9]


async def test_recovery_with_concurrent_live_publications_has_no_gap_or_duplicate(server: Running) -> None:
    c = await server.client("user=a")
    ok = await c.ok({"type": "subscribe", "channel": "busy"})
    await c.close()
    for i in range(20):
        await server.node.publish_json("busy", i)
    c2 = await server.client("user=a")

    async def keep_publishing() -> None:
        for i in range(20, 60):
            await server.node.publish_json("busy", i)
            await asyncio.sleep(0)

    task = asyncio.create_task(keep_publishing())
    reply = await c2.ok({"type": "subscribe", "channel": "busy", "since": {"epoch": ok["epoch"], "offset": 0}})
    await task
    assert reply["recovered"] is True
    got = await c2.messages(60)
    assert [m["data"] for m in got] == list(range(60))


async def test_unrecoverable_when_history_trimmed_or_epoch_changed(make_server: ServerFactory) -> None:
    server = await make_server(history_size=2)
    c = await server.client("user=a")
    ok = await c.ok({"type": "subscribe", "channel": "t"})
    await c.close()
    for i in range(5):
        await server.node.publish_json("t", i)
    c2 = await server.client("user=a")
    reply = await c2.ok({"type": "subscribe", "channel": "t", "since": {"epoch": ok["epoch"], "offset": 0}})
    assert reply["recovered"] is False and reply["offset"] == 5
    c3 = await server.client("user=a")
    reply = await c3.ok({"type": "subscribe", "channel": "t", "since": {"epoch": "old-epoch", "offset": 4}})
    assert reply["recovered"] is False and reply["epoch"] == ok["epoch"]
    # live traffic continues for both
    await server.node.publish_json("t", "live")
    assert (await c2.next("message"))["data"] == "live"
    assert (await c3.next("message"))["data"] == "live"


async def test_history_ttl_expires(make_server: ServerFactory) -> None:
    server = await make_server(history_ttl=0.3)
    await server.node.publish_json("ttl", 1)
    _, body = await server.api("GET", "/api/history/ttl")
    assert len(body["publications"]) == 1
    await asyncio.sleep(0.4)  # the TTL itself is what is under test
    _, body = await server.api("GET", "/api/history/ttl")
    assert body["publications"] == [] and body["offset"] == 1


async def _lose_publications(server: Running, channel: str, count: int) -> None:
    """Publish ``count`` messages this node never hears live: as if pub/sub dropped them.

    The node's upstream subscription is switched off around the publishes, so they reach
    history (the broker assigns offsets and stores them) but not the node.
    """
    await server.node.broker.unsubscribe(channel)
    for i in range(count):
        await server.node.publish_json(channel, {"lost": i})
    await server.node.broker.subscribe(channel)


async def test_a_single_lost_publication_is_filled_from_history_in_order(server: Running) -> None:
    c = await server.client("user=a")
    await c.ok({"type": "subscribe", "channel": "gap1"})
    await server.node.publish_json("gap1", "first")
    await _lose_publications(server, "gap1", 1)
    await server.node.publish_json("gap1", "after")
    got = await c.messages(3)
    assert [m["offset"] for m in got] == [1, 2, 3]
    assert [m["data"] for m in got] == ["first", {"lost": 0}, "after"]
    await c.nothing_more()


async def test_a_gap_history_cannot_fill_is_resynced_in_band(make_server: ServerFactory) -> None:
    server = await make_server(history_size=2)
    c = await server.client("user=a")
    await c.ok({"type": "subscribe", "channel": "gap2"})
    await _lose_publications(server, "gap2", 5)  # offsets 1..5; history keeps only 4 and 5
    await server.node.publish_json("gap2", "live")
    resync = await c.next()
    # 1..4 are gone; history still keeps 5 and 6: they follow the resync on the open connection
    assert resync == {"type": "resync", "channel": "gap2", "epoch": resync["epoch"], "offset": 4}
    got = await c.messages(2)
    assert [(m["offset"], m["data"]) for m in got] == [(5, {"lost": 4}), (6, "live")]
    assert server.node.metrics.resyncs_total._value.get() == 1
    assert c.close_code is None and not c.closed.is_set()
    # a client that recovers from the resync position later is whole again
    await c.close()
    for i in range(2):
        await server.node.publish_json("gap2", i)
    c2 = await server.client("user=a")
    since = {"epoch": resync["epoch"], "offset": 6}
    reply = await c2.ok({"type": "subscribe", "channel": "gap2", "since": since})
    assert reply["recovered"] is True
    assert [m["offset"] for m in await c2.messages(2)] == [7, 8]


async def test_a_mass_recovery_reads_history_once(server: Running) -> None:
    c = await server.client("user=a")
    ok = await c.ok({"type": "subscribe", "channel": "mass"})
    await c.close()
    for i in range(10):
        await server.node.publish_json("mass", i)
    reads = server.node.metrics.history_reads.labels("recover")
    before = reads._value.get()
    clients = await asyncio.gather(*[server.client(f"user=u{i}") for i in range(40)])
    since = {"epoch": ok["epoch"], "offset": 4}

    async def recover(cl: WsClient, i: int) -> list[int]:
        reply = await cl.ok({"type": "subscribe", "channel": "mass", "since": since})
        assert reply["recovered"] is True
        if i == 0:
            await server.node.publish_json("mass", 10)  # live traffic while others still recover
        return [m["data"] for m in await cl.messages(6)]

    results = await asyncio.gather(*[recover(cl, i) for i, cl in enumerate(clients)])
    assert all(got == [4, 5, 6, 7, 8, 9] for got in results)
    assert reads._value.get() - before == 1  # one read served all forty
    for cl in clients:
        assert (await cl.next("message"))["data"] == 10
        await cl.nothing_more(0.05)
