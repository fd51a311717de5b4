"""User streams: every direct message has a position in its recipient's stream; offline users get
them later, reconnecting devices recover them in order, acks decide what a new device gets."""

from __future__ import annotations

from typing import Any

import aiohttp

from .conftest import Running, ServerFactory
from .helpers import WsClient, direct_body
from .test_sse import open_sse  # noqa: F401 (fixture)


def since(frame: dict[str, object]) -> str:
    return f"{frame['epoch']}:{frame['offset']}"


async def test_offline_user_gets_everything_in_order_and_acks_decide_what_a_new_device_gets(
    make_server: ServerFactory,
) -> None:
    server = await make_server(user_history_size=100, user_history_ttl=3600)
    for i in range(50):  # bob is offline
        status, body = await server.api("POST", "/api/send", {"users": ["bob"], "data": {"n": i}})
        assert status == 200 and body["stored"] is True and body["positions"]["bob"]["offset"] == i + 1
    phone = await server.client("user=bob")
    stream = phone.welcome["stream"]
    assert stream["offset"] == 50 and stream["recovered"] is True
    got = [await phone.next("direct") for _ in range(50)]
    assert [d["data"]["n"] for d in got] == list(range(50))
    assert [d["offset"] for d in got] == list(range(1, 51)) and {d["epoch"] for d in got} == {stream["epoch"]}
    await phone.nothing_more()
    ack = await phone.ok({"type": "ack", "epoch": got[29]["epoch"], "offset": 30})
    assert (ack["epoch"], ack["offset"]) == (got[29]["epoch"], 30)
    # a second device without a position: only what bob has not acknowledged
    laptop = await server.client("user=bob")
    rest = [await laptop.next("direct") for _ in range(20)]
    assert [d["offset"] for d in rest] == list(range(31, 51))
    await laptop.nothing_more()
    # acks only move forward; an ack beyond the stream is clamped
    back = await phone.ok({"type": "ack", "epoch": got[0]["epoch"], "offset": 10})
    assert back["offset"] == 30
    ahead = await phone.ok({"type": "ack", "epoch": got[0]["epoch"], "offset": 999})
    assert ahead["offset"] == 50


async def test_a_reconnecting_device_recovers_what_it_missed_before_live_messages(server: Running) -> None:
    alice = await server.client("user=alice")
    await server.api("POST", "/api/send", {"users": ["alice"], "data": "first"})
    first = await alice.next("direct")
    await alice.close()
    for text in ("a", "b", "c"):
        await server.api("POST", "/api/send", {"users": ["alice"], "data": text})
    again = await server.client(f"user=alice&user_since={since(first)}")
    assert again.welcome["stream"] == {"epoch": first["epoch"], "offset": 4, "recovered": True}
    await server.api("POST", "/api/send", {"users": ["alice"], "data": "live"})
    got = [await again.next("direct") for _ in range(4)]
    assert [direct_body(d)["data"] for d in got] == ["a", "b", "c", "live"]
    assert [d["offset"] for d in got] == [2, 3, 4, 5]
    await again.nothing_more()


async def test_client_send_reports_positions_and_reaches_every_device(server: Running) -> None:
    carol = await server.client("user=carol")
    bob1 = await server.client("user=bob")
    bob2 = await server.client("user=bob")
    reply = await carol.ok({"type": "send", "to": ["bob", "dave"], "data": {"hi": 1}})
    assert set(reply["positions"]) == {"bob", "dave"} and reply["positions"]["bob"]["offset"] == 1
    for device in (bob1, bob2):
        d = await device.next("direct")
        assert direct_body(d) == {"type": "direct", "from": "carol", "data": {"hi": 1}}
        assert (d["epoch"], d["offset"]) == (reply["positions"]["bob"]["epoch"], 1)
    # dave was offline: his message waits for him
    dave = await server.client("user=dave")
    assert direct_body(await dave.next("direct")) == {"type": "direct", "from": "carol", "data": {"hi": 1}}


async def test_send_retries_with_an_idempotency_key_are_applied_once(server: Running) -> None:
    bob = await server.client("user=bob")
    body = {"users": ["bob"], "data": "once", "idempotency_key": "cmd-7"}
    first = await server.api("POST", "/api/send", body)
    second = await server.api("POST", "/api/send", body)
    assert first == second and first[0] == 200
    assert (await bob.next("direct"))["offset"] == 1
    await bob.nothing_more()


async def test_anonymous_connections_have_no_user_stream(server: Running) -> None:
    anon = await server.client()
    assert "stream" not in anon.welcome
    reply = await anon.request({"type": "ack", "epoch": "x", "offset": 1})
    assert reply["type"] == "error" and reply["code"] == "permission_denied"


async def test_a_malformed_user_since_is_refused_at_the_handshake(server: Running) -> None:
    async with aiohttp.ClientSession() as s:
        for path in ("/ws", "/sse"):
            async with s.get(f"{server.url}{path}?user=a&user_since=nonsense") as r:
                body = await r.json()
                assert r.status == 400 and body["error"]["code"] == "bad_request", path


async def test_user_streams_are_not_addressable_as_channels(server: Running) -> None:
    mallory = await server.client("user=mallory")
    for cmd in ({"type": "subscribe", "channel": "!u:bob"}, {"type": "publish", "channel": "!u:bob", "data": 1},
                {"type": "presence", "channel": "!u:bob"}):
        reply = await mallory.request(cmd)
        assert reply["type"] == "error" and reply["code"] == "bad_request"
    _, channels = await server.api("GET", "/api/channels")
    assert all(not c["channel"].startswith("!") for c in channels["channels"])


async def test_sse_follows_the_user_stream_with_user_since(server: Running, open_sse: Any) -> None:  # noqa: F811
    await server.api("POST", "/api/send", {"users": ["erin"], "data": 1})
    await server.api("POST", "/api/send", {"users": ["erin"], "data": 2})
    ws = await server.client("user=erin")
    first = await ws.next("direct")
    events = await open_sse(server, f"user=erin&user_since={since(first)}")
    welcome = await events.next("welcome")
    assert welcome.data["stream"]["offset"] == 2
    direct = await events.next("direct")
    assert (direct.data["offset"], direct.data["data"], direct.id) == (2, 2, None)


async def test_a_lost_user_stream_is_resynced_in_band(make_server: ServerFactory) -> None:
    server = await make_server(user_history_size=2)
    bob: WsClient = await server.client("user=bob")
    stream = "!u:bob"
    await server.node.broker.unsubscribe(stream)  # messages this node never hears live
    for i in range(5):
        await server.node.send_json(["bob"], {"lost": i})
    await server.node.broker.subscribe(stream)
    await server.node.send_json(["bob"], "live")
    resync = await bob.next()
    assert resync == {"type": "resync", "stream": "user", "epoch": resync["epoch"], "offset": 4}
    got = [await bob.next("direct") for _ in range(2)]
    assert [(d["offset"], d["data"]) for d in got] == [(5, {"lost": 4}), (6, "live")]


async def test_api_send_reports_live_connections_and_waits_for_delivery_receipts(server: Running) -> None:
    import asyncio

    phone = await server.client("user=bob")
    await server.client("user=bob")

    async def ack_when_received() -> None:
        d = await phone.next("direct")
        await phone.ok({"type": "ack", "epoch": d["epoch"], "offset": d["offset"]})

    acker = asyncio.create_task(ack_when_received())
    status, body = await server.api(
        "POST", "/api/send", {"users": ["bob", "zoe"], "data": {"cmd": "reboot"}, "wait_for_ack": 2}
    )
    await acker
    assert status == 200
    assert body["live"] == {"bob": 2, "zoe": 0} and body["stored"] is True
    assert body["acked"] == {"bob": [phone.welcome["client"]]} and body["pending"] == ["zoe"]
    status, err = await server.api("POST", "/api/send", {"users": ["bob"], "data": 1, "wait_for_ack": 999})
    assert status == 400 and err["error"]["code"] == "bad_request"


async def test_a_receipt_is_found_when_the_ack_came_before_the_wait(server: Running) -> None:
    phone = await server.client("user=bob")
    _, body = await server.api("POST", "/api/send", {"users": ["bob"], "data": 1})
    pos = body["positions"]["bob"]
    d = await phone.next("direct")
    await phone.ok({"type": "ack", "epoch": d["epoch"], "offset": d["offset"]})
    from pushgate.backends import StreamPosition

    receipts = await server.node.wait_for_acks({"bob": StreamPosition(pos["epoch"], pos["offset"])}, 1.0)
    assert receipts == {"bob": []}  # found stored: acknowledged, by a connection not seen here


async def test_a_send_may_name_a_destination_for_stomp_subscribers(server: Running) -> None:
    bob = await server.client("user=bob")
    status, _ = await server.api("POST", "/api/send", {"users": ["bob"], "data": 1, "destination": "/queue/reply"})
    assert status == 200
    d = await bob.next("direct")
    assert (d["destination"], d["data"], d["from"]) == ("/queue/reply", 1, None)
    status, err = await server.api("POST", "/api/send", {"users": ["bob"], "data": 1, "destination": "no-slash"})
    assert status == 400 and err["error"]["code"] == "bad_request"


async def test_hostile_acks_are_refused_or_harmless(server: Running) -> None:
    bob = await server.client("user=bob")
    await server.api("POST", "/api/send", {"users": ["bob"], "data": 1})
    d = await bob.next("direct")
    for bad in ({"epoch": d["epoch"], "offset": "3"}, {"epoch": 7, "offset": 1}, {"offset": 1}):
        reply = await bob.request({"type": "ack", **bad})
        assert reply["type"] == "error" and reply["code"] == "bad_request", bad
    # a position the stream never had: clamped or ignored, never stored as given
    assert (await bob.ok({"type": "ack", "epoch": d["epoch"], "offset": -5}))["offset"] == 0
    odd = await bob.ok({"type": "ack", "epoch": "x" * 5000, "offset": 10**12})
    assert (odd["epoch"], odd["offset"]) == (d["epoch"], 0)
    assert (await bob.ok({"type": "ack", "epoch": d["epoch"], "offset": 10**12}))["offset"] == 1
