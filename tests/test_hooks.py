"""Embedding hooks (``pushgate.App``): connect, subscribe, publish and disconnect hooks, rpc
handlers, server-side pushes, and loading an app with ``pushgate serve --app``."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import pushgate
from pushgate import ClientInfo

from .conftest import Process, Running, ServerFactory
from .helpers import WsClient, direct_body, timeout, wait_for

ROOT = Path(__file__).resolve().parents[1]


async def upgrade_request(running: Running, query: str) -> tuple[int, Any]:
    """Status and JSON body of a WebSocket upgrade the server refuses before switching protocols."""
    headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode()}
    async with aiohttp.ClientSession() as s, s.get(f"{running.url}/ws?{query}", headers=headers) as r:
        return r.status, await r.json(content_type=None)


async def raw_websocket(running: Running, query: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A bare TCP connection that completes the handshake, so a test can drop it without a close frame."""
    host, port = running.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    key = base64.b64encode(b"fedcba9876543210").decode()
    writer.write(
        f"GET /ws?{query} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout(5))
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


# -- on_connect ----------------------------------------------------------------------------------

async def test_on_connect_reject_is_403_with_the_reason(make_server: ServerFactory) -> None:
    app = pushgate.App()
    seen: list[ClientInfo] = []

    @app.on_connect
    async def gate(client: ClientInfo) -> None:
        seen.append(client)
        if client.user == "mallory":
            raise pushgate.Reject("mallory is banned")

    running = await make_server(app=app)
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await running.client("user=mallory")
    assert info.value.status == 403
    status, body = await upgrade_request(running, "user=mallory")
    assert status == 403
    assert body == {"error": {"code": "rejected", "message": "mallory is banned"}}

    alice = await running.client("user=alice")
    assert alice.welcome["user"] == "alice"
    info_alice = seen[-1]
    assert (info_alice.user, info_alice.transport, info_alice.client) == ("alice", "websocket",
                                                                          alice.welcome["client"])
    assert info_alice.node == alice.welcome["node"]
    # a refused connection never registered: nobody is online but alice
    assert (await running.api("GET", "/api/online"))[1]["connections"] == 1


async def test_on_connect_accepts_with_a_sync_hook(make_server: ServerFactory) -> None:
    app = pushgate.App()
    calls: list[str | None] = []
    app.on_connect(lambda client: calls.append(client.user))
    running = await make_server(app=app)
    await running.client("user=bob")
    await running.client()
    assert calls == ["bob", None]


async def test_on_connect_crash_is_500_and_the_server_keeps_serving(make_server: ServerFactory) -> None:
    app = pushgate.App()

    @app.on_connect
    def flaky(client: ClientInfo) -> None:
        if client.user == "boom":
            raise RuntimeError("hook bug")

    running = await make_server(app=app)
    status, body = await upgrade_request(running, "user=boom")
    assert status == 500 and body["error"]["code"] == "internal"
    assert (await running.client("user=fine")).welcome["user"] == "fine"


# -- on_subscribe --------------------------------------------------------------------------------

async def test_on_subscribe_reject_is_an_error_reply(make_server: ServerFactory) -> None:
    app = pushgate.App()
    asked: list[tuple[str | None, str]] = []

    @app.on_subscribe
    async def only_own_room(client: ClientInfo, channel: str) -> None:
        asked.append((client.user, channel))
        if channel.startswith("room:") and channel != f"room:{client.user}":
            raise pushgate.Reject(f"{channel} is not yours")

    running = await make_server(app=app)
    alice = await running.client("user=alice")
    reply = await alice.request({"type": "subscribe", "channel": "room:bob"})
    assert reply["type"] == "error" and reply["code"] == "rejected"
    assert reply["message"] == "room:bob is not yours"
    await alice.ok({"type": "subscribe", "channel": "room:alice"})
    assert asked == [("alice", "room:bob"), ("alice", "room:alice")]

    # the refused subscription really is absent: a publication there does not reach alice
    await running.api("POST", "/api/publish", {"channel": "room:bob", "data": "secret"})
    await running.api("POST", "/api/publish", {"channel": "room:alice", "data": "mine"})
    msg = await alice.next("message")
    assert (msg["channel"], msg["data"]) == ("room:alice", "mine")
    await alice.nothing_more()
    # and she may try again later without `already_subscribed`
    assert (await alice.request({"type": "subscribe", "channel": "room:bob"}))["code"] == "rejected"


# -- on_publish ----------------------------------------------------------------------------------

async def test_on_publish_transforms_sync_and_async(make_server: ServerFactory) -> None:
    app = pushgate.App()

    @app.on_publish
    def stamp(client: ClientInfo, channel: str, data: Any) -> Any:
        return {"text": data, "by": client.user}

    @app.on_publish
    async def add_channel(client: ClientInfo, channel: str, data: Any) -> Any:
        await asyncio.sleep(0)
        return {**data, "channel": channel}

    @app.on_publish
    def observe_only(client: ClientInfo, channel: str, data: Any) -> None:
        return None  # None keeps the data as it is

    running = await make_server(app=app)
    sub = await running.client("user=sub")
    await sub.ok({"type": "subscribe", "channel": "chat:1"})
    alice = await running.client("user=alice")
    await alice.ok({"type": "publish", "channel": "chat:1", "data": "hello"})

    msg = await sub.next("message")
    assert msg["data"] == {"text": "hello", "by": "alice", "channel": "chat:1"}
    # history holds the transformed data too
    _, hist = await running.api("GET", "/api/history/chat:1")
    assert [p["data"] for p in hist["publications"]] == [msg["data"]]


async def test_on_publish_does_not_apply_to_server_side_publishes(make_server: ServerFactory) -> None:
    app = pushgate.App()
    app.on_publish(lambda client, channel, data: {"wrapped": data})
    running = await make_server(app=app)
    sub = await running.client("user=sub")
    await sub.ok({"type": "subscribe", "channel": "news"})
    await running.api("POST", "/api/publish", {"channel": "news", "data": "raw"})
    assert (await sub.next("message"))["data"] == "raw"


async def test_on_publish_reject(make_server: ServerFactory) -> None:
    app = pushgate.App()

    @app.on_publish
    async def no_shouting(client: ClientInfo, channel: str, data: Any) -> Any:
        if isinstance(data, str) and data.isupper():
            raise pushgate.Reject("no shouting")
        return None

    running = await make_server(app=app)
    sub = await running.client("user=sub")
    await sub.ok({"type": "subscribe", "channel": "chat"})
    alice = await running.client("user=alice")
    reply = await alice.request({"type": "publish", "channel": "chat", "data": "HELLO"})
    assert reply["type"] == "error" and reply["code"] == "rejected" and reply["message"] == "no shouting"
    ok = await alice.ok({"type": "publish", "channel": "chat", "data": "hello"})
    assert ok["offset"] == 1  # the rejected publish took no offset
    msg = await sub.next("message")
    assert (msg["data"], msg["offset"]) == ("hello", 1)


async def test_on_publish_crash_is_internal_and_publishes_nothing(make_server: ServerFactory) -> None:
    app = pushgate.App()

    @app.on_publish
    def broken(client: ClientInfo, channel: str, data: Any) -> Any:
        raise KeyError("bug")

    running = await make_server(app=app)
    alice = await running.client("user=alice")
    reply = await alice.request({"type": "publish", "channel": "chat", "data": 1})
    assert reply["code"] == "internal"
    _, hist = await running.api("GET", "/api/history/chat")
    assert hist["publications"] == []
    assert (await alice.request({"type": "ping"}))["type"] == "pong"


# -- on_disconnect -------------------------------------------------------------------------------

def disconnect_recorder() -> tuple[pushgate.App, list[ClientInfo]]:
    app = pushgate.App()
    gone: list[ClientInfo] = []

    @app.on_disconnect
    async def record(client: ClientInfo) -> None:
        gone.append(client)

    return app, gone


async def test_on_disconnect_called_on_client_close(make_server: ServerFactory) -> None:
    app, gone = disconnect_recorder()
    running = await make_server(app=app)
    alice = await running.client("user=alice")
    await alice.ok({"type": "subscribe", "channel": "news"})
    assert gone == []
    await alice.close()
    await wait_for(lambda: len(gone) == 1, what="on_disconnect after close")
    assert (gone[0].user, gone[0].client) == ("alice", alice.welcome["client"])
    # the hook runs after cleanup: presence already forgot the connection
    assert (await running.api("GET", "/api/presence/news"))[1]["connections"] == 0


async def test_on_disconnect_called_on_abrupt_disconnect(make_server: ServerFactory) -> None:
    app, gone = disconnect_recorder()
    running = await make_server(app=app)
    _, writer = await raw_websocket(running, "user=bob")
    await wait_for(lambda: len(running.node.hub.connections) == 1, what="registration")

    writer.transport.abort()  # no close frame, no FIN handshake: the peer just vanishes

    await wait_for(lambda: len(gone) == 1, what="on_disconnect after abort")
    assert gone[0].user == "bob"
    assert (await running.api("GET", "/api/online"))[1]["connections"] == 0


async def test_on_disconnect_called_when_the_server_kicks(make_server: ServerFactory) -> None:
    app, gone = disconnect_recorder()
    running = await make_server(app=app)
    carol = await running.client("user=carol")
    await running.api("POST", "/api/disconnect", {"user": "carol"})
    assert await carol.wait_closed() == pushgate.CloseCode.DISCONNECTED
    await wait_for(lambda: [c.user for c in gone] == ["carol"], what="on_disconnect after kick")


async def test_failing_disconnect_hook_does_not_break_cleanup(make_server: ServerFactory) -> None:
    app = pushgate.App()
    app.on_disconnect(lambda client: 1 / 0)
    running = await make_server(app=app)
    alice = await running.client("user=alice")
    await alice.close()
    await wait_for(lambda: not running.node.hub.connections, what="cleanup")
    assert (await running.client("user=alice")).welcome["user"] == "alice"


# -- rpc -----------------------------------------------------------------------------------------

def rpc_app() -> pushgate.App:
    app = pushgate.App()

    @app.rpc("echo")
    async def echo(client: ClientInfo, data: Any) -> Any:
        return data

    @app.rpc("whoami")
    def whoami(client: ClientInfo, data: Any) -> Any:
        return {"user": client.user, "client": client.client}

    @app.rpc("crash")
    def crash(client: ClientInfo, data: Any) -> Any:
        raise ValueError("handler bug")

    @app.rpc("refuse")
    async def refuse(client: ClientInfo, data: Any) -> Any:
        raise pushgate.Reject("not now")

    @app.rpc("announce")
    async def announce(client: ClientInfo, data: Any) -> Any:
        position = await app.publish("announcements", {"from": client.user, "text": data})
        await app.send_to_users(["bob"], {"note": data}, sender=client.user)
        await app.broadcast({"everyone": data})
        return {"offset": position.offset}

    return app


@pytest.mark.parametrize("data", [{"x": [1, 2.5, None]}, "text", 0, None, [True, False]])
async def test_rpc_returns_the_handler_result(make_server: ServerFactory, data: Any) -> None:
    running = await make_server(app=rpc_app())
    alice = await running.client("user=alice")
    reply = await alice.ok({"type": "rpc", "method": "echo", "data": data})
    assert reply["data"] == data


async def test_rpc_without_data_gets_null_and_sees_the_client(make_server: ServerFactory) -> None:
    running = await make_server(app=rpc_app())
    alice = await running.client("user=alice")
    reply = await alice.ok({"type": "rpc", "method": "whoami"})
    assert reply["data"] == {"user": "alice", "client": alice.welcome["client"]}


async def test_rpc_unknown_method(make_server: ServerFactory) -> None:
    running = await make_server(app=rpc_app())
    alice = await running.client("user=alice")
    reply = await alice.request({"type": "rpc", "method": "nope", "data": 1})
    assert reply["type"] == "error" and reply["code"] == "unknown_method"


async def test_rpc_handler_crash_is_internal_and_connection_survives(make_server: ServerFactory) -> None:
    running = await make_server(app=rpc_app())
    alice = await running.client("user=alice")
    reply = await alice.request({"type": "rpc", "method": "crash", "data": 1})
    assert reply["type"] == "error" and reply["code"] == "internal"
    assert "handler bug" not in reply["message"]  # internals are logged, not sent to clients
    assert (await alice.ok({"type": "rpc", "method": "echo", "data": 2}))["data"] == 2
    await alice.ok({"type": "subscribe", "channel": "news"})


async def test_rpc_handler_reject(make_server: ServerFactory) -> None:
    running = await make_server(app=rpc_app())
    alice = await running.client("user=alice")
    reply = await alice.request({"type": "rpc", "method": "refuse"})
    assert (reply["code"], reply["message"]) == ("rejected", "not now")


async def test_app_pushes_from_an_rpc_handler_reach_clients(make_server: ServerFactory) -> None:
    running = await make_server(app=rpc_app())
    sub = await running.client("user=sub")
    await sub.ok({"type": "subscribe", "channel": "announcements"})
    bob = await running.client("user=bob")
    alice = await running.client("user=alice")

    reply = await alice.ok({"type": "rpc", "method": "announce", "data": "hi"})

    assert reply["data"] == {"offset": 1}
    msg = await sub.next("message")
    assert (msg["channel"], msg["data"], msg["offset"]) == ("announcements", {"from": "alice", "text": "hi"}, 1)
    direct = await bob.next("direct")
    assert direct_body(direct) == {"type": "direct", "from": "alice", "data": {"note": "hi"}}
    for client in (sub, bob, alice):
        assert (await client.next("broadcast"))["data"] == {"everyone": "hi"}


def test_app_publish_before_the_node_runs_is_a_pushgate_error() -> None:
    app = pushgate.App()
    with pytest.raises(pushgate.PushgateError):
        asyncio.run(app.publish("news", 1))


# -- pushgate serve --app ------------------------------------------------------------------------

async def test_serve_loads_the_app(spawn_node: Callable[..., Process]) -> None:
    proc = spawn_node("--app", "tests.sample_app:app", env={"PYTHONPATH": str(ROOT)})
    sub = await WsClient.connect(proc.ws_url + "?user=sub")
    alice = await WsClient.connect(proc.ws_url + "?user=alice")
    try:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await WsClient.connect(proc.ws_url + "?user=mallory")
        assert info.value.status == 403

        reply = await alice.ok({"type": "rpc", "method": "echo", "data": [1]})
        assert reply["data"] == {"echo": [1], "user": "alice", "transport": "websocket"}

        await sub.ok({"type": "subscribe", "channel": "announcements"})
        await sub.ok({"type": "subscribe", "channel": "chat"})
        assert (await alice.ok({"type": "rpc", "method": "announce", "data": "up"}))["data"] == {"offset": 1}
        assert (await sub.next("message"))["data"] == "up"
        await alice.ok({"type": "publish", "channel": "chat", "data": "hey"})
        assert (await sub.next("message"))["data"] == {"text": "hey", "by": "alice"}
    finally:
        await sub.close()
        await alice.close()


async def test_serve_accepts_an_app_factory(spawn_node: Callable[..., Process]) -> None:
    proc = spawn_node("--app", "tests.sample_app:factory", env={"PYTHONPATH": str(ROOT)})
    alice = await WsClient.connect(proc.ws_url + "?user=alice")
    try:
        assert (await alice.ok({"type": "rpc", "method": "echo", "data": 1}))["data"]["echo"] == 1
    finally:
        await alice.close()


@pytest.mark.parametrize(
    "spec", ["nosuch.module:app", "tests.sample_app:missing", "tests.sample_app:not_an_app", "tests.sample_app"]
)
def test_serve_with_a_bad_app_exits_2(spec: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pushgate", "serve", "--port", "0", "--app", spec],
        capture_output=True, text=True, timeout=timeout(30), cwd=ROOT,
    )
    assert done.returncode == 2, done.stderr
    assert "app" in done.stderr and "Traceback" not in done.stderr
    assert "config app:" in done.stderr


async def test_unsubscribe_hooks_fire_for_json_clients(make_server: ServerFactory) -> None:
    app = pushgate.App()
    seen: list[tuple[str | None, str]] = []
    app.on_unsubscribe(lambda client, channel: seen.append((client.user, channel)))
    server = await make_server(app=app)
    c = await server.client("user=ann")
    await c.ok({"type": "subscribe", "channel": "news"})
    await c.ok({"type": "unsubscribe", "channel": "news"})
    await wait_for(lambda: seen == [("ann", "news")], what="unsubscribe hook")
