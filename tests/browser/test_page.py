"""The page at ``/`` in headless Chromium against real nodes: chat in a room and by direct
message, presence and online counts, a refused token's reason, reconnect after a node is killed
and restarted with the missed messages recovered, Disconnect → Connect, a kick's close reason,
and a 390 px wide layout without horizontal overflow."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt

from ..conftest import Process
from ..helpers import timeout
from ..servers import start_redis

JWT_SECRET = "browser-test-secret-long-enough-for-hs256"


def expect(target: Any) -> Any:
    from playwright.async_api import expect as pw_expect

    return pw_expect(target)


async def open_page(browser: Any, base: str, query: str = "", *, width: int | None = None) -> Any:
    """A page on ``base`` with ``?query``; records failed responses and page errors on it."""
    page = await browser.new_page()
    if width is not None:
        await page.set_viewport_size({"width": width, "height": 844})
    page.failures = []  # type: ignore[attr-defined]
    # the mode probe (/sse?user=%20) is refused on purpose
    page.on("response", lambda r: page.failures.append(f"{r.status} {r.url}")
            if r.status >= 400 and "/sse?user=%20" not in r.url else None)
    page.on("pageerror", lambda e: page.failures.append(f"page error: {e}"))
    await page.goto(f"{base}/{'?' + query if query else ''}")
    return page


def api(base: str, method: str, path: str, body: Any = None) -> Any:
    import urllib.request

    req = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout(10)) as res:
        return json.loads(res.read() or b"null")


async def say(page: Any, text: str) -> None:
    await page.fill("#composer-text", text)
    await page.press("#composer-text", "Enter")


def message(page: Any, who: str, text: str) -> Any:
    return page.locator("#messages li.msg", has=page.locator(".who", has_text=who)).filter(has_text=text)


async def test_two_pages_chat_in_a_room_and_by_direct_message(browser: Any, pushgate_server: Process,
                                                             shot: Callable[..., Any]) -> None:
    base = pushgate_server.url
    alice = await open_page(browser, base, "user=alice&room=lobby")
    bob = await open_page(browser, base, "user=bob&room=lobby")
    for page in (alice, bob):
        await expect(page.locator("#state")).to_have_text("connected")
        await expect(page.locator("#mode")).to_have_text("dev mode")
    # presence and the online count update as people come
    await expect(alice.locator("#presence li[data-user=bob]")).to_be_visible()
    await expect(bob.locator("#presence li[data-user=alice]")).to_be_visible()
    await expect(alice.locator("#online")).to_contain_text("2 conn")

    await say(alice, "hello from alice")
    await expect(message(bob, "alice", "hello from alice")).to_be_visible()
    await expect(message(alice, "alice", "hello from alice")).to_have_class("msg own")
    await say(bob, "hi alice")
    await expect(message(alice, "bob", "hi alice")).to_be_visible()

    # a direct message: alice clicks bob in the presence list; bob sees a new conversation
    await alice.click("#presence li[data-user=bob] button")
    await expect(alice.locator("#conv-title")).to_have_text("@ bob")
    await say(alice, "psst, bob")
    dm = bob.locator("#dms li[data-conv='dm:alice']")
    await expect(dm.locator(".unread")).to_have_text("1")
    await dm.locator("button").first.click()
    got = message(bob, "alice", "psst, bob")
    await expect(got).to_be_visible()
    await expect(got.locator(".verified")).to_be_visible()  # the sender is stamped by the server
    await shot(alice, "alice")
    await shot(bob, "bob")

    await bob.close()  # bob leaves: presence and the online count follow
    await expect(alice.locator("#online")).to_contain_text("1 conn", timeout=timeout(10) * 1000)
    await alice.click("#rooms li[data-conv='room:lobby'] button.link")
    await expect(alice.locator("#presence li[data-user=bob]")).to_have_count(0, timeout=timeout(10) * 1000)
    assert alice.failures == []  # no favicon 404, no page error


async def test_an_expired_token_shows_its_reason(browser: Any, spawn_node: Callable[..., Process],
                                                 shot: Callable[..., Any]) -> None:
    node = spawn_node("--jwt-secret", JWT_SECRET)
    expired = jwt.encode({"sub": "alice", "exp": int(time.time()) - 60}, JWT_SECRET, algorithm="HS256")
    page = await open_page(browser, node.url, f"token={expired}&room=lobby")
    await expect(page.locator("#mode")).to_have_text("JWT mode")
    banner = page.locator("#banner")
    # the browser is told after the upgrade: close 4503 with the refusal as its reason
    await expect(banner).to_contain_text("4503")
    await expect(banner).to_contain_text("unauthorized: token expired")
    await expect(banner).to_contain_text("will not reconnect")
    await expect(page.locator("#state")).to_have_text("closed")
    await expect(page.locator("#composer-send")).to_be_disabled()
    await shot(page, "refused")

    fresh = jwt.encode({"sub": "alice", "exp": int(time.time()) + 600}, JWT_SECRET, algorithm="HS256")
    await page.fill("#token", fresh)
    await page.click("#connect-btn")
    await expect(page.locator("#state")).to_have_text("connected")
    await expect(page.locator("#identity")).to_contain_text("alice")
    await expect(banner).to_be_hidden()


async def test_killed_and_restarted_node_page_reconnects_and_recovers(
        browser: Any, spawn_node: Callable[..., Process], tmp_path: Path, shot: Callable[..., Any]) -> None:
    redis = start_redis(tmp_path / "redis")
    try:
        node = spawn_node("--broker", redis.url, "--node-id", "n1")
        other = spawn_node("--broker", redis.url, "--node-id", "n2")  # publishes while n1 is down
        page = await open_page(browser, node.url, "user=carol&room=news")
        await expect(page.locator("#state")).to_have_text("connected")
        await expect(page.locator("#rooms li[data-conv='room:news']")).to_be_visible()
        api(other.url, "POST", "/api/publish", {"channel": "news", "data": {"text": "before", "user": "ops"}})
        await expect(message(page, "ops", "before")).to_be_visible()

        node.kill()
        await expect(page.locator("#state")).not_to_have_text("connected")
        await expect(page.locator("#banner")).to_contain_text("Disconnected")
        await expect(page.locator("#composer-send")).to_be_disabled()  # nothing live while down
        for text in ("missed 1", "missed 2"):
            api(other.url, "POST", "/api/publish", {"channel": "news", "data": {"text": text, "user": "ops"}})
        spawn_node("--broker", redis.url, "--node-id", "n1", port=node.port)

        await expect(page.locator("#state")).to_have_text("connected", timeout=timeout(30) * 1000)
        await expect(message(page, "ops", "missed 2")).to_be_visible()
        api(other.url, "POST", "/api/publish", {"channel": "news", "data": {"text": "after", "user": "ops"}})
        await expect(message(page, "ops", "after")).to_be_visible()
        texts = await page.locator("#messages li.msg .text").all_inner_texts()
        assert texts == ["before", "missed 1", "missed 2", "after"]  # in order, once each
        await shot(page, "recovered")
    finally:
        redis.stop()


async def test_disconnect_connect_keeps_rooms_and_a_kick_shows_its_reason(browser: Any, pushgate_server: Process,
                                                                          shot: Callable[..., Any]) -> None:
    base = pushgate_server.url
    page = await open_page(browser, base, "user=dora&room=ops")
    await expect(page.locator("#state")).to_have_text("connected")
    await page.fill("#room-name", "general")
    await page.press("#room-name", "Enter")
    await expect(page.locator("#rooms li")).to_have_count(2)

    await page.click("#disconnect-btn")
    await expect(page.locator("#state")).to_have_text("closed")
    await expect(page.locator("#composer-send")).to_be_disabled()
    await expect(page.locator("#disconnect-btn")).to_be_disabled()
    api(base, "POST", "/api/publish", {"channel": "general", "data": {"text": "while away", "user": "ops"}})
    await page.click("#connect-btn")
    await expect(page.locator("#state")).to_have_text("connected")
    await expect(page.locator("#rooms li")).to_have_count(2)  # both rooms, subscribed again
    await expect(message(page, "ops", "while away")).to_be_visible()  # recovered with since
    await expect(page.locator("#composer-send")).to_be_enabled()

    # the admin panel finds dora (GET /api/users/dora/connections), then kicks her: the page says so
    await page.click("#tab-admin-btn")
    await expect(page.locator("#channels tbody")).to_contain_text("general")
    await page.fill("#where-user", "dora")
    await page.press("#where-user", "Enter")
    await expect(page.locator("#where-result")).to_contain_text("dora: 1 connection(s) cluster-wide")
    await expect(page.locator("#where-result")).to_contain_text("websocket: general, ops")
    await page.fill("#kick-user", "dora")
    await page.click("#kick-form button[type=submit]")
    await expect(page.locator("#banner")).to_contain_text("4500")
    await expect(page.locator("#banner")).to_contain_text("kicked by admin")
    await expect(page.locator("#state")).to_have_text("closed")
    await page.fill("#history-channel", "general")
    await page.click("#history-form button")
    await expect(page.locator("#history tbody")).to_contain_text("while away")
    await expect(page.locator("#rate-now")).to_contain_text("pub/s", timeout=timeout(10) * 1000)
    await shot(page, "admin")
    assert page.failures == []


async def test_a_390px_screen_has_no_horizontal_overflow(browser: Any, pushgate_server: Process,
                                                         shot: Callable[..., Any]) -> None:
    page = await open_page(browser, pushgate_server.url, "user=a-rather-long-user-name-for-a-phone&room=lobby",
                           width=390)
    await expect(page.locator("#state")).to_have_text("connected")
    await say(page, "x" * 300 + " a long word and " + "https://example.com/" + "y" * 200)
    await expect(page.locator("#messages li.msg")).to_have_count(1)
    for tab in ("chat", "admin", "log"):
        await page.click(f"#tab-{tab}-btn")
        await expect(page.locator(f"#tab-{tab}")).to_be_visible()
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{tab}: the page is {width} px wide on a 390 px screen"
        await shot(page, tab)
    # the header shows the state and the mode without clipping
    box = await page.locator("#state").bounding_box()
    assert box is not None and box["x"] + box["width"] <= 390
