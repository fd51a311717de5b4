"""The HTTP API for backends, health, readiness, metrics, OpenAPI, static files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio

from .conftest import Running, ServerFactory
from .helpers import direct_body
from .servers import RedisServer, start_redis


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path)
    yield server
    server.stop()


async def test_publish_returns_position_and_reaches_subscribers(server: Running) -> None:
    c = await server.client("user=a")
    await c.ok({"type": "subscribe", "channel": "news"})
    status, body = await server.api("POST", "/api/publish", {"channel": "news", "data": {"headline": "x"}})
    assert status == 200 and body["offset"] == 1 and isinstance(body["epoch"], str)
    assert (await c.next("message"))["data"] == {"headline": "x"}


async def test_send_to_users_from_api_has_null_sender(server: Running) -> None:
    bob = await server.client("user=bob")
    carol = await server.client("user=carol")
    status, _ = await server.api("POST", "/api/send", {"users": ["bob", "carol", "nobody"], "data": [1]})
    assert status == 200
    for c in (bob, carol):
        assert direct_body(await c.next("direct")) == {"type": "direct", "from": None, "data": [1]}


async def test_history_endpoint(make_server: ServerFactory) -> None:
    server = await make_server(history_size=3)
    for i in range(5):
        await server.api("POST", "/api/publish", {"channel": "h", "data": i})
    status, body = await server.api("GET", "/api/history/h")
    assert status == 200 and body["offset"] == 5 and body["complete"] is True
    assert [(p["offset"], p["data"]) for p in body["publications"]] == [(3, 2), (4, 3), (5, 4)]
    _, body = await server.api("GET", f"/api/history/h?since_offset=3&epoch={body['epoch']}")
    assert [p["offset"] for p in body["publications"]] == [4, 5] and body["complete"] is True
    _, body2 = await server.api("GET", f"/api/history/h?since_offset=1&epoch={body['epoch']}")
    assert body2["complete"] is False  # offset 2 was trimmed
    _, body3 = await server.api("GET", "/api/history/h?since_offset=0&epoch=other")
    assert body3["complete"] is False
    _, limited = await server.api("GET", "/api/history/h?limit=1")
    assert [p["offset"] for p in limited["publications"]] == [5]
    status, err = await server.api("GET", "/api/history/h?limit=-1")
    assert status == 400 and err["error"]["code"] == "bad_request"


async def test_history_validates_the_name_before_asking_for_a_position(server: Running) -> None:
    for query in ("since_offset=1", "since_offset=1&epoch=e", "", "limit=1"):
        status, err = await server.api("GET", f"/api/history/bad%20name%21?{query}")
        assert status == 400 and err["error"]["code"] == "bad_request", query


async def test_history_of_an_invalid_name_creates_no_redis_key(redis_server: RedisServer,
                                                               make_server: ServerFactory) -> None:
    # redis_server first: fixtures stop in reverse order, so the node stops before its Redis
    server = await make_server(broker=redis_server.url)
    store = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        status, err = await server.api("GET", "/api/history/zzmarker%20bad%21?since_offset=1")
        assert status == 400 and err["error"]["code"] == "bad_request"
        assert await store.keys("*zzmarker*") == []
        # the control: the same request for a valid name does touch the store, so the check can see keys
        status, _ = await server.api("GET", "/api/history/zzmarker-ok?since_offset=1")
        assert status == 200
        assert await store.keys("*zzmarker-ok*") != []
    finally:
        await store.aclose()


async def test_presence_channels_nodes(server: Running) -> None:
    a = await server.client("user=alice")
    await a.ok({"type": "subscribe", "channel": "room"})
    _, p = await server.api("GET", "/api/presence/room")
    assert p == {"channel": "room", "users": ["alice"], "connections": 1}
    _, ch = await server.api("GET", "/api/channels")
    assert ch == {"channels": [{"channel": "room", "subscribers": 1}]}
    _, nodes = await server.api("GET", "/api/nodes")
    assert nodes == {"nodes": [server.node.id]}


async def test_bad_requests_get_json_errors(server: Running) -> None:
    for path, body in [
        ("/api/publish", {"channel": "x"}),
        ("/api/publish", {"channel": "bad name", "data": 1}),
        ("/api/publish", {"channel": "x", "data": 1, "extra": 2}),
        ("/api/send", {"users": [], "data": 1}),
        ("/api/send", {"users": "bob", "data": 1}),
        ("/api/disconnect", {}),
    ]:
        status, err = await server.api("POST", path, body)
        assert status == 400, (path, body)
        assert err["error"]["code"] == "bad_request" and err["error"]["message"]
    json_type = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession() as s, s.post(server.url + "/api/publish", data=b"{oops", headers=json_type) as r:
        assert r.status == 400 and (await r.json())["error"]["code"] == "bad_request"
    async with aiohttp.ClientSession() as s, s.post(server.url + "/api/publish", data=b"{oops") as r:
        assert r.status == 415 and (await r.json())["error"]["code"] == "unsupported_media_type"


async def test_api_key_required_when_configured(make_server: ServerFactory) -> None:
    server = await make_server(api_key="sekret")
    status, err = await server.api("GET", "/api/online")
    assert status == 401 and err["error"]["code"] == "unauthorized"
    status, _ = await server.api("GET", "/api/online", headers={"Authorization": "Bearer wrong"})
    assert status == 401
    status, _ = await server.api("GET", "/api/online", headers={"Authorization": "Bearer sekret"})
    assert status == 200


async def test_health_ready_metrics_openapi_static(server: Running) -> None:
    assert (await server.api("GET", "/healthz"))[0] == 200
    status, ready = await server.api("GET", "/readyz")
    assert status == 200 and ready["status"] == "ready"
    c = await server.client("user=a")
    await c.ok({"type": "subscribe", "channel": "m"})
    await server.api("POST", "/api/publish", {"channel": "m", "data": 1})
    await c.next("message")
    status, text = await server.api("GET", "/metrics")
    assert status == 200
    for line in ("pushgate_connections 1.0", "pushgate_subscriptions 1.0", "pushgate_published_total 1.0",
                 "pushgate_messages_out_total", "pushgate_publish_latency_seconds_bucket",
                 'pushgate_messages_in_total{transport="websocket"} 1.0'):
        assert line in text, line
    status, doc = await server.api("GET", "/api/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    for path in ("/api/publish", "/api/broadcast", "/api/send", "/api/disconnect", "/api/online",
                 "/api/presence/{channel}", "/api/history/{channel}", "/api/channels", "/api/nodes"):
        assert path in doc["paths"], path
    status, page = await server.api("GET", "/")
    assert status == 200 and "pushgate.js" in page
    status, js = await server.api("GET", "/pushgate.js")
    assert status == 200 and "WebSocket" in js


async def test_unknown_paths_and_methods_get_json_errors(server: Running) -> None:
    status, err = await server.api("GET", "/api/nope")
    assert status == 404 and err["error"]["code"] == "not_found"
    status, err = await server.api("GET", "/api/publish")
    assert status == 405 and err["error"]["code"] == "method_not_allowed"
    async with aiohttp.ClientSession() as s, s.post(server.url + "/api/publish", data=b"x" * (2 << 20),
                                                    headers={"Content-Type": "application/json"}) as r:
        assert r.status == 413 and (await r.json())["error"]["code"] == "too_large"


async def test_metrics_report_the_memory_brokers_history_and_the_new_counters(server: Running) -> None:
    await server.api("POST", "/api/publish", {"channel": "m", "data": "x" * 100})
    status, text = await server.api("GET", "/metrics")
    assert status == 200
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert float(lines["pushgate_history_channels"]) == 1 and float(lines["pushgate_history_bytes"]) > 100
    for name in ("pushgate_resyncs_total", "pushgate_gap_fills_total", "pushgate_idempotency_keys"):
        assert name in lines


async def test_metrics_report_garbage_collection_pauses(server: Running) -> None:
    import gc

    gc.collect()  # a full collection while the node runs: the probe times it
    status, text = await server.api("GET", "/metrics")
    assert status == 200
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert float(lines['pushgate_gc_pause_seconds_count{generation="2"}']) >= 1
    assert server.node.metrics.gc.longest > 0


async def test_info_tells_the_node_its_version_and_auth_mode(make_server: ServerFactory) -> None:
    from pushgate import __version__

    dev = await make_server()
    await dev.client("user=alice")
    status, body = await dev.api("GET", "/api/info")
    assert status == 200
    assert body["mode"] == "dev" and body["version"] == __version__ and body["broker"] == "memory"
    assert body["node"] == dev.server.node.id and body["ready"] is True and body["draining"] is False
    assert body["connections"] == 1 and body["users"] == 1
    jwt = await make_server(jwt_secret="3q8Zk1vVb0Qm7XyP2sLr9TfGh4JwNc6D", api_key="k7Hs2Pq9Wm4Xz8Lc")
    status, body = await jwt.api("GET", "/api/info", headers={"Authorization": "Bearer k7Hs2Pq9Wm4Xz8Lc"})
    assert status == 200 and body["mode"] == "jwt"


async def test_user_connections_count_them_and_list_this_nodes(server: Running) -> None:
    a1 = await server.client("user=alice")
    await server.client("user=alice")
    await server.client("user=bob")
    await a1.request({"type": "subscribe", "channel": "news"})
    status, body = await server.api("GET", "/api/users/alice/connections")
    assert status == 200 and body["user"] == "alice" and body["connections"] == 2
    here = {c["id"]: c for c in body["here"]}
    assert set(here) == {c.welcome["client"] for c in server.clients[:2]}
    assert here[a1.welcome["client"]]["channels"] == ["news"]  # the user stream (!u:…) is not listed
    assert all(c["transport"] == "websocket" and c["address"] == "127.0.0.1" for c in here.values())
    status, body = await server.api("GET", "/api/users/nobody/connections")
    assert status == 200 and body["connections"] == 0 and body["here"] == []
    status, body = await server.api("GET", "/api/users/bad%20name/connections")
    assert status == 400 and body["error"]["code"] == "bad_request"


async def test_client_frames_and_errors_are_counted_per_transport(server: Running) -> None:
    c = await server.client("user=alice")
    reply = await c.request({"type": "subscribe", "channel": "bad name"})
    assert reply["type"] == "error" and reply["code"] == "bad_request"
    status, text = await server.api("GET", "/metrics")
    assert status == 200
    assert 'pushgate_messages_in_total{transport="websocket"} 1.0' in text
    assert 'pushgate_client_errors_total{code="bad_request",transport="websocket"} 1.0' in text
