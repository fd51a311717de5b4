"""One handshake for every transport: the same refusal gives the same status, code and body on
``/ws`` and ``/sse`` (real servers on free ports, real HTTP requests)."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from typing import Any

import aiohttp
import jwt
import pytest

import pushgate
from pushgate.errors import CloseCode

from ..conftest import Running, ServerFactory
from ..helpers import timeout

SECRET = "handshake-test-secret-long-enough-for-hs256"
UPGRADE = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode()}
TRANSPORTS = ("/ws", "/sse")


async def attempt(running: Running, path: str, query: str = "",
                  headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """Status and JSON body of a refused handshake on ``path`` (a WebSocket upgrade for /ws)."""
    sent = {**(UPGRADE if path == "/ws" else {}), **(headers or {})}
    async with aiohttp.ClientSession() as s, s.get(f"{running.url}{path}?{query}", headers=sent) as r:
        return r.status, await r.json(content_type=None)


async def refusals(running: Running, query: str = "", headers: dict[str, str] | None = None
                   ) -> dict[str, tuple[int, Any]]:
    return {path: await attempt(running, path, query, headers) for path in TRANSPORTS}


def error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


async def test_draining_is_503_on_every_transport(make_server: ServerFactory) -> None:
    running = await make_server()
    await running.node.drain()
    got = await refusals(running, "user=late")
    body = error("draining", "node is shutting down; connect to another node")
    assert got == {"/ws": (503, body), "/sse": (503, body)}


async def browser_refusal(running: Running, query: str, origin: str = "https://app.example.com",
                          **headers: str) -> tuple[int | None, str]:
    """(close code, reason) a browser sees: it sends an Origin, is upgraded, then closed."""
    async with aiohttp.ClientSession() as s, s.ws_connect(f"{running.ws_url}?{query}", origin=origin,
                                                         headers=headers) as ws:
        msg = await ws.receive(timeout=timeout(5))
        assert msg.type is aiohttp.WSMsgType.CLOSE, msg
        return ws.close_code, msg.extra


async def test_bad_origin_is_403_or_4504_for_a_browser(make_server: ServerFactory,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    running = await make_server(allowed_origins="https://app.example.com")
    status, body = await attempt(running, "/sse", "user=alice", {"Origin": "https://evil.example.com"})
    assert status == 403 and body["error"]["code"] == "forbidden"
    # a WebSocket handshake with an Origin is a browser's: told after the upgrade, with a reason
    with caplog.at_level(logging.INFO, logger="pushgate.web.handshake"):
        code, reason = await browser_refusal(running, "user=alice", "https://evil.example.com")
    assert code == CloseCode.FORBIDDEN and reason == "forbidden: " + body["error"]["message"]
    assert "refused websocket handshake from 127.0.0.1 (user alice): 403 forbidden: " in caplog.text
    # no Origin at all: refused on /ws (browsers always send one there), same-origin on /sse
    # (browsers send none on a same-origin GET): tests/test_sse.py covers the SSE side
    status, body = await attempt(running, "/ws", "user=alice")
    assert status == 403 and body["error"]["code"] == "forbidden"


async def test_missing_and_expired_tokens_are_401_on_every_transport(make_server: ServerFactory) -> None:
    running = await make_server(jwt_secret=SECRET)
    expired = jwt.encode({"sub": "alice", "exp": int(time.time()) - 60}, SECRET, algorithm="HS256")
    for query in ("", "user=alice", f"token={expired}"):
        got = await refusals(running, query)
        assert got["/ws"] == got["/sse"], query
        status, body = got["/ws"]
        assert status == 401 and body["error"]["code"] == "unauthorized", query
    assert (await attempt(running, "/sse", f"token={expired}"))[1] == error("unauthorized", "token expired")
    # the Authorization header is read the same way by both
    got = await refusals(running, headers={"Authorization": f"Bearer {expired}"})
    assert got["/ws"] == got["/sse"] == (401, error("unauthorized", "token expired"))


async def test_invalid_dev_mode_user_is_400_bad_request_on_every_transport(server: Running) -> None:
    got = await refusals(server, "user=not%20valid")
    assert got["/ws"] == got["/sse"] == (400, error("bad_request", "invalid user id"))


async def test_hook_reject_is_403_on_every_transport(make_server: ServerFactory) -> None:
    app = pushgate.App()

    @app.on_connect
    def gate(client: pushgate.ClientInfo) -> None:
        if client.user == "mallory":
            raise pushgate.Reject("mallory is banned")
        if client.user == "eve":
            raise pushgate.Reject("not today", code="banned")

    running = await make_server(app=app)
    got = await refusals(running, "user=mallory")
    assert got["/ws"] == got["/sse"] == (403, error("rejected", "mallory is banned"))
    # an application's own code: still a refusal, still 403 (it was 400 on /sse before)
    got = await refusals(running, "user=eve")
    assert got["/ws"] == got["/sse"] == (403, error("banned", "not today"))
    assert (await running.api("GET", "/api/online"))[1]["connections"] == 0


async def test_hook_crash_is_500_without_the_exception_text(make_server: ServerFactory,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    app = pushgate.App()

    @app.on_connect
    async def flaky(client: pushgate.ClientInfo) -> None:
        raise RuntimeError("database password is hunter2")

    running = await make_server(app=app)
    with caplog.at_level(logging.ERROR, logger="pushgate.web.handshake"):
        got = await refusals(running, "user=bob")
    assert got["/ws"] == got["/sse"] == (500, error("internal", "internal error"))
    # the server logs it with the traceback: a server bug, not client input
    logged = [r for r in caplog.records if r.name == "pushgate.web.handshake"]
    assert len(logged) == 2 and all(r.exc_info and "hunter2" in str(r.exc_info[1]) for r in logged)


async def test_full_node_websocket_closes_4003_sse_answers_503(make_server: ServerFactory) -> None:
    app = pushgate.App()
    hooked: list[str | None] = []
    app.on_connect(lambda client: hooked.append(client.user))
    running = await make_server(app=app, max_connections=1)
    await running.client("user=first")
    # a browser cannot read the status of a refused upgrade, so /ws upgrades and closes with 4003
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{running.ws_url}?user=late")
        msg = await asyncio.wait_for(ws.receive(), timeout(5))
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == CloseCode.CONNECTION_LIMIT
        assert msg.extra == "node is at its connection limit"
        await ws.close()
    # an SSE client can: a plain 503
    assert await attempt(running, "/sse", "user=late") == (
        503, error("connection_limit", "node is at its connection limit"))
    assert hooked == ["first"]  # capacity is checked before the connect hooks run


async def test_accepted_connections_tell_hooks_their_transport(make_server: ServerFactory) -> None:
    app = pushgate.App()
    seen: list[tuple[str | None, str]] = []
    app.on_connect(lambda client: seen.append((client.user, client.transport)))
    running = await make_server(app=app)
    ws = await running.client("user=alice")
    assert ws.welcome["user"] == "alice"
    async with aiohttp.ClientSession() as s, s.get(f"{running.url}/sse?user=bob") as r:
        assert r.status == 200 and r.content_type == "text/event-stream"
        assert b'"type":"welcome"' in await asyncio.wait_for(r.content.readline(), timeout(5))
    assert seen == [("alice", "websocket"), ("bob", "sse")]


async def test_browsers_learn_every_refusal_from_its_close_code_and_reason(make_server: ServerFactory) -> None:
    """The codes a browser gets (4502-4504: do not reconnect; 4003: back off) and the reasons."""
    running = await make_server(jwt_secret=SECRET, max_connections_per_user=1)
    expired = jwt.encode({"sub": "alice", "exp": int(time.time()) - 60}, SECRET, algorithm="HS256")
    assert await browser_refusal(running, f"token={expired}") == (CloseCode.UNAUTHORIZED,
                                                                   "unauthorized: token expired")
    code, reason = await browser_refusal(running, "")
    assert code == CloseCode.UNAUTHORIZED and reason.startswith("unauthorized: ")
    good = jwt.encode({"sub": "bob"}, SECRET, algorithm="HS256")
    async with aiohttp.ClientSession() as s, s.ws_connect(f"{running.ws_url}?token={good}") as first:
        assert (await first.receive_json(timeout=timeout(5)))["type"] == "welcome"
        code, reason = await browser_refusal(running, f"token={good}")  # bob's second: over the limit
        assert code == CloseCode.CONNECTION_LIMIT and reason.startswith("too_many_connections: ")
    dev = await make_server()
    code, reason = await browser_refusal(dev, "user=not%20valid")
    assert code == CloseCode.BAD_REQUEST and reason.startswith("bad_request: ")
    # a draining node is never upgraded: 503 lets a proxy try the next node
    await dev.node.drain()
    status, body = await attempt(dev, "/ws", "user=late", {"Origin": "https://app.example.com"})
    assert status == 503 and body["error"]["code"] == "draining"


def test_refusal_log_lines_are_bounded_per_second(caplog: pytest.LogCaptureFixture) -> None:
    from pushgate.web.handshake import Refusal, RefusalLog

    limited = RefusalLog(per_second=3)
    refusal = Refusal(400, "bad_request", "invalid user id")
    with caplog.at_level(logging.INFO, logger="pushgate.web.handshake"):
        for _ in range(6):
            limited.refused("sse", refusal, "10.0.0.1", None)
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 3  # within one second: the rest are counted, not written
        limited._window -= 1.0  # the next second
        limited.refused("sse", refusal, "10.0.0.1", "bob")
    assert caplog.records[-1].getMessage() == (
        "refused sse handshake from 10.0.0.1 (user bob): 400 bad_request: invalid user id"
        " (3 more refusals not logged)")
