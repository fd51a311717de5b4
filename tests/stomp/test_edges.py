"""The STOMP layer's edges, against real servers: token refresh, rate limits, slow consumers,
STOMP 1.0/1.1 acks and escaping, resync MESSAGEs, subscription limits, permissions and
``{var}`` application destinations (docs/stomp.md)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from pushgate.app import App, ClientInfo
from pushgate.errors import CloseCode, Reject
from pushgate.protocol import stomp as codec

from ..conftest import Running, ServerFactory
from ..helpers import timeout, wait_for
from .client import StompClient

Open = Callable[..., Awaitable[StompClient]]
SECRET = "stomp-edges-test-secret-long-enough-for-hs256"


def token(sub: str, seconds: float = 300, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time() + seconds), **claims}, SECRET, algorithm="HS256")


@pytest.fixture
async def stomp() -> AsyncIterator[Open]:
    opened: list[StompClient] = []

    async def open_(running: Running, path: str = "/ws", query: str = "", **kwargs: object) -> StompClient:
        url = running.ws_url.removesuffix("/ws") + path + (f"?{query}" if query else "")
        client = await StompClient.open(url, **kwargs)  # type: ignore[arg-type]
        opened.append(client)
        return client

    yield open_
    for c in opened:
        await c.close()


async def connect(c: StompClient, version: str, headers: dict[str, str] | None = None) -> codec.Frame:
    """CONNECT offering only ``version`` (1.0: no accept-version at all, as 1.0 clients do)."""
    offer = {} if version == "1.0" else {"accept-version": version}
    c.version = "1.0"  # CONNECT and CONNECTED are never escaped
    await c.send("CONNECT", {**offer, "host": "x", **(headers or {})})
    connected = await c.next("CONNECTED")
    c.version = connected.get("version") or "1.0"
    assert c.version == version
    return connected


# -- 1. token refresh --------------------------------------------------------------------------


async def test_refresh_keeps_the_connection_past_the_first_exp(make_server: ServerFactory, stomp: Open) -> None:
    server = await make_server(jwt_secret=SECRET)
    exp = int(time.time()) + 2
    short = jwt.encode({"sub": "ann", "exp": exp}, SECRET, algorithm="HS256")
    kept = await stomp(server)
    await kept.connect({"Authorization": f"Bearer {short}"})
    lapsed = await stomp(server)
    await lapsed.connect({"Authorization": f"Bearer {short}"})
    fresh = token("ann", 60)
    receipt = await kept.request("SEND", {"destination": "/pushgate/refresh", "token": fresh})
    assert receipt.get("exp") == str(jwt.decode(fresh, options={"verify_signature": False})["exp"])
    # the unrefreshed one: an ERROR saying why, then 4005 at exp
    error = await lapsed.next("ERROR", seconds=6)
    assert error.get("code") == "token_expired" and "token" in (error.get("message") or "")
    assert await lapsed.wait_closed() == CloseCode.TOKEN_EXPIRED
    assert time.time() >= exp
    await asyncio.sleep(max(0.0, exp + 0.5 - time.time()))
    assert not kept.closed.is_set()
    await kept.request("SUBSCRIBE", {"id": "a", "destination": "/topic/after"})  # still served


async def test_refresh_with_an_authorization_header_and_refusals(make_server: ServerFactory, stomp: Open) -> None:
    server = await make_server(jwt_secret=SECRET)
    c = await stomp(server)
    await c.connect({"Authorization": f"Bearer {token('ann', 5)}"})
    await c.request("SEND", {"destination": "/pushgate/refresh", "Authorization": f"Bearer {token('ann', 60)}"})
    await c.send("SEND", {"destination": "/pushgate/refresh", "token": token("bob"), "receipt": "r"})
    error = await c.next("ERROR")
    assert error.get("code") == "permission_denied" and error.get("receipt-id") == "r"
    assert await c.wait_closed() == CloseCode.DISCONNECTED
    d = await stomp(server)
    await d.connect({"Authorization": f"Bearer {token('ann')}"})
    await d.send("SEND", {"destination": "/pushgate/refresh", "token": "not-a-jwt"})
    assert (await d.next("ERROR")).get("code") == "unauthorized"
    e = await stomp(server)
    await e.connect({"Authorization": f"Bearer {token('ann')}"})
    await e.send("SEND", {"destination": "/pushgate/refresh"})
    assert (await e.next("ERROR")).get("code") == "bad_request"


# -- 2. rate limits ----------------------------------------------------------------------------


async def test_a_flooding_client_is_read_slower_and_others_are_served(make_server: ServerFactory,
                                                                       stomp: Open) -> None:
    server = await make_server(client_command_rate=20, client_command_burst=5)
    sub = await stomp(server, query="user=sub")
    await sub.connect()
    await sub.request("SUBSCRIBE", {"id": "a", "destination": "/topic/flood"})
    flooder = await stomp(server, query="user=flood")
    await flooder.connect()
    started = time.monotonic()
    for i in range(24):
        await flooder.send("SEND", {"destination": "/topic/flood"}, str(i).encode())
    await flooder.send("DISCONNECT", {"receipt": "done"})
    # meanwhile another client is answered at once
    other = await stomp(server, query="user=other")
    await other.connect()
    t0 = time.monotonic()
    await other.request("SEND", {"destination": "/topic/elsewhere"}, b"1")
    assert time.monotonic() - t0 < timeout(0.5)  # not queued behind the flooder's ~1 s
    assert (await flooder.next("RECEIPT", seconds=10)).get("receipt-id") == "done"
    # 25 frames after the first CONNECT: (25 - 5 burst) / 20 per second = ~1 s, not refused
    assert time.monotonic() - started >= 0.8
    assert await flooder.wait_closed() == 1000
    got = [(await sub.next("MESSAGE")).body for _ in range(24)]
    assert got == [str(i).encode() for i in range(24)]


async def test_publish_bytes_are_read_slower(make_server: ServerFactory, stomp: Open) -> None:
    server = await make_server(client_publish_bytes_rate=2000, client_publish_bytes_burst=1000)
    c = await stomp(server, query="user=bytes")
    await c.connect()
    body = json.dumps("x" * 498).encode()  # 500 bytes
    started = time.monotonic()
    for _ in range(5):
        await c.send("SEND", {"destination": "/topic/bytes"}, body)
    await c.request("SEND", {"destination": "/topic/bytes"}, body)
    assert time.monotonic() - started >= 0.9  # (3000 - 1000) / 2000 per second
    assert not c.closed.is_set()


async def test_the_node_publish_rate_is_an_error_that_invites_a_later_retry(make_server: ServerFactory,
                                                                            stomp: Open) -> None:
    server = await make_server(node_publish_rate=3)
    c = await stomp(server, query="user=busy")
    await c.connect()
    for i in range(20):
        await c.send("SEND", {"destination": "/topic/busy", "receipt": str(i)}, b"1")
    frames = []
    while (frame := await c.next()).command == "RECEIPT":
        frames.append(frame)
    assert frame.command == "ERROR" and frame.get("code") == "rate_limited"
    assert 3 <= len(frames) < 20
    # 429's meaning: retry later with backoff, not "do not reconnect"
    assert await c.wait_closed() == CloseCode.RATE_LIMITED
    assert CloseCode.RATE_LIMITED.reconnect


# -- 3. slow consumer --------------------------------------------------------------------------


def _masked(payload: bytes, opcode: int = 0x2) -> bytes:
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


async def test_a_stomp_subscriber_that_stops_reading_is_cut_off(make_server: ServerFactory, stomp: Open) -> None:
    server = await make_server(write_buffer_limit=64 * 1024)
    fast = await stomp(server, query="user=fast")
    await fast.connect()
    await fast.request("SUBSCRIBE", {"id": "f", "destination": "/topic/firehose"})
    reader, writer = await asyncio.open_connection("127.0.0.1", int(server.url.rsplit(":", 1)[1]))
    writer.write(b"GET /ws?user=slow HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                 b"Sec-WebSocket-Protocol: v12.stomp\r\n\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert b"v12.stomp" in head
    writer.write(_masked(b"CONNECT\naccept-version:1.2\nhost:x\n\n\0"))
    writer.write(_masked(b"SUBSCRIBE\nid:s\ndestination:/topic/firehose\n\n\0"))
    await writer.drain()
    await wait_for(lambda: len(server.node.hub.channels.get("firehose", ())) == 2, what="slow client subscribed")
    big = "y" * 4000
    published = 0

    async def slow_closed() -> bool:
        nonlocal published
        for _ in range(20):
            await server.node.publish_json("firehose", big)
            published += 1
        return bool(server.node.metrics.slow_consumers._value.get() >= 1)

    await wait_for(slow_closed, seconds=20, interval=0, what="slow consumer to be cut off")
    got = [await fast.next("MESSAGE", seconds=20) for _ in range(published)]
    assert [m.get("offset") for m in got] == [str(i) for i in range(1, published + 1)]
    await wait_for(lambda: len(server.node.hub.connections) == 1, seconds=10, what="slow conn removed")
    assert not fast.closed.is_set()
    writer.close()


# -- 4. STOMP 1.0 and 1.1 ----------------------------------------------------------------------


async def _acked(server: Running, user: str, epoch: str | None, offset: int) -> bool:
    pos = await server.node.broker.acked(f"!u:{user}")
    return pos is not None and pos.epoch == epoch and pos.offset >= offset


@pytest.mark.parametrize("version", ["1.0", "1.1"])
async def test_client_ack_by_message_id(server: Running, stomp: Open, version: str) -> None:
    user = f"u{version.replace('.', '')}"
    c = await stomp(server, query=f"user={user}", protocols=(f"v{version.replace('.', '')}.stomp",))
    await connect(c, version)
    r = await c.request("SUBSCRIBE", {"id": "q", "destination": "/user/queue/q", "ack": "client"})
    epoch = r.get("epoch")
    for i in range(3):
        await server.api("POST", "/api/send", {"users": [user], "data": i, "destination": "/queue/q"})
    msgs = [await c.next("MESSAGE") for _ in range(3)]
    ids = [m.get("message-id") or "" for m in msgs]
    assert ids == [f"q:{epoch}:{i}" for i in (1, 2, 3)]
    # 1.0 has no `ack` header; pushgate adds it from 1.1 on (an extra header 1.1 clients ignore)
    assert all(m.get("ack") == (None if version == "1.0" else m.get("message-id")) for m in msgs)
    ack = {"message-id": ids[1]} | ({"subscription": "q"} if version == "1.1" else {})
    await c.request("ACK", ack)  # client mode: cumulative, 1 and 2
    assert await _acked(server, user, epoch, 2)
    assert not await _acked(server, user, epoch, 3)
    await c.send("ACK", {"id": ids[2], "receipt": "x"})  # `id` names the message in 1.2 only
    assert (await c.next("ERROR")).get("code") == "bad_request"  # 1.0/1.1 need message-id


async def test_client_individual_ack_by_message_id_in_1_1(server: Running, stomp: Open) -> None:
    c = await stomp(server, query="user=ind", protocols=("v11.stomp",))
    await connect(c, "1.1")
    r = await c.request("SUBSCRIBE", {"id": "q", "destination": "/user/queue/q", "ack": "client-individual"})
    epoch = r.get("epoch")
    for i in range(3):
        await server.api("POST", "/api/send", {"users": ["ind"], "data": i, "destination": "/queue/q"})
    ids = [(await c.next("MESSAGE")).get("message-id") or "" for _ in range(3)]
    await c.request("ACK", {"message-id": ids[1], "subscription": "q"})
    assert not await _acked(server, "ind", epoch, 1)  # 1 is still pending before it
    await c.request("NACK", {"message-id": ids[0], "subscription": "q"})
    await c.request("ACK", {"message-id": ids[2], "subscription": "q"})
    assert await _acked(server, "ind", epoch, 3)


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
async def test_header_escaping_end_to_end(make_server: ServerFactory, stomp: Open, version: str) -> None:
    app = App()

    @app.message("/fail")
    def fail(client: ClientInfo, data: object, headers: dict[str, str]) -> object:
        raise Reject(f"no:{headers.get('x-note')}\nsecond line")

    server = await make_server(app=app, stomp_broker_prefixes="/topic,/chat")
    c = await stomp(server, query="user=esc", protocols=(f"v{version.replace('.', '')}.stomp",))
    await connect(c, version)
    # a subscription id with ':' (and, where the version can escape it, a newline and a CR)
    sub_id = {"1.0": "a:b", "1.1": "a:b\nc\\d", "1.2": "a:b\nc\\d\re"}[version]
    await c.request("SUBSCRIBE", {"id": sub_id, "destination": "/chat/x:y"})
    await server.node.publish_json("chat:x:y", 1)
    m = await c.next("MESSAGE")
    assert (m.get("subscription"), m.get("destination")) == (sub_id, "/chat/x:y")
    assert m.get("message-id") == f"{sub_id}:{m.get('epoch')}:1"
    await c.send("SEND", {"destination": "/app/fail", "x-note": "k:v"}, b"1")
    error = await c.next("ERROR")
    # 1.1/1.2 escape the newline; 1.0 cannot and makes it a space (no header injection)
    expected = "no:k:v\nsecond line" if version != "1.0" else "no:k:v second line"
    assert error.get("message") == expected
    assert error.body == b"no:k:v\nsecond line"


async def test_the_wire_bytes_per_version(make_server: ServerFactory) -> None:
    """What a client's parser sees, byte for byte: CONNECTED never escaped, MESSAGE escaped per
    version (1.1 has no ``\\r`` escape, 1.0 none at all)."""
    server = await make_server(stomp_broker_prefixes="/topic,/chat")
    url = server.ws_url.removesuffix("/ws") + "/stomp?user=a:b"
    for version, sub_header, expect in (
        ("1.2", b"id:s\\cx\\ny\n", b"subscription:s\\cx\\ny\n"),
        ("1.1", b"id:s\\cx\\ny\n", b"subscription:s\\cx\\ny\n"),
        ("1.0", b"id:s:x\n", b"subscription:s:x\n"),
    ):
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            await ws.send_bytes(b"CONNECT\naccept-version:" + version.encode() + b"\nhost:x\n\n\0")
            connected = (await ws.receive(timeout(5))).data
            connected = connected if isinstance(connected, bytes) else connected.encode()
            assert b"\nuser-name:a:b\n" in connected  # raw, not a\cb
            await ws.send_bytes(b"SUBSCRIBE\n" + sub_header + b"destination:/chat/l:m\nreceipt:r\n\n\0")
            await ws.receive(timeout(5))  # RECEIPT
            await server.node.publish_json("chat:l:m", 7)
            message = (await ws.receive(timeout(5))).data
            message = message if isinstance(message, bytes) else message.encode()
            assert message.startswith(b"MESSAGE\n") and expect in message
            dest = b"destination:/chat/l\\cm\n" if version != "1.0" else b"destination:/chat/l:m\n"
            assert dest in message


# -- 5. resync ---------------------------------------------------------------------------------


async def test_resync_message_on_a_topic_subscription(make_server: ServerFactory, stomp: Open) -> None:
    server = await make_server(history_size=2)
    c = await stomp(server, query="user=r")
    await c.connect()
    await c.request("SUBSCRIBE", {"id": "t", "destination": "/topic/gap", "ack": "client"})
    await server.node.broker.unsubscribe("gap")
    for i in range(5):
        await server.node.publish_json("gap", {"lost": i})
    await server.node.broker.subscribe("gap")
    await server.node.publish_json("gap", "live")
    resync = await c.next("MESSAGE")
    assert resync.get("resync") == "true" and resync.get("subscription") == "t"
    assert resync.get("destination") == "/topic/gap" and resync.get("offset") == "4"
    assert json.loads(resync.body)["type"] == "resync"
    got = [await c.next("MESSAGE") for _ in range(2)]
    assert [(m.get("offset"), json.loads(m.body)) for m in got] == [("5", {"lost": 4}), ("6", "live")]
    await c.request("ACK", {"id": resync.get("ack") or resync.get("message-id") or ""})  # harmless
    assert not c.closed.is_set()


async def test_resync_message_on_a_user_subscription(make_server: ServerFactory, stomp: Open) -> None:
    server = await make_server(user_history_size=2)
    c = await stomp(server, query="user=rb")
    await c.connect()
    r = await c.request("SUBSCRIBE", {"id": "u", "destination": "/user/queue/messages", "ack": "client"})
    stream = "!u:rb"
    await server.node.broker.unsubscribe(stream)
    for i in range(5):
        await server.node.send_json(["rb"], {"lost": i})
    await server.node.broker.subscribe(stream)
    await server.node.send_json(["rb"], "live")
    resync = await c.next("MESSAGE")
    assert resync.get("resync") == "true" and resync.get("subscription") == "u"
    assert resync.get("destination") == "/user/queue/messages" and resync.get("offset") == "4"
    assert resync.get("epoch") == r.get("epoch")
    got = [await c.next("MESSAGE") for _ in range(2)]
    assert [m.get("offset") for m in got] == ["5", "6"]
    await c.request("ACK", {"id": got[1].get("ack") or ""})
    assert await _acked(server, "rb", r.get("epoch"), 6)


# -- 6. max_subscriptions ----------------------------------------------------------------------


async def test_max_subscriptions_counts_subscription_ids(make_server: ServerFactory, stomp: Open) -> None:
    server = await make_server(max_subscriptions=3)
    c = await stomp(server, query="user=m")
    await c.connect()
    await c.request("SUBSCRIBE", {"id": "1", "destination": "/topic/a"})
    await c.request("SUBSCRIBE", {"id": "2", "destination": "/topic/a"})  # same channel, another id
    await c.request("SUBSCRIBE", {"id": "3", "destination": "/user/queue/x"})
    await c.send("SUBSCRIBE", {"id": "4", "destination": "/topic/b", "receipt": "over"})
    error = await c.next("ERROR")
    assert error.get("code") == "limit_exceeded" and error.get("receipt-id") == "over"
    assert "3" in (error.get("message") or "")
    assert await c.wait_closed() == CloseCode.DISCONNECTED
    # after an UNSUBSCRIBE the id's place is free again
    d = await stomp(server, query="user=m")
    await d.connect()
    for i in range(3):
        await d.request("SUBSCRIBE", {"id": str(i), "destination": f"/topic/c{i}"})
    await d.request("UNSUBSCRIBE", {"id": "0"})
    await d.request("SUBSCRIBE", {"id": "9", "destination": "/topic/c9"})


# -- 7. permissions ----------------------------------------------------------------------------


async def test_the_channels_claim_limits_subscribe_and_send(make_server: ServerFactory, stomp: Open,
                                                            tmp_path: Path) -> None:
    conf = tmp_path / "pushgate.toml"
    conf.write_text("[namespaces.chat]\npublish = true\npresence = \"subscribers\"\n")
    server = await make_server(jwt_secret=SECRET, config_file=str(conf), stomp_broker_prefixes="/topic,/chat")
    limited = token("lim", channels=["chat:lobby"])
    ok = await stomp(server)
    await ok.connect({"Authorization": f"Bearer {limited}"})
    await ok.request("SUBSCRIBE", {"id": "a", "destination": "/chat/lobby"})
    await ok.request("SEND", {"destination": "/topic/chat:lobby"}, b'"hi"')
    assert (await ok.next("MESSAGE")).body == b'"hi"'
    # a STOMP subscriber counts in presence for JSON clients (presence = "subscribers" included)
    watcher = await server.client(f"token={token('watch')}")
    await watcher.ok({"type": "subscribe", "channel": "chat:lobby"})
    assert "lim" in (await watcher.ok({"type": "presence", "channel": "chat:lobby"}))["users"]
    for command, destination in (("SUBSCRIBE", "/chat/secret"), ("SEND", "/chat/secret"),
                                 ("SUBSCRIBE", "/topic/news")):
        c = await stomp(server)
        await c.connect({"Authorization": f"Bearer {limited}"})
        await c.send(command, {"destination": destination, "id": "x"}, b"1")
        error = await c.next("ERROR")
        assert error.get("code") == "permission_denied", error
        assert destination.removeprefix("/").replace("/", ":").removeprefix("topic:") in (error.get("message") or "")
        assert await c.wait_closed() == CloseCode.DISCONNECTED


async def test_anonymous_connections_cannot_use_user_destinations(server: Running, stomp: Open) -> None:
    c = await stomp(server)
    connected = await c.connect()
    assert connected.get("user-name") is None
    await c.send("SEND", {"destination": "/user/bob/queue/x"}, b"1")
    assert (await c.next("ERROR")).get("code") == "permission_denied"
    d = await stomp(server)
    await d.connect()
    await d.send("SUBSCRIBE", {"id": "u", "destination": "/user/queue/x"})
    assert (await d.next("ERROR")).get("code") == "permission_denied"


# -- 8. {var} application destinations ---------------------------------------------------------


async def test_destination_variables(make_server: ServerFactory, stomp: Open) -> None:
    app = App()
    seen: list[tuple[str, str]] = []

    @app.message("/chat/{room}", send_to="/topic/chat.{room}")
    def chat(client: ClientInfo, data: object, headers: dict[str, str], room: str) -> object:
        seen.append(("chat", room))
        return {"room": room, "data": data}

    @app.message("/chat/lobby")  # an exact path wins over a pattern
    def lobby(client: ClientInfo, data: object, headers: dict[str, str]) -> object:
        seen.append(("lobby", ""))
        return None

    @app.message("/dm/{user}/{topic}", send_to_user="/queue/{topic}")
    async def dm(client: ClientInfo, data: object, headers: dict[str, str], *, user: str, topic: str) -> object:
        seen.append((user, topic))
        return {"to": user}

    server = await make_server(app=app)
    s = await stomp(server, query="user=vee")
    await s.connect()
    await s.request("SUBSCRIBE", {"id": "c", "destination": "/topic/chat.kitchen"})
    await s.request("SUBSCRIBE", {"id": "u", "destination": "/user/queue/news"})
    await s.request("SEND", {"destination": "/app/chat/kitchen"}, b"1")
    m = await s.next("MESSAGE")
    assert m.get("destination") == "/topic/chat.kitchen" and json.loads(m.body) == {"room": "kitchen", "data": 1}
    await s.request("SEND", {"destination": "/app/chat/lobby"}, b"1")
    await s.request("SEND", {"destination": "/app/dm/zed/news"}, b"1")
    m = await s.next("MESSAGE")
    assert m.get("destination") == "/user/queue/news" and json.loads(m.body) == {"to": "zed"}
    assert seen == [("chat", "kitchen"), ("lobby", ""), ("zed", "news")]
    # a variable is one path segment: /chat/a/b matches nothing
    await s.send("SEND", {"destination": "/app/chat/a/b"}, b"1")
    assert (await s.next("ERROR")).get("code") == "unknown_destination"


def test_message_patterns_are_checked_at_registration() -> None:
    app = App()
    for bad in ("/x/{1a}", "/x/{a}/{a}", "/x/{a", "/x/{}"):
        with pytest.raises(ValueError):
            app.message(bad)(lambda client, data, headers: None)
    app.message("/plain")(lambda client, data, headers: None)
    assert "/plain" in app.message_handlers
    found = app.find_message("/plain")
    assert found is not None and found[1] == {}
    app.message("/a/{x}.{y}")(lambda client, data, headers, x, y: None)
    found = app.find_message("/a/1.2")
    assert found is not None and found[1] == {"x": "1", "y": "2"}
    assert app.find_message("/a/1") is None
