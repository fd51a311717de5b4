"""``build_app(node)`` needs no global key: it serves on its own, mounted under a prefix, or
next to another node's app in the same process; its handlers can be added to any app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from pushgate.config import load_config
from pushgate.node import Node
from pushgate.web import build_app
from pushgate.web.api import Api, Probes
from pushgate.web.websocket import WebsocketHandler

from ..helpers import WsClient


def make_node(**settings: Any) -> Node:
    return Node(load_config(file=None, env={}, cli={"host": "127.0.0.1", "port": 0, **settings}))


class Served:
    """An aiohttp application on a free port, with the nodes it serves started."""

    def __init__(self, app: web.Application, nodes: list[Node]) -> None:
        self.app = app
        self.nodes = nodes
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        self.url = ""
        self.clients: list[WsClient] = []

    async def start(self) -> None:
        for node in self.nodes:
            await node.start()
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def client(self, path: str) -> WsClient:
        c = await WsClient.connect(self.url.replace("http://", "ws://") + path)
        self.clients.append(c)
        return c

    async def request(self, method: str, path: str, json: Any = None,
                      headers: dict[str, str] | None = None) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as s, s.request(method, self.url + path, json=json,
                                                           headers=headers) as r:
            return r.status, await r.json(content_type=None) if r.content_type == "application/json" else None

    async def stop(self) -> None:
        for c in self.clients:
            await c.close()
        for node in self.nodes:
            await node.stop()
        await self.runner.cleanup()


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    started: list[Served] = []

    async def factory(app: web.Application, *nodes: Node) -> Served:
        served = Served(app, list(nodes))
        started.append(served)
        await served.start()
        return served

    yield factory
    for served in started:
        await served.stop()


async def test_two_nodes_mounted_under_prefixes_in_one_app(serve: Any) -> None:
    a, b = make_node(node_id="a", api_key="key-a"), make_node(node_id="b")
    parent = web.Application()
    parent.add_subapp("/a", build_app(a))
    parent.add_subapp("/b", build_app(b))
    served = await serve(parent, a, b)

    on_a = await served.client("/a/ws?user=alice")
    on_b = await served.client("/b/ws?user=bob")
    assert (on_a.welcome["node"], on_b.welcome["node"]) == ("a", "b")
    await on_a.ok({"type": "subscribe", "channel": "news"})
    await on_b.ok({"type": "subscribe", "channel": "news"})

    # the API keeps its auth and JSON errors under a prefix
    assert (await served.request("POST", "/a/api/publish", {"channel": "news", "data": 1}))[0] == 401
    auth = {"Authorization": "Bearer key-a"}
    status, body = await served.request("POST", "/a/api/publish", {"channel": "news", "data": 1}, auth)
    assert status == 200 and body["offset"] == 1
    assert (await on_a.next("message"))["data"] == 1
    assert (await on_b.request({"type": "ping"}))["type"] == "pong"
    await on_b.nothing_more()  # each app serves its own node: b never saw a's publication

    status, body = await served.request("GET", "/a/api/nope", headers=auth)
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = await served.request("GET", "/b/api/publish")
    assert status == 405 and body["error"]["code"] == "method_not_allowed"
    status, doc = await served.request("GET", "/a/api/openapi.json")  # public, no key needed
    assert status == 200 and doc["openapi"].startswith("3.")
    status, health = await served.request("GET", "/b/healthz")
    assert status == 200 and health["node"] == "b"


async def test_handlers_added_to_an_existing_app(serve: Any) -> None:
    node = make_node(node_id="own")
    app = web.Application()
    app.add_routes([web.get("/live", WebsocketHandler(node).handle), *Probes(node).routes()])
    app.add_subapp("/v1", Api(node).application())
    served = await serve(app, node)

    client = await served.client("/live?user=carol")
    await client.ok({"type": "subscribe", "channel": "c"})
    status, body = await served.request("POST", "/v1/publish", {"channel": "c", "data": {"x": 1}})
    assert status == 200 and body["offset"] == 1
    assert (await client.next("message"))["data"] == {"x": 1}
    status, ready = await served.request("GET", "/readyz")
    assert status == 200 and ready["node"] == "own"


async def test_the_keyless_rules_hold_under_a_prefix(serve: Any) -> None:
    node = make_node(node_id="k")
    parent = web.Application()
    parent.add_subapp("/k", build_app(node))
    served = await serve(parent, node)
    publish = {"channel": "n", "data": 1}
    status, body = await served.request("POST", "/k/api/publish", publish, {"X-Forwarded-For": "203.0.113.5"})
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, body = await served.request("POST", "/k/api/publish", publish, {"Host": "rebound.example"})
    assert status == 403 and body["error"]["code"] == "forbidden"
    async with aiohttp.ClientSession() as s, s.post(served.url + "/k/api/publish", data=b'{"channel":"n","data":1}',
                                                    headers={"Content-Type": "text/plain"}) as r:
        assert r.status == 415 and (await r.json())["error"]["code"] == "unsupported_media_type"
    status, body = await served.request("POST", "/k/api/publish", publish)
    assert status == 200 and body["offset"] == 1
