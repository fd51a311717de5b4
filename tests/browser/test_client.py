"""pushgate.js itself in headless Chromium: the HTML examples of docs/protocol.md run as written
(served from the node's origin), the SSE fallback when WebSockets are blocked, and offline/online."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from ..conftest import Process
from ..helpers import timeout
from ..test_doc_snippets import snippets
from .test_page import api, expect, message, open_page

EXAMPLES = [s for s in snippets("html") if s.path.name == "protocol.md"]


async def wait_until(predicate: Callable[[], bool], what: str, seconds: float = 10) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout(seconds)
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("snippet", EXAMPLES, ids=lambda s: s.name)
async def test_protocol_md_browser_examples_run(browser: Any, pushgate_server: Process, snippet: Any) -> None:
    """Each example becomes a page of the node's origin (so /pushgate.js, /static/pushgate.mjs, /ws
    and /sse resolve as in a real app) and must run without an error, printing what it promises.

    The page is written with document.write into a document the node served: a page fulfilled
    by the test itself would count as a public origin, and Chromium's local network access checks
    would then block its WebSocket to 127.0.0.1 (the client would fall back to SSE)."""
    page = await browser.new_page()
    logs: list[str] = []
    errors: list[str] = []
    page.on("console", lambda m: logs.append(m.text))
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(pushgate_server.url + "/healthz")
    await page.evaluate("(html) => { document.open(); document.write(html); document.close(); }",
                        "<!doctype html><title>example</title>\n" + snippet.code)
    base = pushgate_server.url
    if "new EventSource" in snippet.code:  # the SSE example listens: publish until it prints
        for _ in range(int(timeout(10) / 0.1)):
            api(base, "POST", "/api/publish", {"channel": "news", "data": "for the SSE example"})
            if any("for the SSE example" in line for line in logs):
                break
            await asyncio.sleep(0.1)
        assert any("for the SSE example" in line for line in logs), logs
    elif 'type="module"' in snippet.code:
        await wait_until(lambda: bool(logs), "the module example's message handler")
        assert not any("WebSocket connection" in line for line in logs), logs
    else:
        await wait_until(lambda: any(line.startswith("subscribed at") for line in logs)
                         and any("bob" in line for line in logs), f"the example to finish: {logs}")
        assert not any(line.startswith("failed:") for line in logs), logs
        assert not any("WebSocket connection" in line for line in logs), logs
    assert errors == [], errors


BLOCK_WEBSOCKET = """
// What a proxy that drops WebSocket upgrades looks like to a page: the socket never opens (1006).
window.WebSocket = class BlockedWebSocket {
  constructor(url) {
    this.url = url;
    setTimeout(() => { if (this.onerror) this.onerror(new Event('error'));
                       if (this.onclose) this.onclose({ code: 1006, reason: '' }); }, 10);
  }
  send() { throw new Error('not open'); }
  close() {}
};
"""


async def test_websocket_blocked_the_page_falls_back_to_sse(browser: Any, pushgate_server: Process,
                                                            shot: Callable[..., Any]) -> None:
    await browser.add_init_script(BLOCK_WEBSOCKET)
    page = await open_page(browser, pushgate_server.url, "user=erin&room=lobby")
    await expect(page.locator("#state")).to_have_text("connected")
    await expect(page.locator("#transport")).to_have_text("sse")
    await expect(page.locator("#banner")).to_contain_text("SSE")
    await expect(page.locator("#composer-send")).to_be_disabled()  # receive only
    base = pushgate_server.url
    api(base, "POST", "/api/publish", {"channel": "lobby", "data": {"text": "over SSE", "user": "ops"}})
    await expect(message(page, "ops", "over SSE")).to_be_visible()
    # joining another room reopens the stream with both rooms
    await page.fill("#room-name", "second")
    await page.press("#room-name", "Enter")
    await expect(page.locator("#log")).to_contain_text("joined second")  # the stream reopened with it
    api(base, "POST", "/api/publish", {"channel": "second", "data": {"text": "also", "user": "ops"}})
    await expect(message(page, "ops", "also")).to_be_visible()
    api(pushgate_server.url, "POST", "/api/send", {"users": ["erin"], "data": {"text": "a direct over SSE"}})
    await expect(page.locator("#dms li[data-conv='dm:server']")).to_be_visible()
    await shot(page, "sse")


async def test_offline_then_online(browser: Any, pushgate_server: Process) -> None:
    page = await open_page(browser, pushgate_server.url, "user=fred&room=lobby")
    await expect(page.locator("#state")).to_have_text("connected")
    await browser.set_offline(True)
    await expect(page.locator("#banner")).to_contain_text("offline")
    await expect(page.locator("#state")).to_have_text("disconnected")
    await expect(page.locator("#composer-send")).to_be_disabled()
    api(pushgate_server.url, "POST", "/api/publish",
        {"channel": "lobby", "data": {"text": "while offline", "user": "ops"}})
    await browser.set_offline(False)
    await expect(page.locator("#state")).to_have_text("connected")
    await expect(message(page, "ops", "while offline")).to_be_visible()  # recovered on reconnect
