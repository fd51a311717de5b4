"""Real STOMP clients against pushgate: stomp.py over WebSocket, and @stomp/stompjs 7 under Node."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from pushgate.app import App, ClientInfo

from ..conftest import Running, ServerFactory
from ..helpers import timeout, wait_for

NODE_CACHE = Path(os.environ.get("PUSHGATE_NODE_CACHE", Path.home() / ".cache" / "pushgate-tests" / "stompjs"))
PEER = Path(__file__).with_name("stompjs_peer.js")


def stompjs_modules() -> Path:
    """node_modules with @stomp/stompjs 7 and ws 8, installed from the npm registry on first use;
    skips the test (with why) only where node or npm is missing."""
    if not shutil.which("node"):
        pytest.skip("node is not installed: the stompjs interop test needs it")
    modules = NODE_CACHE / "node_modules"
    if not (modules / "@stomp" / "stompjs").is_dir() or not (modules / "ws").is_dir():
        if not shutil.which("npm"):
            pytest.skip("npm is not installed: cannot install @stomp/stompjs")
        NODE_CACHE.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["npm", "install", "--prefix", str(NODE_CACHE), "--no-audit", "--no-fund",
                            "@stomp/stompjs@7", "ws@8"], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"npm install failed: {r.stderr[-500:]}"
    return modules


async def test_stompjs_7(make_server: ServerFactory) -> None:
    modules = stompjs_modules()
    app = App()

    @app.message("/echo")  # Spring's default: the return value goes to /topic/echo
    def echo(client: ClientInfo, data: Any, headers: dict[str, str]) -> Any:
        return {"echo": data, "user": client.user}

    server = await make_server(app=app)
    proc = await asyncio.create_subprocess_exec(
        "node", str(PEER), server.ws_url, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "NODE_PATH": str(modules)},
    )
    events: list[dict[str, Any]] = []
    try:
        assert proc.stdout is not None
        while True:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout(20))
            assert line, f"stompjs peer ended early: {events}"
            event = json.loads(line)
            events.append(event)
            if event["event"] == "receipt":
                status, _ = await server.api("POST", "/api/send",
                                             {"users": ["jsuser"], "data": {"to": "js"}, "destination": "/queue/inbox"})
                assert status == 200
            if event["event"] in ("done", "error", "timeout"):
                break
        assert await asyncio.wait_for(proc.wait(), timeout(10)) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    kinds = [e["event"] for e in events]
    assert kinds[0] == "connected" and kinds[-1] == "done", events
    assert events[0]["headers"]["user-name"] == "jsuser" and events[0]["headers"]["version"] == "1.2"
    got = {e["headers"]["destination"]: json.loads(e["body"]) for e in events if e["event"] == "message"}
    assert got["/topic/js"]["from"] == "js"
    assert got["/topic/echo"] == {"echo": {"n": 7}, "user": "jsuser"}
    assert got["/user/queue/inbox"] == {"to": "js"}
    inbox = next(e for e in events if e["event"] == "message" and e["headers"]["destination"] == "/user/queue/inbox")
    assert inbox["headers"]["ack"]  # client-individual mode


async def test_stomp_py_over_websocket_without_subprotocol(server: Running) -> None:
    """stomp.py's WSStompConnection: /stomp, no subprotocol, the STOMP command, heart-beats; its
    blocking calls run in threads while the server runs in this test's loop."""
    import stomp  # type: ignore[import-untyped]

    port = int(server.url.rsplit(":", 1)[1])
    received: list[tuple[dict[str, str], str]] = []
    got = threading.Event()

    class Listener(stomp.ConnectionListener):  # type: ignore[misc]
        def on_message(self, frame: Any) -> None:
            received.append((frame.headers, frame.body))
            if len(received) == 2:
                got.set()

    conn = stomp.WSStompConnection([("127.0.0.1", port)], ws_path="/stomp", heartbeats=(500, 500))
    conn.set_listener("l", Listener())
    await asyncio.to_thread(conn.connect, "pyuser", "x", wait=True)
    try:
        await asyncio.to_thread(conn.subscribe, "/topic/py", "s1", "auto")
        await wait_for(lambda: "py" in server.node.hub.channels, what="subscribed")
        await asyncio.to_thread(conn.send, "/topic/py", '{"from":"stomp.py"}', "application/json")
        await wait_for(lambda: len(received) == 1, what="own message")
        await server.node.publish_json("py", {"from": "http"})
        assert await asyncio.to_thread(got.wait, timeout(10))
        await asyncio.sleep(timeout(1.2))  # heart-beats keep it up past 2 x 500 ms of no frames
        assert conn.is_connected()
    finally:
        await asyncio.to_thread(conn.disconnect)
    assert [json.loads(body) for _, body in received] == [{"from": "stomp.py"}, {"from": "http"}]
    assert [h["offset"] for h, _ in received] == ["1", "2"]
    assert received[0][0]["destination"] == "/topic/py" and received[0][0]["subscription"] == "s1"
    await wait_for(lambda: not server.node.hub.connections, what="disconnected")
