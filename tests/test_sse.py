"""Server-Sent Events transport (``GET /sse``): welcome, message events with ``id:``, recovery
with ``Last-Event-ID`` and ``since=``, direct messages, broadcasts, auth, keep-alives, close."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import pytest

import pushgate
from pushgate.errors import CloseCode

from .conftest import Running, ServerFactory
from .helpers import direct_body, timeout, wait_for

SECRET = "sse-test-secret-long-enough-for-hs256"


@dataclass
class Event:
    data: Any
    id: str | None = None
    event: str | None = None

    @property
    def type(self) -> str | None:
        return self.data.get("type") if isinstance(self.data, dict) else None


class SseStream:
    """Reads one ``text/event-stream`` response line by line (RFC-free, per the WHATWG format)."""

    def __init__(self, session: aiohttp.ClientSession, resp: aiohttp.ClientResponse) -> None:
        self.session = session
        self.resp = resp
        self.comments: list[str] = []

    async def event(self, seconds: float = 5.0) -> Event:
        """The next event; comments (``: ping``) are collected, not returned."""
        return await asyncio.wait_for(self._event(), timeout(seconds))

    async def _event(self) -> Event:
        fields: dict[str, list[str]] = {}
        while True:
            raw = await self.resp.content.readline()
            if not raw:
                raise EOFError("stream ended")
            line = raw.decode().rstrip("\n")
            if line == "":
                if fields:
                    data = "\n".join(fields.get("data", []))
                    ids, names = fields.get("id"), fields.get("event")
                    return Event(json.loads(data), ids[-1] if ids else None, names[-1] if names else None)
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            fields.setdefault(name, []).append(value.removeprefix(" "))

    async def next(self, type_: str, seconds: float = 5.0) -> Event:
        """The next event whose JSON ``type`` (or SSE ``event:`` name) is ``type_``."""
        deadline = time.monotonic() + timeout(seconds)
        while True:
            ev = await self.event(max(0.01, deadline - time.monotonic()))
            if type_ in (ev.type, ev.event):
                return ev

    async def ended(self, seconds: float = 5.0) -> None:
        async def drain() -> None:
            while await self.resp.content.readline():
                pass

        await asyncio.wait_for(drain(), timeout(seconds))

    async def close(self) -> None:
        self.resp.close()
        await self.session.close()


@pytest.fixture
async def open_sse() -> AsyncIterator[Any]:
    opened: list[SseStream] = []

    async def opener(running: Running, query: str, headers: dict[str, str] | None = None) -> SseStream:
        session = aiohttp.ClientSession()
        resp = await session.get(f"{running.url}/sse?{query}", headers=headers)
        stream = SseStream(session, resp)
        opened.append(stream)
        return stream

    yield opener
    for stream in opened:
        await stream.close()


async def publish(running: Running, channel: str, data: Any) -> dict[str, Any]:
    status, body = await running.api("POST", "/api/publish", {"channel": channel, "data": data})
    assert status == 200, body
    return body  # type: ignore[no-any-return]


async def test_welcome_then_messages_with_ids(server: Running, open_sse: Any) -> None:
    sse = await open_sse(server, "channel=news&user=alice")
    assert sse.resp.status == 200
    assert sse.resp.headers["Content-Type"].startswith("text/event-stream")
    assert sse.resp.headers["Cache-Control"] == "no-cache"

    welcome = await sse.event()
    assert welcome.type == "welcome" and welcome.id is None
    assert welcome.data["user"] == "alice" and welcome.data["client"]
    await wait_for(lambda: server.node.local_channels().get("news") == 1, what="sse subscription")

    pos = await publish(server, "news", {"text": "hello"})
    msg = await sse.next("message")
    assert msg.data == {"type": "message", "channel": "news", "data": {"text": "hello"},
                        "offset": pos["offset"], "epoch": pos["epoch"]}
    assert msg.id == f"{pos['epoch']}:{pos['offset']}"

    pos2 = await publish(server, "news", [1, 2])
    msg2 = await sse.next("message")
    assert (msg2.data["data"], msg2.id) == ([1, 2], f"{pos2['epoch']}:{pos2['offset']}")


async def test_last_event_id_replays_missed_publications(server: Running, open_sse: Any) -> None:
    first = await open_sse(server, "channel=news&user=alice")
    await first.next("welcome")
    await wait_for(lambda: server.node.local_channels().get("news") == 1, what="subscription")
    await publish(server, "news", "m1")
    last = await first.next("message")
    await first.close()

    for i in (2, 3, 4):
        await publish(server, "news", f"m{i}")

    again = await open_sse(server, "channel=news&user=alice", headers={"Last-Event-ID": last.id})
    await again.next("welcome")
    replayed = [await again.next("message") for _ in range(3)]
    assert [e.data["data"] for e in replayed] == ["m2", "m3", "m4"]
    assert [e.data["offset"] for e in replayed] == [2, 3, 4]
    # then live, with nothing repeated
    await publish(server, "news", "m5")
    live = await again.next("message")
    assert (live.data["data"], live.data["offset"]) == ("m5", 5)


async def test_last_event_id_from_another_epoch_is_not_replayed(server: Running, open_sse: Any) -> None:
    await publish(server, "news", "old")
    sse = await open_sse(server, "channel=news", headers={"Last-Event-ID": "not-the-epoch:0"})
    await sse.next("welcome")
    await wait_for(lambda: server.node.local_channels().get("news") == 1, what="subscription")
    await publish(server, "news", "new")
    assert (await sse.next("message")).data["data"] == "new"


async def test_since_recovers_several_channels(server: Running, open_sse: Any) -> None:
    a = await publish(server, "chat:room1", "a1")
    b = await publish(server, "feed", "b1")
    await publish(server, "chat:room1", "a2")
    await publish(server, "chat:room1", "a3")
    await publish(server, "feed", "b2")

    query = (f"channel=chat:room1&channel=feed&since=chat:room1:{a['epoch']}:{a['offset']}"
             f"&since=feed:{b['epoch']}:{b['offset']}")
    sse = await open_sse(server, query)
    await sse.next("welcome")
    got = [await sse.next("message") for _ in range(3)]
    by_channel: dict[str, list[str]] = {}
    for ev in got:
        by_channel.setdefault(ev.data["channel"], []).append(ev.data["data"])
        assert ev.id == f"{ev.data['epoch']}:{ev.data['offset']}"
    assert by_channel == {"chat:room1": ["a2", "a3"], "feed": ["b2"]}

    await publish(server, "feed", "b3")
    live = await sse.next("message")
    assert (live.data["channel"], live.data["data"], live.data["offset"]) == ("feed", "b3", 3)


async def test_bad_since_is_400(server: Running, open_sse: Any) -> None:
    sse = await open_sse(server, "channel=news&since=news:epoch:notanumber")
    assert sse.resp.status == 400
    assert (await sse.resp.json())["error"]["code"] == "bad_request"


async def test_direct_messages_and_broadcasts(server: Running, open_sse: Any) -> None:
    alice = await open_sse(server, "user=alice")
    bob = await open_sse(server, "user=bob")
    await alice.next("welcome")
    await bob.next("welcome")

    status, _ = await server.api("POST", "/api/send", {"users": ["alice"], "data": {"n": 1}, "sender": "ops"})
    assert status == 200
    direct = await alice.next("direct")
    assert direct_body(direct.data) == {"type": "direct", "from": "ops", "data": {"n": 1}} and direct.id is None

    ws = await server.client("user=carol")  # a WebSocket user can message an SSE user
    await ws.ok({"type": "send", "to": ["bob"], "data": "hi bob"})
    assert direct_body((await bob.next("direct")).data) == {"type": "direct", "from": "carol", "data": "hi bob"}

    await server.api("POST", "/api/broadcast", {"data": {"maintenance": True}})
    for stream in (alice, bob):
        assert (await stream.next("broadcast")).data == {"type": "broadcast", "data": {"maintenance": True}}
    assert (await ws.next("broadcast"))["data"] == {"maintenance": True}


async def test_invalid_channel_is_an_error_event_and_the_stream_continues(server: Running,
                                                                         open_sse: Any) -> None:
    sse = await open_sse(server, "channel=bad%20channel&channel=news")
    await sse.next("welcome")
    err = await sse.next("error")
    assert err.data["code"] == "bad_request" and "bad channel" in err.data["message"]
    await wait_for(lambda: server.node.local_channels().get("news") == 1, what="subscription")
    await publish(server, "news", 1)
    assert (await sse.next("message")).data["data"] == 1


async def test_jwt_mode(make_server: ServerFactory, open_sse: Any) -> None:
    running = await make_server(jwt_secret=SECRET)
    bad = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, "wrong-secret-of-enough-length!!!",
                     algorithm="HS256")
    for query in (f"channel=news&token={bad}", "channel=news", "channel=news&user=alice"):
        sse = await open_sse(running, query)
        assert sse.resp.status == 401
        assert (await sse.resp.json())["error"]["code"] == "unauthorized"

    good = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    sse = await open_sse(running, f"channel=news&token={good}")
    assert (await sse.next("welcome")).data["user"] == "alice"
    header = await open_sse(running, "channel=news", headers={"Authorization": f"Bearer {good}"})
    assert (await header.next("welcome")).data["user"] == "alice"


async def test_invalid_user_is_400(server: Running, open_sse: Any) -> None:
    sse = await open_sse(server, "user=not%20valid")
    assert sse.resp.status == 400


async def test_keepalive_comments(make_server: ServerFactory, open_sse: Any) -> None:
    running = await make_server(sse_ping_interval=0.1)
    sse = await open_sse(running, "channel=news")
    await sse.next("welcome")
    await wait_for(lambda: running.node.local_channels().get("news") == 1, what="subscription")
    # an idle stream carries only keep-alive comments, no events
    with pytest.raises(TimeoutError):
        await sse.event(0.5)
    assert sse.comments[:2] == ["ping", "ping"]
    # and stays well-formed around them
    await publish(running, "news", "after pings")
    assert (await sse.next("message")).data["data"] == "after pings"


async def test_server_disconnect_sends_a_close_event(server: Running, open_sse: Any) -> None:
    sse = await open_sse(server, "user=alice&channel=news")
    await sse.next("welcome")
    await server.api("POST", "/api/disconnect", {"user": "alice", "reason": 'bye "alice"\nsee you'})
    close = await sse.next("close")
    assert close.event == "close" and close.data == {"code": 4500, "reason": 'bye "alice"\nsee you'}
    await sse.ended()
    await wait_for(lambda: not server.node.hub.connections, what="cleanup")


async def test_client_going_away_is_cleaned_up(server: Running, open_sse: Any) -> None:
    sse = await open_sse(server, "user=alice&channel=news")
    await sse.next("welcome")
    _, online = await server.api("GET", "/api/online")
    assert online["connections"] == 1 and online["users"] == 1
    _, presence = await server.api("GET", "/api/presence/news")
    assert presence["users"] == ["alice"]
    await sse.close()
    # the server notices on its next write: a publication (or keep-alive) to the gone stream
    async def gone() -> bool:
        await publish(server, "news", "ping")
        return not server.node.hub.connections

    await wait_for(gone, seconds=5, interval=0.05, what="sse connection unregistered")
    assert (await server.api("GET", "/api/online"))[1]["connections"] == 0


@pytest.mark.parametrize("version", ["1.1", "1.0"])
async def test_stream_framing_on_the_wire(server: Running, version: str) -> None:
    """HTTP/1.1 streams are chunked (every event one valid chunk); HTTP/1.0 ones end at close."""
    host, port = server.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET /sse?user=alice HTTP/{version}\r\nHost: {host}\r\n\r\n".encode())
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout(5))).decode().lower()
        assert head.startswith(f"http/{version} 200")
        if version == "1.1":
            assert "transfer-encoding: chunked" in head
            size = int(await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout(5)), 16)
            chunk = await reader.readexactly(size + 2)
            assert chunk.endswith(b"\n\n\r\n")
            body = chunk[:-2]
        else:
            assert "transfer-encoding" not in head
            body = await asyncio.wait_for(reader.readuntil(b"\n\n"), timeout(5))
        assert body.startswith(b"data: {") and b'"type":"welcome"' in body and b'"user":"alice"' in body
    finally:
        writer.close()


async def test_connect_hooks_apply_to_sse(make_server: ServerFactory, open_sse: Any) -> None:
    app = pushgate.App()
    seen: list[tuple[str | None, str]] = []

    @app.on_connect
    def gate(client: pushgate.ClientInfo) -> None:
        seen.append((client.user, client.transport))
        if client.user == "mallory":
            raise pushgate.Reject("mallory is banned")
        if client.user == "boom":
            raise RuntimeError("hook bug")

    running = await make_server(app=app)
    banned = await open_sse(running, "user=mallory&channel=news")
    assert banned.resp.status == 403
    assert await banned.resp.json() == {"error": {"code": "rejected", "message": "mallory is banned"}}
    crashed = await open_sse(running, "user=boom")
    assert crashed.resp.status == 500
    assert (await crashed.resp.json())["error"]["code"] == "internal"
    alice = await open_sse(running, "user=alice")
    assert (await alice.next("welcome")).data["user"] == "alice"
    assert seen == [("mallory", "sse"), ("boom", "sse"), ("alice", "sse")]


async def test_origin_checks_apply_to_sse(make_server: ServerFactory, open_sse: Any) -> None:
    running = await make_server(allowed_origins="https://app.example.com")
    refused = await open_sse(running, "user=alice", headers={"Origin": "https://evil.example.com"})
    assert refused.resp.status == 403
    assert (await refused.resp.json())["error"]["code"] == "forbidden"
    allowed = await open_sse(running, "user=alice", headers={"Origin": "https://app.example.com"})
    assert (await allowed.next("welcome")).data["user"] == "alice"


async def test_sse_without_origin_is_same_origin(make_server: ServerFactory, open_sse: Any) -> None:
    """Browsers send no Origin on a same-origin GET (a page's own EventSource), while a cross-site
    EventSource carries one: a missing Origin is allowed on /sse (and still refused on /ws)."""
    running = await make_server(allowed_origins="https://app.example.com")
    same_origin = await open_sse(running, "user=alice&channel=news")
    assert same_origin.resp.status == 200
    assert (await same_origin.next("welcome")).data["user"] == "alice"
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await running.client("user=alice")
    assert info.value.status == 403


def token(sub: str, seconds: float = 60, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time() + seconds), **claims}, SECRET, algorithm="HS256")


async def test_sse_subscriptions_follow_the_channels_claim(make_server: ServerFactory, open_sse: Any) -> None:
    running = await make_server(jwt_secret=SECRET)
    lobby_only = token("alice", channels=["chat:lobby"])
    sse = await open_sse(running, f"channel=chat:secret&channel=chat:lobby&token={lobby_only}")
    await sse.next("welcome")
    err = await sse.next("error")
    assert err.data["code"] == "permission_denied" and err.data["message"].startswith("chat:secret")
    await wait_for(lambda: running.node.local_channels().get("chat:lobby") == 1, what="the allowed subscription")
    assert "chat:secret" not in running.node.local_channels()


async def test_sse_stream_is_closed_with_4005_at_the_token_exp(make_server: ServerFactory, open_sse: Any) -> None:
    """SSE is one-way (no refresh): the stream ends with a close event at ``exp``."""
    running = await make_server(jwt_secret=SECRET)
    exp = int(time.time()) + 2
    sse = await open_sse(running, f"channel=news&token={jwt.encode({'sub': 'alice', 'exp': exp}, SECRET)}")
    await sse.next("welcome")
    close = await sse.next("close", seconds=6)
    assert close.data == {"code": CloseCode.TOKEN_EXPIRED, "reason": "token expired: reconnect with a fresh token"}
    assert time.time() >= exp
    await sse.ended()
    await wait_for(lambda: not running.node.hub.connections, what="cleanup")


async def test_slow_consumer_gets_a_4001_close_event(make_server: ServerFactory) -> None:
    """The slow-consumer policy is the WebSocket one: counted, then closed with 4001 (the close
    event is queued behind what the client has not read yet, so it reads it last)."""
    running = await make_server(write_buffer_limit=64 * 1024)
    host, port = running.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        # HTTP/1.0: no chunk framing, so the raw bytes read as the event stream
        writer.write(f"GET /sse?user=slow&channel=firehose HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout(5))
        await wait_for(lambda: running.node.local_channels().get("firehose") == 1, what="subscription")
        big = "y" * 4000

        async def cut_off() -> bool:
            for _ in range(20):
                await publish(running, "firehose", big)
            return bool(running.node.metrics.slow_consumers._value.get() >= 1)

        await wait_for(cut_off, seconds=20, interval=0, what="slow consumer to be cut off")
        await wait_for(lambda: not running.node.hub.connections, seconds=10, what="slow conn removed")
        # the response ends after the close event (HTTP/1.0: the server closes the connection)
        stream = await asyncio.wait_for(reader.read(), timeout(20))
        last = stream.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
        assert last.startswith(b"event: close\ndata: "), last[:200]
        close = json.loads(last.removeprefix(b"event: close\ndata: "))
        assert close == {"code": CloseCode.SLOW_CONSUMER, "reason": "slow consumer: reconnect and recover"}
    finally:
        writer.close()
