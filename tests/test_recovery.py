"""Reconnect with `since`: missed publications are replayed in order, then live ones."""

from __future__ import annotations

import asyncio

from .conftest import Running, ServerFactory


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
