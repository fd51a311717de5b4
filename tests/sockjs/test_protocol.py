"""The SockJS protocol on /stomp against a real server: info, CORS, each transport carrying STOMP,
heartbeats, timeouts, one receiving request per session, closing frames, bad requests."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import jwt
import pytest

from pushgate.web.sockjs import SockJsOptions

from ..helpers import timeout, wait_for
from .client import TRANSPORTS, SockJsClient
from .conftest import SockJsFactory, SockJsRunning

Open = Callable[..., Awaitable[SockJsClient]]


@pytest.fixture
async def sockjs_client() -> AsyncIterator[Open]:
    opened: list[SockJsClient] = []

    async def open_(running: SockJsRunning, transport: str, **kwargs: object) -> SockJsClient:
        client = await SockJsClient.open(running.base, transport, **kwargs)  # type: ignore[arg-type]
        opened.append(client)
        return client

    yield open_
    for c in opened:
        await c.close()


async def post(url: str, body: bytes | None = None, headers: dict[str, str] | None = None
               ) -> tuple[int, str, dict[str, str]]:
    async with aiohttp.ClientSession() as s, s.post(url, data=body, headers=headers) as r:
        return r.status, await r.text(), dict(r.headers)


# -- /info and CORS ---------------------------------------------------------------------------------
async def test_info_is_fresh_json_with_entropy_and_cors(sockjs: SockJsRunning) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(sockjs.base + "/info?t=1") as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "application/json; charset=UTF-8"
            assert r.headers["Cache-Control"] == "no-store, no-cache, must-revalidate, max-age=0"
            assert r.headers["Access-Control-Allow-Origin"] == "*"
            assert "Set-Cookie" not in r.headers
            first = json.loads(await r.text())
        async with s.get(sockjs.base + "/info", headers={"Origin": "http://app.example"}) as r:
            second = json.loads(await r.text())
            assert r.headers["Access-Control-Allow-Origin"] == "http://app.example"
            assert r.headers["Access-Control-Allow-Credentials"] == "true"
    assert first["websocket"] is True and first["cookie_needed"] is False and first["origins"] == ["*:*"]
    assert isinstance(first["entropy"], int) and 0 <= first["entropy"] < 2**32
    assert first["entropy"] != second["entropy"]


@pytest.mark.parametrize(("suffix", "methods"), [("/info", "OPTIONS, GET"), ("/abc/abc/xhr", "OPTIONS, POST"),
                                                  ("/abc/abc/xhr_send", "OPTIONS, POST"),
                                                  ("/abc/abc/xhr_streaming", "OPTIONS, POST")])
async def test_preflight_is_cacheable_and_echoes_the_request_headers(sockjs: SockJsRunning, suffix: str,
                                                                     methods: str) -> None:
    async with aiohttp.ClientSession() as s:
        for origin in (None, "null", "http://app.example"):
            headers = {"Access-Control-Request-Headers": "content-type, x-a"}
            if origin:
                headers["Origin"] = origin
            async with s.options(sockjs.base + suffix, headers=headers) as r:
                assert r.status == 204
                assert r.headers["Access-Control-Allow-Methods"] == methods
                assert "max-age=31536000" in r.headers["Cache-Control"] and "public" in r.headers["Cache-Control"]
                assert int(r.headers["Access-Control-Max-Age"]) > 1000000 and r.headers["Expires"]
                assert r.headers["Access-Control-Allow-Headers"] == "content-type, x-a"
                want = origin if origin and origin != "null" else "*"
                assert r.headers["Access-Control-Allow-Origin"] == want
                assert not await r.read()


async def test_origins_outside_allowed_origins_get_no_cors_grant(make_sockjs: SockJsFactory) -> None:
    running = await make_sockjs(allowed_origins="http://good.example")
    async with aiohttp.ClientSession() as s:
        async with s.get(running.base + "/info", headers={"Origin": "http://evil.example"}) as r:
            assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers
        async with s.get(running.base + "/info", headers={"Origin": "http://good.example"}) as r:
            assert r.headers["Access-Control-Allow-Origin"] == "http://good.example"


async def test_greeting(sockjs: SockJsRunning) -> None:
    async with aiohttp.ClientSession() as s, s.get(sockjs.base + "/") as r:
        assert r.status == 200 and await r.text() == "Welcome to SockJS!\n"


# -- STOMP over each transport ----------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_stomp_over_each_transport(sockjs: SockJsRunning, sockjs_client: Open, transport: str) -> None:
    c = await sockjs_client(sockjs, transport)
    assert c.raw[0] == "o"
    connected = await c.connect({"login": "alice", "heart-beat": "0,0"})
    assert connected.get("user-name") == "alice" and connected.get("version") == "1.2"
    await c.send("SUBSCRIBE", {"id": "sub-0", "destination": "/topic/news", "receipt": "r1"})
    assert (await c.next("RECEIPT")).get("receipt-id") == "r1"
    # a NUL, quotes, newlines and U+2028 inside the body survive the JSON escaping both ways
    status, _ = await sockjs.api("POST", "/api/publish", {"channel": "news", "data": {"t": 'a"\n\u2028\u0000z'}})
    assert status == 200
    message = await c.next("MESSAGE")
    assert message.get("destination") == "/topic/news" and message.get("subscription") == "sub-0"
    assert json.loads(message.body) == {"t": 'a"\n\u2028\u0000z'} and message.get("offset") == "1"
    await c.send("SEND", {"destination": "/topic/news", "content-type": "application/json"}, b'{"from":"me"}')
    assert json.loads((await c.next("MESSAGE")).body) == {"from": "me"}
    assert sockjs.node.hub.connections and next(iter(sockjs.node.hub.connections.values())).transport_name == "sockjs"
    await c.send("DISCONNECT", {"receipt": "bye"})
    assert (await c.next("RECEIPT")).get("receipt-id") == "bye"
    assert await c.wait_closed() == [1000, "DISCONNECT"]
    await wait_for(lambda: not sockjs.node.hub.connections, what="unregistered")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_identity_from_the_session_url(sockjs: SockJsRunning, sockjs_client: Open, transport: str) -> None:
    c = await sockjs_client(sockjs, transport, query="user=bob")
    assert (await c.connect()).get("user-name") == "bob"


async def test_one_frame_split_across_messages_and_batches(sockjs: SockJsRunning, sockjs_client: Open) -> None:
    c = await sockjs_client(sockjs, "xhr-polling")
    text = "CONNECT\naccept-version:1.2\nhost:x\nlogin:carol\n\n\x00"
    await c.send_text(text[:10], text[10:20])
    await c.send_text(text[20:] + "\n")  # and an EOL heart-beat after it
    assert (await c.next("CONNECTED")).get("user-name") == "carol"


# -- heartbeats, timeouts, closing ----------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_heartbeat_frames(make_sockjs: SockJsFactory, sockjs_client: Open, transport: str) -> None:
    running = await make_sockjs(options=SockJsOptions(heartbeat=timeout(0.2), disconnect_delay=timeout(2)))
    c = await sockjs_client(running, transport)
    await wait_for(lambda: c.raw.count("h") >= 2, what="two h frames")
    if transport == "xhr-polling":
        assert c.receiving_requests >= 3  # each h ends a poll


async def test_a_session_without_receiving_request_times_out(make_sockjs: SockJsFactory) -> None:
    running = await make_sockjs(options=SockJsOptions(disconnect_delay=timeout(0.4)))
    url = running.base + "/000/lonely"
    status, body, headers = await post(url + "/xhr")
    assert (status, body) == (200, "o\n")
    assert headers["Content-Type"] == "application/javascript; charset=UTF-8"
    frame = "CONNECT\naccept-version:1.2\nhost:x\nlogin:dan\n\n\x00"
    status, _, _ = await post(url + "/xhr_send", json.dumps([frame]).encode())
    assert status == 204
    status, body, _ = await post(url + "/xhr")
    assert body.startswith("a[") and "CONNECTED" in body
    assert len(running.node.hub.connections) == 1
    # nobody polls: the session ends, the STOMP connection with it
    await wait_for(lambda: not running.node.hub.connections and not running.endpoint.sessions,
                   what="session timed out")
    status, body, _ = await post(url + "/xhr_send", b'["x"]')
    assert status == 404
    status, body, _ = await post(url + "/xhr")
    assert body == "o\n"  # a new session


@pytest.mark.parametrize("transport", ["xhr-streaming", "xhr-polling"])
async def test_a_second_receiving_request_gets_2010(sockjs: SockJsRunning, sockjs_client: Open,
                                                    transport: str) -> None:
    c = await sockjs_client(sockjs, transport)
    await c.connect({"login": "eve"})
    await wait_for(lambda: sockjs.endpoint.sessions[c.session_id].session.receiving, what="receiving request")
    suffix = "/xhr_streaming" if transport == "xhr-streaming" else "/xhr"
    status, body, _ = await post(c.url + suffix)
    assert status == 200
    assert body.splitlines()[-1] == 'c[2010,"Another connection still open"]'
    # the first request is untouched and the session goes on
    await c.send("SUBSCRIBE", {"id": "s", "destination": "/topic/t", "receipt": "r"})
    assert (await c.next("RECEIPT")).get("receipt-id") == "r"
    assert not c.closed.is_set()


async def test_a_closed_session_answers_its_close_frame_until_forgotten(sockjs: SockJsRunning) -> None:
    url = sockjs.base + "/000/closing"
    assert (await post(url + "/xhr"))[1] == "o\n"
    # a frame that is not CONNECT: ERROR, then the close
    status, _, _ = await post(url + "/xhr_send", json.dumps(["SEND\ndestination:/topic/x\n\nhi\x00"]).encode())
    assert status == 204
    _, body, _ = await post(url + "/xhr")
    error, close = body.splitlines()
    assert error.startswith("a[") and "ERROR" in error and "expected CONNECT" in error
    assert close.startswith("c[4501,")
    assert (await post(url + "/xhr"))[1] == close + "\n"
    assert (await post(url + "/xhr_streaming"))[1] == "h" * 2048 + "\n" + close + "\n"
    assert (await post(url + "/xhr_send", b'["x"]'))[0] == 404


async def test_no_connect_in_time(make_sockjs: SockJsFactory, sockjs_client: Open) -> None:
    running = await make_sockjs(handshake_timeout=timeout(0.3))
    c = await sockjs_client(running, "xhr-streaming")
    error = await c.next("ERROR")
    assert "no CONNECT" in (error.get("message") or "")
    assert (await c.wait_closed())[0] == 4501


async def test_refused_admission_is_an_error_then_a_close(make_sockjs: SockJsFactory, sockjs_client: Open) -> None:
    running = await make_sockjs(allowed_origins="http://good.example")
    c = await sockjs_client(running, "xhr-polling")  # no Origin header: refused at CONNECT
    await c.send("CONNECT", {"accept-version": "1.2", "host": "x"})
    error = await c.next("ERROR")
    assert error.get("code") == "forbidden" and "origin" in (error.get("message") or "")
    assert (await c.wait_closed())[0] == 4500
    assert not running.node.hub.connections


async def test_streaming_response_limit_reopens_without_loss(make_sockjs: SockJsFactory, sockjs_client: Open) -> None:
    running = await make_sockjs(options=SockJsOptions(response_limit=4096, disconnect_delay=timeout(2)))
    c = await sockjs_client(running, "xhr-streaming")
    await c.connect({"login": "frank", "heart-beat": "0,0"})
    await c.send("SUBSCRIBE", {"id": "s", "destination": "/topic/big", "receipt": "r"})
    await c.next("RECEIPT")
    for i in range(20):
        status, _ = await running.api("POST", "/api/publish", {"channel": "big", "data": {"i": i, "pad": "x" * 500}})
        assert status == 200
    got = [json.loads((await c.next("MESSAGE")).body)["i"] for _ in range(20)]
    assert got == list(range(20))
    assert c.receiving_requests >= 3


async def test_slow_consumer_is_closed_with_4001(make_sockjs: SockJsFactory) -> None:
    running = await make_sockjs(write_buffer_limit=4096, options=SockJsOptions(disconnect_delay=timeout(3)))
    url = running.base + "/000/slow"
    await post(url + "/xhr")
    frames = ["CONNECT\naccept-version:1.2\nhost:x\nlogin:gus\nheart-beat:0,0\n\n\x00",
              "SUBSCRIBE\nid:s\ndestination:/topic/flood\nreceipt:r\n\n\x00"]
    assert (await post(url + "/xhr_send", json.dumps(frames).encode()))[0] == 204
    assert "RECEIPT" in (await post(url + "/xhr"))[1]
    for i in range(20):  # nobody polls: more than write_buffer_limit waits in the session
        await running.node.publish_json("flood", {"i": i, "pad": "y" * 400})
    await wait_for(lambda: not running.node.hub.connections, what="slow consumer cut")
    _, body, _ = await post(url + "/xhr")
    assert body.splitlines()[-1].startswith("c[4001,")


async def test_unadmitted_sessions_are_bounded(make_sockjs: SockJsFactory) -> None:
    running = await make_sockjs(options=SockJsOptions(max_unadmitted_sessions=2))
    assert (await post(running.base + "/000/a/xhr"))[1] == "o\n"
    assert (await post(running.base + "/000/b/xhr"))[1] == "o\n"
    status, body, _ = await post(running.base + "/000/c/xhr")
    assert status == 503 and "too many" in body
    # an admitted session no longer counts
    frame = "CONNECT\naccept-version:1.2\nhost:x\nlogin:hal\n\n\x00"
    assert (await post(running.base + "/000/a/xhr_send", json.dumps([frame]).encode()))[0] == 204
    assert (await post(running.base + "/000/c/xhr"))[1] == "o\n"


# -- bad requests -----------------------------------------------------------------------------------
async def test_bad_requests_get_clear_4xx(sockjs: SockJsRunning) -> None:
    base = sockjs.base
    assert (await post(base + "/000/nosuch/xhr_send", b'["x"]'))[0] == 404
    for bad in ("/a./a", "/a/a.", "/./.", "//a"):
        assert (await post(base + bad + "/xhr"))[0] == 404, bad
    assert (await post(base + "/000/" + "x" * 200 + "/xhr"))[0] == 404
    assert (await post(base + "/000/s1/xhr"))[1] == "o\n"
    assert (await post(base + "/000/s1/xhr_send", b""))[:2] == (400, "Payload expected.\n")
    assert (await post(base + "/000/s1/xhr_send", b'["x'))[:2] == (400, "Broken JSON encoding.\n")
    assert (await post(base + "/000/s1/xhr_send", b'{"a":1}'))[0] == 400
    assert (await post(base + "/000/s1/xhr_send", b"[1]"))[0] == 400
    big = json.dumps(["x" * (4 * 65536 + 10)]).encode()
    assert (await post(base + "/000/s1/xhr_send", big))[0] == 413
    async with aiohttp.ClientSession() as s, s.get(base + "/000/s1/websocket") as r:
        assert r.status == 400 and "Upgrade" in await r.text()
    async with aiohttp.ClientSession() as s, s.get(base + "/000/s1/xhr") as r:
        assert r.status == 405


async def test_websocket_broken_json_ends_the_session(sockjs: SockJsRunning) -> None:
    async with aiohttp.ClientSession() as s, s.ws_connect(sockjs.base.replace("http", "ws") + "/0/0/websocket") as ws:
        assert (await ws.receive_str()) == "o"
        await ws.send_str("")  # empty messages are ignored
        await ws.send_str('["CONNECT\\naccept-version:1.2\\nhost:x\\nlogin:ivy\\n\\n\\u0000"]')
        assert "CONNECTED" in await ws.receive_str()
        await ws.send_str('["a')
        assert (await ws.receive_str()) == 'c[1002,"Broken JSON encoding."]'
        msg = await ws.receive()
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    await wait_for(lambda: not sockjs.node.hub.connections, what="unregistered")


async def test_websocket_sessions_may_share_an_id(sockjs: SockJsRunning, sockjs_client: Open) -> None:
    a = await sockjs_client(sockjs, "websocket", session_id="same")
    b = await sockjs_client(sockjs, "websocket", session_id="same")
    assert (await a.connect({"login": "a"})).get("user-name") == "a"
    assert (await b.connect({"login": "b"})).get("user-name") == "b"
    await asyncio.sleep(0)
    assert len(sockjs.node.hub.connections) == 2


async def test_token_expiry_is_an_error_then_4005(make_sockjs: SockJsFactory, sockjs_client: Open) -> None:
    running = await make_sockjs(jwt_secret="s" * 32)
    token = jwt.encode({"sub": "kim", "exp": int(time.time()) + 2}, "s" * 32, algorithm="HS256")
    c = await sockjs_client(running, "xhr-streaming", query=f"token={token}")
    assert (await c.connect({"heart-beat": "0,0"})).get("user-name") == "kim"
    error = await c.next("ERROR", seconds=6)
    assert error.get("code") == "token_expired"
    assert (await c.wait_closed())[0] == 4005
