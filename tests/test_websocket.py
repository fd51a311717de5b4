"""Every JSON-protocol command against a real server over real sockets."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
from collections.abc import AsyncIterator

import aiohttp
import pytest

from pushgate.errors import CloseCode

from .conftest import Running, ServerFactory
from .helpers import direct_body, timeout, wait_for


async def test_welcome_names_connection_user_and_node(server: Running) -> None:
    alice = await server.client("user=alice")
    anon = await server.client()
    assert alice.welcome["user"] == "alice" and alice.welcome["node"] == server.node.id
    assert anon.welcome["user"] is None
    assert alice.welcome["client"] != anon.welcome["client"]


async def test_subscribe_publish_unsubscribe(server: Running) -> None:
    sub = await server.client("user=alice")
    pub = await server.client("user=bob")
    ok = await sub.ok({"type": "subscribe", "channel": "news"})
    assert ok["channel"] == "news" and ok["offset"] == 0 and ok["epoch"]
    reply = await pub.ok({"type": "publish", "channel": "news", "data": {"n": 1}})
    assert reply["offset"] == 1 and reply["epoch"] == ok["epoch"]
    msg = await sub.next("message")
    assert msg == {"type": "message", "channel": "news", "data": {"n": 1}, "offset": 1, "epoch": ok["epoch"],
                   "from": "bob"}
    await sub.ok({"type": "unsubscribe", "channel": "news"})
    await pub.ok({"type": "publish", "channel": "news", "data": 2})
    # a ping reply proves the server processed everything before it: nothing else may have arrived
    assert (await sub.request({"type": "ping"}))["type"] == "pong"
    await sub.nothing_more()


async def test_subscribe_twice_and_unsubscribe_unknown(server: Running) -> None:
    c = await server.client("user=a")
    await c.ok({"type": "subscribe", "channel": "x"})
    assert (await c.request({"type": "subscribe", "channel": "x"}))["code"] == "already_subscribed"
    assert (await c.request({"type": "unsubscribe", "channel": "y"}))["code"] == "not_subscribed"
    assert (await c.request({"type": "subscribe", "channel": "bad channel!"}))["code"] == "bad_request"


async def test_publication_order_is_kept(server: Running) -> None:
    sub = await server.client("user=a")
    await sub.ok({"type": "subscribe", "channel": "seq"})
    for i in range(50):
        await server.node.publish_json("seq", i)
    got = await sub.messages(50)
    assert [m["data"] for m in got] == list(range(50))
    assert [m["offset"] for m in got] == list(range(1, 51))


async def test_send_to_user_stamps_sender_on_every_device(server: Running) -> None:
    alice = await server.client("user=alice")
    bob_phone = await server.client("user=bob")
    bob_laptop = await server.client("user=bob")
    carol = await server.client("user=carol")
    await alice.ok({"type": "send", "to": ["bob"], "data": {"t": "hi"}, "from": "mallory"})
    for device in (bob_phone, bob_laptop):
        assert direct_body(await device.next("direct")) == {"type": "direct", "from": "alice", "data": {"t": "hi"}}
    assert (await carol.request({"type": "ping"}))["type"] == "pong"
    await carol.nothing_more()


async def test_anonymous_cannot_send(server: Running) -> None:
    anon = await server.client()
    reply = await anon.request({"type": "send", "to": ["bob"], "data": 1})
    assert reply["code"] == "permission_denied"


async def test_presence_and_online_counts(server: Running) -> None:
    a1 = await server.client("user=alice")
    a2 = await server.client("user=alice")
    b = await server.client("user=bob")
    anon = await server.client()
    for c in (a1, a2, b, anon):
        await c.ok({"type": "subscribe", "channel": "room"})
    p = await b.ok({"type": "presence", "channel": "room"})
    assert p["users"] == ["alice", "bob"] and p["connections"] == 4
    status, online = await server.api("GET", "/api/online")
    assert status == 200 and online["connections"] == 4 and online["users"] == 2
    assert online["nodes"] == {server.node.id: {"connections": 4, "users": 2}}


async def test_presence_exact_after_abrupt_disconnect(server: Running) -> None:
    keep = await server.client("user=keep")
    gone = await server.client("user=gone")
    await keep.ok({"type": "subscribe", "channel": "room"})
    await gone.ok({"type": "subscribe", "channel": "room"})
    # kill the TCP connection without a close handshake
    transport = gone.ws._response.connection.transport  # type: ignore[union-attr]
    assert transport is not None
    transport.abort()

    async def settled() -> bool:
        _, p = await server.api("GET", "/api/presence/room")
        _, online = await server.api("GET", "/api/online")
        return p["users"] == ["keep"] and p["connections"] == 1 and online["connections"] == 1
    await wait_for(settled, what="presence to drop the aborted connection")
    _, channels = await server.api("GET", "/api/channels")
    assert channels["channels"] == [{"channel": "room", "subscribers": 1}]


async def test_join_leave_events(make_server: ServerFactory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "c.toml"
    cfg.write_text("[namespaces.chat]\njoin_leave = true\n")
    server = await make_server(config_file=str(cfg))
    watcher = await server.client("user=w")
    await watcher.ok({"type": "subscribe", "channel": "chat:lobby"})
    bob = await server.client("user=bob")
    await bob.ok({"type": "subscribe", "channel": "chat:lobby"})
    assert await watcher.next("join") == {"type": "join", "channel": "chat:lobby", "user": "bob"}
    await bob.close()
    assert await watcher.next("leave") == {"type": "leave", "channel": "chat:lobby", "user": "bob"}
    # namespaces without join_leave stay quiet
    await watcher.ok({"type": "subscribe", "channel": "quiet"})
    other = await server.client("user=o")
    await other.ok({"type": "subscribe", "channel": "quiet"})
    assert (await watcher.request({"type": "ping"}))["type"] == "pong"
    await watcher.nothing_more()


async def test_broadcast_reaches_everyone(server: Running) -> None:
    clients = [await server.client(f"user=u{i}") for i in range(3)] + [await server.client()]
    status, _ = await server.api("POST", "/api/broadcast", {"data": {"all": True}})
    assert status == 200
    for c in clients:
        assert await c.next("broadcast") == {"type": "broadcast", "data": {"all": True}}


async def test_bad_input_gets_error_and_connection_stays_open(server: Running) -> None:
    c = await server.client("user=a")
    await c.send_raw("{not json")
    assert (await c.next("error"))["code"] == "bad_json"
    assert (await c.request({"type": "launch_missiles"}))["code"] == "unknown_type"
    assert (await c.request({"type": "publish", "channel": "x"}))["code"] == "bad_request"
    assert (await c.request({"type": "send", "to": [], "data": 1}))["code"] == "bad_request"
    assert (await c.request({"type": "ping"}))["type"] == "pong"


async def test_oversize_frame_closes_1009_and_others_unaffected(make_server: ServerFactory) -> None:
    server = await make_server(max_message_size=1024)
    big = await server.client("user=big")
    other = await server.client("user=other")
    await other.ok({"type": "subscribe", "channel": "c"})
    await big.send_raw(json.dumps({"type": "publish", "channel": "c", "data": "x" * 2000}))
    assert await big.wait_closed() == CloseCode.MESSAGE_TOO_BIG
    await server.node.publish_json("c", "still here")
    assert (await other.next("message"))["data"] == "still here"


async def test_binary_frame_closes_with_protocol_violation(server: Running) -> None:
    c = await server.client("user=a")
    await c.ws.send_bytes(b"\x00\x01")
    assert await c.wait_closed() == CloseCode.PROTOCOL_VIOLATION


async def test_subscription_limit(make_server: ServerFactory) -> None:
    server = await make_server(max_subscriptions=2)
    c = await server.client("user=a")
    await c.ok({"type": "subscribe", "channel": "a"})
    await c.ok({"type": "subscribe", "channel": "b"})
    assert (await c.request({"type": "subscribe", "channel": "c"}))["code"] == "limit_exceeded"


async def test_api_disconnect_closes_all_user_connections(server: Running) -> None:
    a1 = await server.client("user=alice")
    a2 = await server.client("user=alice")
    bob = await server.client("user=bob")
    status, _ = await server.api("POST", "/api/disconnect", {"user": "alice"})
    assert status == 200
    assert await a1.wait_closed() == CloseCode.DISCONNECTED
    assert await a2.wait_closed() == CloseCode.DISCONNECTED
    assert (await bob.request({"type": "ping"}))["type"] == "pong"


async def test_slow_consumer_is_closed_and_others_unaffected(make_server: ServerFactory) -> None:
    server = await make_server(write_buffer_limit=64 * 1024)
    fast = await server.client("user=fast")
    await fast.ok({"type": "subscribe", "channel": "firehose"})
    # the slow client: a raw socket that completes the handshake, subscribes, then never reads
    reader, writer = await asyncio.open_connection("127.0.0.1", int(server.url.rsplit(":", 1)[1]))
    writer.write(b"GET /ws?user=slow HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    payload = json.dumps({"type": "subscribe", "channel": "firehose", "id": 1}).encode()
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    writer.write(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
    await writer.drain()
    await wait_for(lambda: len(server.node.hub.channels.get("firehose", ())) == 2,
                   what="slow client subscribed")
    # shrink the kernel buffers so the server's own buffer fills quickly
    big = "y" * 4000
    published = 0
    async def slow_closed() -> bool:
        nonlocal published
        for _ in range(20):
            await server.node.publish_json("firehose", big)
            published += 1
        return server.node.metrics.slow_consumers._value.get() >= 1
    await wait_for(slow_closed, seconds=20, interval=0, what="slow consumer to be cut off")
    got = await fast.messages(published, seconds=20)
    assert [m["offset"] for m in got] == list(range(1, published + 1))
    await wait_for(lambda: len(server.node.hub.connections) == 1, seconds=10, what="slow conn removed")
    writer.close()


async def test_pipelined_publishes_keep_order_and_replies_come_in_order(make_server: ServerFactory) -> None:
    server = await make_server(client_command_burst=1000)  # a burst of 202 commands, under the rate limit
    sub = await server.client("user=s")
    await sub.ok({"type": "subscribe", "channel": "burst"})
    pub = await server.client("user=p")
    frames = [{"type": "publish", "channel": "burst", "data": i, "id": 1000 + i} for i in range(200)]
    frames.insert(100, {"type": "publish", "channel": "bad name!", "data": 0, "id": "bad"})
    frames.append({"type": "ping", "id": "last"})
    for frame in frames:
        await pub.send_raw(json.dumps(frame))
    replies = [await pub.next() for _ in range(len(frames))]
    assert [r["id"] for r in replies] == [f["id"] for f in frames]
    assert replies[100]["code"] == "bad_request" and replies[-1]["type"] == "pong"
    offsets = [r["offset"] for r in replies if r["type"] == "ok"]
    assert offsets == list(range(1, 201))
    got = await sub.messages(200)
    assert [m["data"] for m in got] == list(range(200))


async def sse_events(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str | None, str]]:
    """``(event name, data)`` per event of an SSE stream, as a browser dispatches them: ``data``
    lines joined with LF, a blank line ends the event (WHATWG HTML, event stream interpretation)."""
    name: str | None = None
    data: list[str] = []
    while raw := await resp.content.readline():
        line = raw.decode().rstrip("\r\n")
        if line == "":
            if data:
                yield name, "\n".join(data)
            name, data = None, []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line.startswith("event:"):
            name = line[6:].strip()


async def test_a_publish_with_raw_line_breaks_is_one_sse_event(server: Running) -> None:
    # `{"x":\n\n1}` is valid JSON; written as-is after one `data:`, the blank line ended the SSE
    # event early and the browser got `{"x":` then a stray `1}` line
    async with aiohttp.ClientSession() as session, session.get(f"{server.url}/sse?channel=lines&user=s") as resp:
        events = sse_events(resp)
        assert json.loads((await asyncio.wait_for(anext(events), timeout(5)))[1])["type"] == "welcome"
        await wait_for(lambda: server.node.local_channels().get("lines") == 1, what="sse subscription")
        pub = await server.client("user=p")
        await pub.send_raw('{"type":"publish","channel":"lines","data":{"x":\n\n1},"id":1}')
        await pub.send_raw('{"type":"publish","channel":"lines","data":{"y":\r\n2},"id":2}')
        await pub.send_raw('{"type":"publish","channel":"lines","data":"marker","id":3}')
        got = [json.loads((await asyncio.wait_for(anext(events), timeout(5)))[1]) for _ in range(3)]
    # exactly one message event per publication, nothing between them, each data parsing whole
    assert [(m["type"], m["data"], m["offset"]) for m in got] == [
        ("message", {"x": 1}, 1), ("message", {"y": 2}, 2), ("message", "marker", 3)]


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One unmasked server frame: (opcode, payload)."""
    head = await asyncio.wait_for(reader.readexactly(2), timeout(5))
    length = head[1] & 0x7F
    if length == 126:
        length = struct.unpack("!H", await reader.readexactly(2))[0]
    elif length == 127:
        length = struct.unpack("!Q", await reader.readexactly(8))[0]
    return head[0] & 0x0F, await reader.readexactly(length)


@pytest.mark.parametrize(("code", "expected"), [(1000, 1000), (4321, 1000), (1006, 1002), (1005, 1002), (5000, 1002)])
async def test_a_close_with_a_forbidden_code_is_answered_with_1002(server: Running, code: int, expected: int) -> None:
    """RFC 6455 §7.4: 1005/1006/1015 and codes outside 1000-4999 never belong on the wire."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.server.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /ws?user=u HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    await reader.readuntil(b"\r\n\r\n")
    assert (await _read_frame(reader))[0] == 0x1  # the welcome
    mask = os.urandom(4)
    payload = struct.pack("!H", code)
    writer.write(bytes([0x88, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    await writer.drain()
    opcode, body = await _read_frame(reader)
    assert opcode == 0x8 and struct.unpack("!H", body[:2])[0] == expected
    writer.close()
