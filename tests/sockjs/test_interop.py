"""Real SockJS clients against pushgate: sockjs-client + @stomp/stompjs 7 under Node, one run per
transport (with an xhr transport the client has no WebSocket), and in headless Chromium."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from ..helpers import timeout
from .conftest import SockJsFactory, SockJsRunning

NODE_CACHE = Path(os.environ.get("PUSHGATE_SOCKJS_NODE_CACHE",
                                 Path.home() / ".cache" / "pushgate-tests" / "sockjs"))
PEER = Path(__file__).with_name("sockjs_peer.js")
PACKAGES = ("sockjs-client@1", "@stomp/stompjs@7", "playwright-core@1")


def node_modules() -> Path:
    """node_modules with sockjs-client, @stomp/stompjs 7 and playwright-core, installed from the
    npm registry on first use; skips the test (with why) only where node or npm is missing."""
    if not shutil.which("node"):
        pytest.skip("node is not installed: the sockjs-client interop test needs it")
    modules = NODE_CACHE / "node_modules"
    wanted = ("sockjs-client", "@stomp/stompjs", "playwright-core")
    if not all((modules / name).is_dir() for name in wanted):
        if not shutil.which("npm"):
            pytest.skip("npm is not installed: cannot install sockjs-client and @stomp/stompjs")
        NODE_CACHE.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["npm", "install", "--prefix", str(NODE_CACHE), "--no-audit", "--no-fund", *PACKAGES],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"npm install failed: {r.stderr[-500:]}"
    return modules


async def run_peer(running: SockJsRunning, args: list[str], modules: Path, on_event: Any,
                   seconds: float = 30) -> list[dict[str, Any]]:
    """Run a Node script that prints JSON events, one per line, until done/error/timeout."""
    proc = await asyncio.create_subprocess_exec(
        "node", *args, stdout=asyncio.subprocess.PIPE, env={**os.environ, "NODE_PATH": str(modules)})
    events: list[dict[str, Any]] = []
    try:
        assert proc.stdout is not None
        while True:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout(seconds))
            assert line, f"peer ended early: {events}"
            event = json.loads(line)
            events.append(event)
            await on_event(event)
            if event["event"] in ("done", "error", "timeout"):
                break
        assert await asyncio.wait_for(proc.wait(), timeout(10)) == 0, events
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return events


@pytest.mark.parametrize("transport", ["websocket", "xhr-streaming", "xhr-polling"])
async def test_sockjs_client_and_stompjs(make_sockjs: SockJsFactory, transport: str) -> None:
    modules = node_modules()
    running = await make_sockjs()

    async def on_event(event: dict[str, Any]) -> None:
        if event["event"] == "receipt":
            status, _ = await running.api("POST", "/api/publish", {"channel": "news", "data": {"n": 1}})
            assert status == 200
            status, _ = await running.api("POST", "/api/send", {"users": ["jsuser"], "data": {"to": "js"},
                                                                "destination": "/queue/inbox"})
            assert status == 200

    events = await run_peer(running, [str(PEER), running.base, transport], modules, on_event)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "connected" and kinds[-1] == "done", events
    assert events[0]["transport"] == transport
    assert events[0]["headers"]["user-name"] == "jsuser" and events[0]["headers"]["version"] == "1.2"
    got = {e["headers"]["destination"]: json.loads(e["body"]) for e in events if e["event"] == "message"}
    assert got["/topic/news"] == {"n": 1}
    assert got["/topic/js"]["from"] == "js"
    assert got["/user/queue/inbox"] == {"to": "js"}


CHROMIUM = Path(os.environ.get("PUSHGATE_CHROMIUM", "/usr/bin/chromium"))
BROWSER = Path(__file__).with_name("browser")


async def test_headless_chromium_without_websocket(make_sockjs: SockJsFactory) -> None:
    """A page pushgate serves, with ``window.WebSocket`` removed, loads sockjs-client and stompjs:
    SockJS falls back to xhr-streaming, stompjs connects, subscribes and gets an HTTP publish."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium) "
                    "to run the browser test")
    modules = node_modules()
    files = {"sockjs.min.js": modules / "sockjs-client" / "dist" / "sockjs.min.js",
             "stomp.umd.min.js": modules / "@stomp" / "stompjs" / "bundles" / "stomp.umd.min.js",
             "index.html": BROWSER / "page.html"}

    def serve(path: Path) -> Any:
        async def handler(request: web.Request) -> web.FileResponse:
            return web.FileResponse(path)
        return handler

    routes = [web.get(f"/sockjs-test/{name}", serve(path)) for name, path in files.items()]
    running = await make_sockjs(routes=routes)

    async def on_event(event: dict[str, Any]) -> None:
        if event["event"] == "receipt":
            status, _ = await running.api("POST", "/api/publish", {"channel": "news", "data": {"from": "http"}})
            assert status == 200

    page = running.running.url + "/sockjs-test/index.html"
    events = await run_peer(running, [str(BROWSER / "driver.js"), page, str(CHROMIUM)], modules, on_event,
                            seconds=60)
    kinds = [e["event"] for e in events]
    assert kinds == ["connected", "receipt", "message", "closed", "done"], events
    assert events[0]["transport"] == "xhr-streaming" and events[0]["user"] == "browser"
    assert json.loads(events[2]["body"]) == {"from": "http"} and events[2]["offset"] == "1"
    assert events[3]["code"] == 1000  # the DISCONNECT's close frame
