"""STOMP over WebSocket, frame by frame, against a real server (docs/stomp.md)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from pushgate.app import App, ClientInfo, SendTo, SendToUser
from pushgate.errors import CloseCode

from ..conftest import Running, ServerFactory
from ..helpers import wait_for
from .client import StompClient

Open = Callable[..., Awaitable[StompClient]]


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


async def test_connect_negotiates_version_heartbeat_and_names_the_session(server: Running, stomp: Open) -> None:
    c = await stomp(server, query="user=alice")
    await c.send("CONNECT", {"accept-version": "1.0,1.1,1.2", "host": "x", "heart-beat": "0,5000"})
    connected = await c.next("CONNECTED")
    assert connected.get("version") == "1.2"
    assert connected.get("heart-beat") == "10000,10000"
    assert connected.get("server", "").startswith("pushgate/")
    assert connected.get("user-name") == "alice"
    assert connected.get("session", "").startswith(server.node.id)
    assert c.ws.protocol == "v12.stomp"


async def test_stomp_command_and_no_subprotocol_on_the_stomp_path(server: Running, stomp: Open) -> None:
    c = await stomp(server, path="/stomp", protocols=())
    await c.send("STOMP", {"accept-version": "1.1", "host": "x", "login": "bob"})
    connected = await c.next("CONNECTED")
    assert connected.get("version") == "1.1" and connected.get("user-name") == "bob"


async def test_no_common_version_is_an_error_and_a_close(server: Running, stomp: Open) -> None:
    c = await stomp(server)
    await c.send("CONNECT", {"accept-version": "2.0,3.1", "host": "x"})
    error = await c.next("ERROR")
    assert "version" in (error.get("message") or "")
    assert error.get("version") == "1.0,1.1,1.2"
    assert await c.wait_closed() == CloseCode.PROTOCOL_VIOLATION


async def test_a_1_0_client_without_accept_version(server: Running, stomp: Open) -> None:
    c = await stomp(server, protocols=("v10.stomp",))
    await c.send("CONNECT", {"login": "carol"})
    assert (await c.next("CONNECTED")).get("version") == "1.0"


async def test_subscribe_then_http_publish_gives_a_message_with_position(server: Running, stomp: Open) -> None:
    c = await stomp(server, query="user=alice")
    await c.connect()
    receipt = await c.request("SUBSCRIBE", {"id": "sub-0", "destination": "/topic/news"})
    assert receipt.get("offset") == "0" and receipt.get("recovered") == "false"
    status, body = await server.api("POST", "/api/publish", {"channel": "news", "data": {"text": "hi"}})
    assert status == 200
    msg = await c.next("MESSAGE")
    assert json.loads(msg.body) == {"text": "hi"}
    assert msg.get("subscription") == "sub-0" and msg.get("destination") == "/topic/news"
    assert msg.get("content-type") == "application/json"
    assert msg.get("content-length") == str(len(msg.body))
    assert msg.get("epoch") == body["epoch"] and msg.get("offset") == "1"
    assert msg.get("message-id") == f"sub-0:{body['epoch']}:1"
    assert msg.get("ack") is None  # auto mode


async def test_send_reaches_json_and_stomp_subscribers_with_the_same_offsets(server: Running, stomp: Open) -> None:
    json_sub = await server.client("user=j")
    await json_sub.ok({"type": "subscribe", "channel": "room"})
    s = await stomp(server, query="user=s")
    await s.connect()
    await s.request("SUBSCRIBE", {"id": "a", "destination": "/topic/room"})
    receipt = await s.request("SEND", {"destination": "/topic/room", "content-type": "application/json"},
                              b'{"n":1}')
    assert receipt.get("offset") == "1"
    await json_sub.ok({"type": "publish", "channel": "room", "data": {"n": 2}})
    got = [await s.next("MESSAGE"), await s.next("MESSAGE")]
    assert [json.loads(m.body) for m in got] == [{"n": 1}, {"n": 2}]
    pushed = await json_sub.messages(2)
    assert [(m["epoch"], str(m["offset"])) for m in pushed] == [(m.get("epoch"), m.get("offset")) for m in got]
    # who published each one, stamped by the server: a STOMP header and the JSON frame's "from"
    assert [m.get("sender") for m in got] == ["s", "j"] and [m["from"] for m in pushed] == ["s", "j"]


async def test_text_and_empty_bodies(server: Running, stomp: Open) -> None:
    s = await stomp(server, query="user=s")
    await s.connect()
    await s.request("SUBSCRIBE", {"id": "a", "destination": "/topic/t"})
    await s.send("SEND", {"destination": "/topic/t", "content-type": "text/plain"}, b"hello")
    await s.send("SEND", {"destination": "/topic/t"})
    assert (await s.next("MESSAGE")).body == b'"hello"'
    assert (await s.next("MESSAGE")).body == b"null"


async def test_receipts_and_disconnect(server: Running, stomp: Open) -> None:
    s = await stomp(server, query="user=s")
    await s.connect()
    await s.send("SUBSCRIBE", {"id": "a", "destination": "/topic/x", "receipt": "1"})
    await s.send("UNSUBSCRIBE", {"id": "a", "receipt": "2"})
    await s.send("DISCONNECT", {"receipt": "3"})
    got = [(await s.next("RECEIPT")).get("receipt-id") for _ in range(3)]
    assert got == ["1", "2", "3"]
    assert await s.wait_closed() == 1000
    await wait_for(lambda: not server.node.hub.connections, what="unregistered")


async def test_garbage_is_an_error_with_its_receipt_and_a_close(server: Running, stomp: Open) -> None:
    s = await stomp(server, query="user=s")
    await s.connect()
    await s.send_raw("BOGUS\nreceipt:77\n\n\0")
    error = await s.next("ERROR")
    assert error.get("receipt-id") == "77" and "BOGUS" in (error.get("message") or "")
    assert await s.wait_closed() == CloseCode.PROTOCOL_VIOLATION


async def test_garbage_before_connect(server: Running, stomp: Open) -> None:
    s = await stomp(server)
    await s.send_raw("SEND\ndestination:/topic/x\n\n\0")
    assert "CONNECT" in ((await s.next("ERROR")).get("message") or "")
    assert await s.wait_closed() == CloseCode.PROTOCOL_VIOLATION


async def test_frames_split_across_messages_and_several_in_one(server: Running, stomp: Open) -> None:
    s = await stomp(server, query="user=s")
    await s.send_raw("CONNECT\naccept-version:1.2\nhost:x\n\n\0SUBSCRIBE\nid:a\ndestination:/topic/s\n")
    await s.send_raw("receipt:r1\n\n\0\nSEND\ndestination:/topic/s\ncontent-length:5\n\n[1,\0")
    await s.send_raw("]\0")  # the NUL inside is part of the body by content-length: invalid JSON, so...
    assert (await s.next("CONNECTED")).get("version") == "1.2"
    assert (await s.next("RECEIPT")).get("receipt-id") == "r1"
    assert (await s.next("ERROR")).get("code") == "bad_request"


async def test_permissions_apply(make_server: ServerFactory, stomp: Open) -> None:
    server = await make_server(client_publish=False)
    s = await stomp(server, query="user=s")
    await s.connect()
    await s.send("SEND", {"destination": "/topic/x", "receipt": "9"}, b"1")
    error = await s.next("ERROR")
    assert error.get("code") == "permission_denied" and error.get("receipt-id") == "9"
    assert await s.wait_closed() == CloseCode.DISCONNECTED


async def test_unknown_destination_and_app_without_handler(server: Running, stomp: Open) -> None:
    s = await stomp(server, query="user=s")
    await s.connect()
    await s.send("SUBSCRIBE", {"id": "a", "destination": "/nowhere/x"})
    assert (await s.next("ERROR")).get("code") == "bad_request"
    s2 = await stomp(server, query="user=s")
    await s2.connect()
    await s2.send("SEND", {"destination": "/app/none"}, b"1")
    error = await s2.next("ERROR")
    assert error.get("code") == "unknown_destination" and "/app/none" in (error.get("message") or "")


async def test_transactions_commit_and_abort(server: Running, stomp: Open) -> None:
    s = await stomp(server, query="user=s")
    await s.connect()
    await s.request("SUBSCRIBE", {"id": "a", "destination": "/topic/tx"})
    await s.request("BEGIN", {"transaction": "t1"})
    await s.request("SEND", {"destination": "/topic/tx", "transaction": "t1"}, b"1")
    await s.request("SEND", {"destination": "/topic/tx", "transaction": "t1"}, b"2")
    await s.request("BEGIN", {"transaction": "t2"})
    await s.request("SEND", {"destination": "/topic/tx", "transaction": "t2"}, b"99")
    await s.request("ABORT", {"transaction": "t2"})
    await s.nothing_more()  # nothing published before COMMIT
    await s.request("COMMIT", {"transaction": "t1"})
    assert [(await s.next("MESSAGE")).body for _ in range(2)] == [b"1", b"2"]
    await s.nothing_more()
    await s.send("COMMIT", {"transaction": "t2"})
    assert (await s.next("ERROR")).get("code") == "bad_request"


async def test_transactions_are_bounded_and_dropped_on_disconnect(make_server: ServerFactory, stomp: Open) -> None:
    server = await make_server(stomp_transaction_frames=2)
    s = await stomp(server, query="user=s")
    await s.connect()
    await s.request("BEGIN", {"transaction": "t"})
    for i in range(2):
        await s.request("SEND", {"destination": "/topic/b", "transaction": "t"}, str(i).encode())
    await s.send("SEND", {"destination": "/topic/b", "transaction": "t"}, b"3")
    assert (await s.next("ERROR")).get("code") == "limit_exceeded"
    await s.wait_closed()
    status, body = await server.api("GET", "/api/history?channel=b")
    assert status != 200 or body.get("publications", []) == []


async def test_heartbeats_are_sent_and_a_silent_client_is_closed(make_server: ServerFactory, stomp: Open) -> None:
    server = await make_server(stomp_heartbeat=0.1, stomp_heartbeat_tolerance=2.0)
    s = await stomp(server, query="user=s")
    await s.send("CONNECT", {"accept-version": "1.2", "host": "x", "heart-beat": "300,100"})
    assert (await s.next("CONNECTED")).get("heart-beat") == "100,100"
    await wait_for(lambda: s.heartbeats >= 2, what="server heart-beats")  # every 100 ms
    # we promised one every 300 ms and never send it: closed after 2 x 300 ms, with an ERROR saying why
    error = await s.next("ERROR", seconds=3)
    assert "heart-beat" in (error.get("message") or "")
    assert await s.wait_closed() == CloseCode.RECONNECT


async def test_client_heartbeats_keep_the_connection(make_server: ServerFactory, stomp: Open) -> None:
    server = await make_server(stomp_heartbeat=0.1)
    s = await stomp(server, query="user=s")
    await s.send("CONNECT", {"accept-version": "1.2", "host": "x", "heart-beat": "100,0"})
    await s.next("CONNECTED")
    for _ in range(8):
        await s.send_raw("\n")
        await asyncio.sleep(0.06)
    assert not s.closed.is_set()
    assert s.heartbeats == 0  # we asked for none


async def test_subscribe_with_since_recovers_like_json(server: Running, stomp: Open) -> None:
    for i in range(5):
        await server.node.publish_json("rec", i)
    pos = await server.node.position("rec")
    s = await stomp(server, query="user=s")
    await s.connect()
    receipt = await s.request("SUBSCRIBE", {"id": "a", "destination": "/topic/rec", "since": f"{pos.epoch}:2"})
    assert receipt.get("recovered") == "true" and receipt.get("offset") == "5"
    got = [await s.next("MESSAGE") for _ in range(3)]
    assert [m.get("offset") for m in got] == ["3", "4", "5"]
    assert [m.body for m in got] == [b"2", b"3", b"4"]


async def test_two_subscriptions_to_one_channel_and_broker_prefix_namespaces(
    make_server: ServerFactory, stomp: Open
) -> None:
    server = await make_server(stomp_broker_prefixes="/topic,/chat")
    s = await stomp(server, query="user=s")
    await s.connect()
    await s.request("SUBSCRIBE", {"id": "a", "destination": "/chat/lobby"})
    await s.request("SUBSCRIBE", {"id": "b", "destination": "/topic/chat:lobby"})
    await server.node.publish_json("chat:lobby", "x")
    got = {(m.get("subscription"), m.get("destination")) for m in [await s.next("MESSAGE"), await s.next("MESSAGE")]}
    assert got == {("a", "/chat/lobby"), ("b", "/topic/chat:lobby")}
    await s.request("UNSUBSCRIBE", {"id": "a"})
    assert "chat:lobby" in server.node.hub.channels  # b still follows it
    await s.request("UNSUBSCRIBE", {"id": "b"})
    await wait_for(lambda: "chat:lobby" not in server.node.hub.channels, what="channel left")


async def test_user_destinations_api_send_json_send_and_stomp_send(server: Running, stomp: Open) -> None:
    bob = await stomp(server, query="user=bob")
    await bob.connect()
    await bob.request("SUBSCRIBE", {"id": "q", "destination": "/user/queue/inbox"})
    await bob.request("SUBSCRIBE", {"id": "d", "destination": "/user/queue/messages"})
    status, _ = await server.api("POST", "/api/send",
                                 {"users": ["bob"], "data": {"a": 1}, "destination": "/queue/inbox"})
    assert status == 200
    m = await bob.next("MESSAGE")
    assert (m.get("subscription"), m.get("destination"), json.loads(m.body)) == ("q", "/user/queue/inbox", {"a": 1})
    alice_json = await server.client("user=alice")
    await alice_json.ok({"type": "send", "to": ["bob"], "data": "hi"})  # no destination: the default one
    m = await bob.next("MESSAGE")
    assert (m.get("subscription"), m.body, m.get("sender")) == ("d", b'"hi"', "alice")
    carol = await stomp(server, query="user=carol")
    await carol.connect()
    await carol.request("SEND", {"destination": "/user/bob/queue/inbox"}, b'{"from":"carol"}')
    m = await bob.next("MESSAGE")
    assert (m.get("subscription"), m.get("sender"), m.get("offset")) == ("q", "carol", "3")
    # a STOMP SEND to a JSON user arrives as a direct frame
    await bob.request("SEND", {"destination": "/user/alice/queue/x"}, b"5")
    direct = await alice_json.next("direct")
    assert direct["data"] == 5 and direct["from"] == "bob"


async def test_user_stream_replays_what_was_sent_while_offline_and_auto_ack_moves_it(
    server: Running, stomp: Open
) -> None:
    await server.api("POST", "/api/send", {"users": ["dora"], "data": 1, "destination": "/queue/q"})
    await server.api("POST", "/api/send", {"users": ["dora"], "data": 2, "destination": "/queue/q"})
    d = await stomp(server, query="user=dora")
    await d.connect()
    receipt = await d.request("SUBSCRIBE", {"id": "q", "destination": "/user/queue/q"})
    assert receipt.get("offset") == "2"
    assert [(await d.next("MESSAGE")).body for _ in range(2)] == [b"1", b"2"]
    epoch = receipt.get("epoch")
    await wait_for(lambda: _acked(server, "dora", epoch, 2), what="auto ack")
    # a new device gets nothing already acknowledged
    d2 = await stomp(server, query="user=dora")
    await d2.connect()
    await d2.request("SUBSCRIBE", {"id": "q", "destination": "/user/queue/q"})
    await d2.nothing_more()


async def _acked(server: Running, user: str, epoch: str | None, offset: int) -> bool:
    pos = await server.node.broker.acked(f"!u:{user}")
    return pos is not None and pos.epoch == epoch and pos.offset >= offset


async def test_client_ack_modes_on_user_destinations(server: Running, stomp: Open) -> None:
    e = await stomp(server, query="user=erin")
    await e.connect()
    r = await e.request("SUBSCRIBE", {"id": "q", "destination": "/user/queue/q", "ack": "client-individual"})
    epoch = r.get("epoch")
    for i in range(3):
        await server.api("POST", "/api/send", {"users": ["erin"], "data": i, "destination": "/queue/q"})
    msgs = [await e.next("MESSAGE") for _ in range(3)]
    assert all(m.get("ack") == m.get("message-id") for m in msgs)
    await e.request("ACK", {"id": msgs[1].get("ack") or ""})  # individual: 1 still pending before it
    assert not await _acked(server, "erin", epoch, 1)
    await e.request("ACK", {"id": msgs[0].get("ack") or ""})
    assert await _acked(server, "erin", epoch, 1)
    await e.request("NACK", {"id": msgs[2].get("ack") or ""})
    assert not await _acked(server, "erin", epoch, 3)
    # channel subscriptions in client mode carry an ack header; their ACK is accepted
    await e.request("SUBSCRIBE", {"id": "c", "destination": "/topic/c", "ack": "client"})
    await server.node.publish_json("c", 1)
    m = await e.next("MESSAGE")
    assert m.get("ack")
    await e.request("ACK", {"id": m.get("ack") or ""})


async def test_client_mode_acks_cumulatively(server: Running, stomp: Open) -> None:
    f = await stomp(server, query="user=finn")
    await f.connect()
    r = await f.request("SUBSCRIBE", {"id": "q", "destination": "/user/queue/messages", "ack": "client"})
    for i in range(3):
        await server.api("POST", "/api/send", {"users": ["finn"], "data": i})
    msgs = [await f.next("MESSAGE") for _ in range(3)]
    await f.request("ACK", {"id": msgs[2].get("ack") or ""})
    assert await _acked(server, "finn", r.get("epoch"), 3)


async def test_app_destinations(make_server: ServerFactory, stomp: Open) -> None:
    app = App()
    seen: list[tuple[str | None, object, str | None]] = []

    @app.message("/chat.send", send_to="/topic/chat")
    def chat(client: ClientInfo, data: object, headers: dict[str, str]) -> object:
        seen.append((client.user, data, headers.get("x-trace")))
        return {"echo": data, "by": client.user}

    @app.message("/whoami", send_to_user="/queue/reply")
    async def whoami(client: ClientInfo, data: object, headers: dict[str, str]) -> object:
        return {"you": client.user}

    @app.message("/greet")
    def greet(client: ClientInfo, data: object, headers: dict[str, str]) -> object:
        return "hello"  # Spring's default: /topic/greet

    @app.message("/route")
    def route(client: ClientInfo, data: object, headers: dict[str, str]) -> object:
        return [SendTo("/topic/routed", 1), SendToUser("/queue/reply", 2, users=("zed",))]

    server = await make_server(app=app)
    s = await stomp(server, query="user=sam")
    await s.connect()
    for dest in ("/topic/chat", "/user/queue/reply", "/topic/greet", "/topic/routed"):
        await s.request("SUBSCRIBE", {"id": dest, "destination": dest})
    z = await stomp(server, query="user=zed")
    await z.connect()
    await z.request("SUBSCRIBE", {"id": "r", "destination": "/user/queue/reply"})
    await s.request("SEND", {"destination": "/app/chat.send", "x-trace": "t1"}, b'{"text":"yo"}')
    m = await s.next("MESSAGE")
    assert m.get("destination") == "/topic/chat" and json.loads(m.body) == {"echo": {"text": "yo"}, "by": "sam"}
    assert seen == [("sam", {"text": "yo"}, "t1")]
    await s.request("SEND", {"destination": "/app/whoami"})
    m = await s.next("MESSAGE")
    assert m.get("destination") == "/user/queue/reply" and json.loads(m.body) == {"you": "sam"}
    await s.request("SEND", {"destination": "/app/greet"})
    assert (await s.next("MESSAGE")).get("destination") == "/topic/greet"
    await s.request("SEND", {"destination": "/app/route"})
    assert (await s.next("MESSAGE")).get("destination") == "/topic/routed"
    assert (await z.next("MESSAGE")).body == b"2"


async def test_hooks_fire_for_stomp_sessions(make_server: ServerFactory, stomp: Open) -> None:
    app = App()
    events: list[tuple[str, str | None, str]] = []
    app.on_connect(lambda c: events.append(("connect", c.user, c.transport)))
    app.on_subscribe(lambda c, ch: events.append(("subscribe", c.user, ch)))
    app.on_unsubscribe(lambda c, ch: events.append(("unsubscribe", c.user, ch)))
    app.on_disconnect(lambda c: events.append(("disconnect", c.user, c.transport)))
    server = await make_server(app=app)
    s = await stomp(server, query="user=h")
    await s.connect()
    await s.request("SUBSCRIBE", {"id": "a", "destination": "/topic/hk"})
    await s.request("UNSUBSCRIBE", {"id": "a"})
    await s.send("DISCONNECT")
    await s.wait_closed()
    await wait_for(lambda: len(events) == 4, what="four hooks")
    assert events == [("connect", "h", "stomp"), ("subscribe", "h", "hk"), ("unsubscribe", "h", "hk"),
                      ("disconnect", "h", "stomp")]


async def test_jwt_in_connect_headers(make_server: ServerFactory, stomp: Open) -> None:
    import jwt

    secret = "s3cr3t-for-tests-only-0123456789abcdef"
    server = await make_server(jwt_secret=secret)
    token = jwt.encode({"sub": "jo"}, secret, algorithm="HS256")
    other = jwt.encode({"sub": "eve"}, secret, algorithm="HS256")
    a = await stomp(server)
    connected = await a.connect({"Authorization": f"Bearer {token}"})
    assert connected.get("user-name") == "jo"
    b = await stomp(server)
    assert (await b.connect({"login": "x", "passcode": token})).get("user-name") == "jo"
    c = await stomp(server)
    await c.send("CONNECT", {"accept-version": "1.2", "host": "x"})
    error = await c.next("ERROR")
    assert error.get("code") == "unauthorized"
    await c.wait_closed()
    d = await stomp(server, query=f"token={token}")
    await d.send("CONNECT", {"accept-version": "1.2", "host": "x", "Authorization": f"Bearer {other}"})
    assert (await d.next("ERROR")).get("code") == "permission_denied"


async def test_json_clients_on_ws_are_untouched(server: Running) -> None:
    c = await server.client("user=j")
    assert c.welcome["type"] == "welcome"
