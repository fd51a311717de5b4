"""STOMP in a cluster: two nodes on one Redis, STOMP on one, JSON clients and the API on the other."""

from __future__ import annotations

import json
from collections.abc import Callable

import aiohttp

from ..cluster.conftest import cluster_node, redis_server  # noqa: F401 - fixtures
from ..conftest import Process
from ..helpers import WsClient
from .client import StompClient


async def test_offsets_and_user_messages_across_nodes(cluster_node: Callable[..., Process]) -> None:  # noqa: F811
    n1, n2 = cluster_node("n1"), cluster_node("n2")
    stomp = await StompClient.open(n1.ws_url + "?user=bob")
    json_client = await WsClient.connect(n2.ws_url + "?user=alice")
    try:
        await stomp.connect()
        await stomp.request("SUBSCRIBE", {"id": "t", "destination": "/topic/shared"})
        await stomp.request("SUBSCRIBE", {"id": "q", "destination": "/user/queue/inbox"})
        await json_client.ok({"type": "subscribe", "channel": "shared"})
        # a publish on n2 (JSON) and a SEND on n1 (STOMP): both clients see the same positions
        await json_client.ok({"type": "publish", "channel": "shared", "data": {"by": "json"}})
        await stomp.request("SEND", {"destination": "/topic/shared"}, b'{"by":"stomp"}')
        got = [await stomp.next("MESSAGE"), await stomp.next("MESSAGE")]
        pushed = await json_client.messages(2)
        assert [json.loads(m.body) for m in got] == [p["data"] for p in pushed]
        assert [(m.get("epoch"), m.get("offset")) for m in got] == [(p["epoch"], str(p["offset"])) for p in pushed]
        # /api/send on n2 with a destination reaches bob's /user/queue/inbox on n1
        async with aiohttp.ClientSession() as s, s.post(n2.url + "/api/send", json={
            "users": ["bob"], "data": {"n": 1}, "destination": "/queue/inbox"}) as r:
            assert r.status == 200
        m = await stomp.next("MESSAGE")
        assert (m.get("subscription"), json.loads(m.body)) == ("q", {"n": 1})
        # and a JSON client's send on n2
        await json_client.ok({"type": "send", "to": ["bob"], "data": 2, "destination": "/queue/inbox"})
        m = await stomp.next("MESSAGE")
        assert (m.body, m.get("sender")) == (b"2", "alice")
    finally:
        await stomp.close()
        await json_client.close()
