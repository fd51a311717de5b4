"""The server's own ``/ws`` (pushgate.web.lean): which requests it answers and which it hands to
aiohttp, what an idle socket holds, pipelined frames, protocol errors, the close handshake,
heartbeats from the node-wide sweep, and the same behaviour under uvloop in a real process.

Real servers on free ports; raw sockets where the test needs to see frames as bytes."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

import pushgate
from pushgate.protocol import wsframe
from pushgate.web.lean import LeanWebSocket, accept_key, parse_head, plain_upgrade
from pushgate.web.request_view import RequestView
from pushgate.web.stomp_connection import StompConnection

from ..conftest import Process, Running, ServerFactory
from ..helpers import WsClient, timeout, wait_for
from ..protocol.test_wsframe import client_frame


class RawWs:
    """A WebSocket client on a bare socket: we write the bytes, we read the server's frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, url: str, path: str = "/ws?user=raw", extra: bytes = b"",
                   headers: str = "") -> tuple[RawWs, bytes]:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n".encode() + extra)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout(5))
        return cls(reader, writer), head

    async def frame(self, seconds: float = 5.0) -> tuple[int, bytes]:
        """(opcode, payload) of the next server frame (server frames are unmasked)."""
        b0, b1 = await asyncio.wait_for(self.reader.readexactly(2), timeout(seconds))
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return b0 & 0x0F, await self.reader.readexactly(n)

    async def json(self) -> dict[str, Any]:
        op, payload = await self.frame()
        assert op == wsframe.OP_TEXT, (op, payload)
        result: dict[str, Any] = json.loads(payload)
        return result

    async def close_code(self, seconds: float = 5.0) -> int:
        """Skip to the server's close frame; its code."""
        while True:
            op, payload = await self.frame(seconds)
            if op == wsframe.OP_CLOSE:
                return int(struct.unpack("!H", payload[:2])[0])

    async def eof(self, seconds: float = 5.0) -> None:
        while await asyncio.wait_for(self.reader.read(65536), timeout(seconds)):
            pass

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def close(self) -> None:
        self.writer.close()


def lean_conns(running: Running) -> list[Any]:
    return [c for c in running.node.hub.connections.values() if isinstance(c, LeanWebSocket)]


# -- the front: what it answers itself ---------------------------------------------------------
def test_parse_head_and_plain_upgrade() -> None:
    head = (b"GET /ws?user=a&user_since= HTTP/1.1\r\nHost: h\r\nUpgrade: WebSocket\r\n"
            b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat")
    parsed = parse_head(head)
    assert parsed is not None
    method, target, version, headers = parsed
    assert (method, target, version) == ("GET", "/ws?user=a&user_since=", "HTTP/1.1")
    view = RequestView.build(method, "/ws", [("user", "a")], headers, "127.0.0.1")
    # RFC 6455 §1.3's example key and answer
    assert plain_upgrade(view, version) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" == accept_key("dGhlIHNhbXBsZSBub25jZQ==")
    assert plain_upgrade(view, "HTTP/1.0") is None
    for name, value in (("Sec-WebSocket-Protocol", "v12.stomp"), ("Content-Length", "5"),
                        ("Transfer-Encoding", "chunked"), ("Sec-WebSocket-Key", "second")):
        odd = RequestView.build(method, "/ws", [], [*headers, (name, value)], None)
        assert plain_upgrade(odd, version) is None, name
    no_version = RequestView.build(method, "/ws", [], [h for h in headers if h[0] != "Sec-WebSocket-Version"], None)
    assert plain_upgrade(no_version, version) is None
    assert accept_key("c2hvcnQ=") is None and accept_key("not base64!") is None
    # folded or nameless lines, a broken request line: aiohttp's to answer
    assert parse_head(b"GET /ws HTTP/1.1\r\n folded: x") is None
    assert parse_head(b"GET /ws HTTP/1.1\r\nno colon") is None
    assert parse_head(b"GET /ws\r\nHost: x") is None
    assert parse_head(b"GET /ws HTTP/1.1\r\nBad Name: x") is None


async def test_ws_is_lean_and_everything_else_is_aiohttp_on_the_same_port(server: Running) -> None:
    client = await server.client("user=alice")
    assert [c.user for c in lean_conns(server)] == ["alice"]
    assert client.welcome["user"] == "alice"
    # STOMP offered on /ws: aiohttp's WebSocket and the STOMP session
    async with aiohttp.ClientSession() as s:
        ws = await s.ws_connect(server.ws_url + "?user=bob", protocols=("v12.stomp",))
        assert ws.protocol == "v12.stomp"
        await ws.send_str("CONNECT\naccept-version:1.2\nhost:x\n\n\x00")
        msg = await asyncio.wait_for(ws.receive(), timeout(5))
        assert msg.data.startswith("CONNECTED")
        assert any(isinstance(c, StompConnection) and c.user == "bob" for c in server.node.hub.connections.values())
        await ws.close()
        # an API call and the demo page (aiohttp routes) on the same listener
        async with s.get(server.url + "/healthz") as r:
            assert r.status == 200
    # a keep-alive HTTP request, then an upgrade on the same socket: aiohttp serves both
    host, port = server.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout(5))
    assert first.startswith(b"HTTP/1.1 200")
    length = next(int(v) for k, _, v in (ln.partition(b":") for ln in first.split(b"\r\n"))
                  if k.lower() == b"content-length")
    await reader.readexactly(length)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(f"GET /ws?user=carol HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    second = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout(5))
    assert second.startswith(b"HTTP/1.1 101") and f"{accept_key(key)}" in second.decode()
    await wait_for(lambda: any(c.user == "carol" for c in server.node.hub.connections.values()), what="carol")
    assert [c.user for c in lean_conns(server)] == ["alice"]  # carol is aiohttp's
    writer.close()


async def test_a_plain_get_of_ws_is_aiohttp_s_answer(server: Running) -> None:
    async with aiohttp.ClientSession() as s, s.get(server.ws_url.replace("ws://", "http://") + "?user=x") as r:
        assert r.status in (400, 426)  # not an upgrade: aiohttp's WebSocketResponse refuses it
    assert lean_conns(server) == []


async def test_an_idle_socket_holds_no_task_no_buffer_no_session(server: Running) -> None:
    client = await server.client("user=idle")
    (conn,) = lean_conns(server)
    assert conn.session is None and conn._worker is None and conn._inbox is None and conn._pending is None
    await client.ok({"type": "subscribe", "channel": "news"})
    await wait_for(lambda: conn._worker is None, what="worker gone")
    assert conn.session is not None  # made by the first message
    assert conn._inbox is None and conn._pending is None and conn._parser is not None
    assert conn._parser._buf is None


async def test_a_token_with_exp_gets_its_session_and_deadline_at_once(make_server: ServerFactory) -> None:
    import jwt

    secret = "lean-test-secret-long-enough-for-hs256"
    running = await make_server(jwt_secret=secret)
    token = jwt.encode({"sub": "ann", "exp": int(time.time()) + 1}, secret, algorithm="HS256")
    raw, head = await RawWs.open(running.url, f"/ws?token={token}")
    assert head.startswith(b"HTTP/1.1 101")
    assert (await raw.json())["type"] == "welcome"
    (conn,) = lean_conns(running)
    assert conn.session is not None
    assert await raw.close_code(seconds=5) == pushgate.CloseCode.TOKEN_EXPIRED
    raw.close()


async def test_frames_pipelined_after_the_head_are_read(server: Running) -> None:
    ping = client_frame(json.dumps({"id": 1, "type": "ping"}).encode())
    raw, head = await RawWs.open(server.url, extra=ping + ping.replace(b"1", b"2", 0))
    assert head.startswith(b"HTTP/1.1 101")
    assert (await raw.json())["type"] == "welcome"
    assert await raw.json() == {"id": 1, "type": "pong"}
    raw.close()


@pytest.mark.parametrize(("frame", "code"), [
    (client_frame(b"\xff\xfe"), 1007),
    (client_frame(b"x", 0x3), 1002),
    (client_frame(b"x", mask=None), 1002),
    (client_frame(b"x", rsv=4), 1002),
    (client_frame(b"x" * 200, wsframe.OP_PING), 1002),
    (client_frame(b"{}", wsframe.OP_BINARY), pushgate.CloseCode.PROTOCOL_VIOLATION),
    (client_frame(struct.pack("!H", 1006), wsframe.OP_CLOSE), 1002),
    (client_frame(struct.pack("!H", 4000) + b"bye", wsframe.OP_CLOSE), 1000),
])
async def test_protocol_errors_and_closes_end_with_their_code_and_unregister(
        make_server: ServerFactory, frame: bytes, code: int) -> None:
    app = pushgate.App()
    gone: list[str | None] = []
    app.on_disconnect(lambda client: gone.append(client.user))
    running = await make_server(app=app)
    raw, _ = await RawWs.open(running.url)
    assert (await raw.json())["type"] == "welcome"
    raw.send(frame)
    assert await raw.close_code() == code
    raw.send(client_frame(struct.pack("!H", 1000), wsframe.OP_CLOSE))
    await raw.eof()
    await wait_for(lambda: gone == ["raw"] and not running.node.hub.connections, what="unregistered")
    raw.close()


async def test_oversize_messages_close_1009_before_the_payload(make_server: ServerFactory) -> None:
    running = await make_server(max_message_size=1000)
    raw, _ = await RawWs.open(running.url)
    await raw.json()
    raw.send(client_frame(b"x" * 1001)[:8])  # the header alone decides
    assert await raw.close_code() == 1009
    raw.close()


async def test_many_queued_messages_pause_reading_and_all_get_answers_in_order(make_server: ServerFactory) -> None:
    running = await make_server(max_message_size=2048, client_command_burst=1000, client_command_rate=1000)
    raw, _ = await RawWs.open(running.url)
    await raw.json()
    frames = b"".join(client_frame(json.dumps({"id": i, "type": "ping", "pad": "p" * 900}).encode())
                      for i in range(1, 41))
    raw.send(frames)
    assert [(await raw.json())["id"] for _ in range(40)] == list(range(1, 41))
    (conn,) = lean_conns(running)
    await wait_for(lambda: conn._worker is None and not conn._paused, what="worker done, reading again")
    raw.close()


async def test_our_close_waits_for_the_peer_then_closes(server: Running) -> None:
    raw, _ = await RawWs.open(server.url)
    await raw.json()
    status, _ = await server.api("POST", "/api/disconnect", {"user": "raw"})
    assert status == 200
    assert await raw.close_code() == pushgate.CloseCode.DISCONNECTED
    assert server.node.hub.connections  # not gone before the close handshake ends
    raw.send(client_frame(struct.pack("!H", 1000), wsframe.OP_CLOSE))
    await raw.eof()
    await wait_for(lambda: not server.node.hub.connections, what="unregistered")
    raw.close()


async def test_the_sweep_pings_silent_peers_and_closes_those_that_never_answer(make_server: ServerFactory) -> None:
    interval = 0.4
    running = await make_server(ping_interval=interval)
    alive = await running.client("user=alive")  # aiohttp's client answers pings by itself
    raw, _ = await RawWs.open(running.url)
    await raw.json()
    started = time.monotonic()
    op, payload = await raw.frame(seconds=3)
    assert (op, payload) == (wsframe.OP_PING, b"")
    pinged = time.monotonic() - started
    assert interval * 0.9 <= pinged <= interval * 1.25 + timeout(0.5), pinged
    await raw.eof(seconds=3)  # no pong: aborted half an interval later
    silent = time.monotonic() - started
    assert interval * 1.4 <= silent <= interval * 1.75 + timeout(0.5), silent
    raw.close()
    await wait_for(lambda: [c.user for c in running.node.hub.connections.values()] == ["alive"], what="raw gone")
    # the answering client lives through several intervals and still works; its pongs alone
    # never made it a frame parser (the idle heartbeat costs no objects)
    await asyncio.sleep(interval * 5)
    assert [c._parser for c in lean_conns(running)] == [None]
    assert (await alive.request({"type": "ping"}))["type"] == "pong"
    assert not alive.closed.is_set()


async def test_a_ping_is_answered_with_its_payload(server: Running) -> None:
    raw, _ = await RawWs.open(server.url)
    await raw.json()
    raw.send(client_frame(b"hello", wsframe.OP_PING))
    assert await raw.frame() == (wsframe.OP_PONG, b"hello")
    raw.close()


async def test_under_uvloop_in_its_own_process(spawn_node: Callable[..., Process]) -> None:
    """`pushgate serve` runs uvloop, whose transports are not asyncio's classes."""
    node = spawn_node("--ping-interval", "0.4")
    client = await WsClient.connect(node.ws_url + "?user=u")
    try:
        await client.ok({"type": "subscribe", "channel": "c"})
        await client.ok({"type": "publish", "channel": "c", "data": 1})
        assert (await client.next("message"))["data"] == 1
        raw, _ = await RawWs.open(node.url)
        await raw.json()
        raw.send(client_frame(b"\xff"))
        assert await raw.close_code() == 1007
        raw.close()
        raw, _ = await RawWs.open(node.url)
        await raw.json()
        assert (await raw.frame(seconds=3))[0] == wsframe.OP_PING
        await raw.eof(seconds=3)
        raw.close()
        async with aiohttp.ClientSession() as s, s.get(node.url + "/sse?user=s") as r:
            assert r.status == 200
            assert b'"welcome"' in await asyncio.wait_for(r.content.readline(), timeout(5))
        await asyncio.sleep(1.2)  # past the ping timeout: the answering client is still here
        assert (await client.request({"type": "ping"}))["type"] == "pong"
    finally:
        await client.close()


async def test_the_test_echo_runs_on_the_lean_codec(make_server: ServerFactory,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUSHGATE_TEST_ECHO", "1")
    running = await make_server()
    raw, head = await RawWs.open(running.url, "/_test/echo")
    assert head.startswith(b"HTTP/1.1 101")
    raw.send(client_frame(b"he", fin=False) + client_frame(b"", wsframe.OP_PING)
             + client_frame(b"llo", wsframe.OP_CONTINUATION))
    assert await raw.frame() == (wsframe.OP_PONG, b"")
    assert await raw.frame() == (wsframe.OP_TEXT, b"hello")
    runner = running.server.runner
    assert runner is not None and runner.server is not None and not runner.server.connections  # not aiohttp's
    raw.send(client_frame(b"\xce", fin=False) + client_frame(b"\xff", wsframe.OP_CONTINUATION))
    assert await raw.close_code() == 1007
    raw.close()


async def test_tls_under_uvloop_serves_lean_ws_and_hands_https_to_aiohttp(
        spawn_node: Callable[..., Process], tmp_path: Any) -> None:
    """uvloop's TLS transport swaps protocols too (the head is read from the TLS stream)."""
    import ssl

    from ..test_tls import _key, _self_signed, _write_key

    key = _key()
    cert, key_file = _self_signed(key, tmp_path / "cert.pem"), _write_key(key, tmp_path / "key.pem")
    node = spawn_node("--tls-cert", str(cert), "--tls-key", str(key_file), wait=False)
    context = ssl.create_default_context(cafile=str(cert))
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + timeout(15)
        while True:
            try:
                async with session.get(f"https://localhost:{node.port}/healthz", ssl=context) as r:
                    assert r.status == 200
                    break
            except aiohttp.ClientConnectorError:
                assert time.monotonic() < deadline, node.log()
                await asyncio.sleep(0.1)
        async with session.ws_connect(f"wss://localhost:{node.port}/ws?user=tls", ssl=context) as ws:
            assert (await ws.receive_json(timeout=timeout(5)))["user"] == "tls"
            await ws.send_json({"type": "ping", "id": 7})
            assert await ws.receive_json(timeout=timeout(5)) == {"type": "pong", "id": 7}


async def test_a_ws_head_that_never_ends_is_cut_at_the_handshake_timeout(make_server: ServerFactory) -> None:
    running = await make_server(handshake_timeout=0.5)
    host, port = running.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    started = time.monotonic()
    writer.write(b"GET /ws?user=slow HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")  # and nothing more
    while await asyncio.wait_for(reader.read(65536), timeout(5)):
        pass
    assert 0.4 <= time.monotonic() - started <= 0.5 + timeout(2)
    writer.close()
    assert not running.node.hub.connections


async def test_a_ws_head_over_the_fast_path_limit_is_aiohttp_s_to_refuse(server: Running) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(f"GET /ws?user=big HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nX-Big: {'b' * 20000}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout(5))
    assert b" 400 " in head.split(b"\r\n")[0]  # aiohttp's limit on one header line, as before the front
    writer.close()
    assert not server.node.hub.connections


async def test_a_closed_connection_is_freed_without_the_garbage_collector(server: Running) -> None:
    """No reference cycle is left behind: a node under connection churn has nothing for a full
    collection to find (pushgate.gcprobe reclaims by the cyclic garbage closed connections leave)."""
    import gc
    import weakref

    clients = [await server.client(f"user=u{i}") for i in range(5)]
    for i, c in enumerate(clients):
        await c.ok({"type": "subscribe", "channel": f"c{i % 2}"})
    refs = [weakref.ref(conn) for conn in lean_conns(server)]
    assert len(refs) == 5
    gc.disable()
    try:
        for c in clients:
            await c.close()
        server.clients.clear()
        await wait_for(lambda: not server.node.hub.connections, what="all unregistered")
        await wait_for(lambda: all(r() is None for r in refs), what="connections freed by reference counting")
    finally:
        gc.enable()


async def test_a_sweep_spreads_its_pings_over_its_period(make_server: ServerFactory) -> None:
    """Sockets that connected together fall silent together: their pings leave in slices, not
    in one callback that would hold every delivery behind thousands of writes."""
    from pushgate.web.lean import SWEEP_SLICE

    interval, n = 1.0, 120
    running = await make_server(ping_interval=interval)
    raws = [(await RawWs.open(running.url, path=f"/ws?user=u{i}"))[0] for i in range(n)]
    for raw in raws:
        await raw.json()
    loop = asyncio.get_running_loop()

    async def pinged(raw: RawWs) -> float:
        assert (await raw.frame(seconds=interval * 3))[0] == wsframe.OP_PING
        return loop.time()

    arrivals = sorted(await asyncio.gather(*(pinged(raw) for raw in raws)))
    slices = int(interval / 4 / 2 / SWEEP_SLICE)  # 6: each slice pings 20 sockets
    burst = max(sum(1 for t in arrivals if a <= t < a + SWEEP_SLICE / 4) for a in arrivals)
    assert burst <= 2 * n // slices, (burst, arrivals[-1] - arrivals[0])  # one slice, or two a late loop ran together
    for raw in raws:
        raw.close()
