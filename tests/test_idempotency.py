"""Idempotent publish through a node: the settings reach the brokers ``create_stores`` builds.

The broker side is the conformance suite (``tests/backends/test_idempotency.py``); here a node
built from config uses its ``idempotency_window`` (the Redis node's settings are checked in
``tests/backends/test_idempotency.py``; history bounds in ``tests/test_history_bounds.py``).
"""

from __future__ import annotations

from .backends.conftest import wait_until
from .conftest import Running, ServerFactory


async def test_node_publish_with_key_and_window(make_server: ServerFactory) -> None:
    server = await make_server(idempotency_window=0.3)
    node = server.node
    c = await server.client("user=a")
    await c.ok({"type": "subscribe", "channel": "orders"})
    first = await node.publish("orders", b'{"id":7}', idempotency_key="order-7")
    assert await node.publish("orders", b'{"id":7}', idempotency_key="order-7") == first
    marker = await node.publish("orders", b'"marker"')
    got = await c.messages(2)
    assert [m["offset"] for m in got] == [first.offset, marker.offset]  # delivered once

    async def applied_again() -> bool:
        return (await node.publish("orders", b'{"id":7}', idempotency_key="order-7")) != first

    await wait_until(applied_again, 5.0, "the node's idempotency window (0.3 s) to pass")


async def test_a_client_publish_retry_with_the_same_key_is_applied_once(server: Running) -> None:
    from pushgate.client import Client

    sub = await server.client("user=s")
    await sub.ok({"type": "subscribe", "channel": "idem-client"})
    client = Client(server.ws_url, user="p")
    try:
        await client.connect()
        first = await client.publish("idem-client", {"n": 1}, idempotency_key="order-42")
        again = await client.publish("idem-client", {"n": 1}, idempotency_key="order-42")
        other = await client.publish("idem-client", {"n": 2}, idempotency_key="order-43")
    finally:
        await client.close()
    assert again == first and other.offset == first.offset + 1
    got = await sub.messages(2)
    assert [m["data"] for m in got] == [{"n": 1}, {"n": 2}]
    await sub.nothing_more()
    bad = await sub.request({"type": "publish", "channel": "idem-client", "data": 1, "idempotency_key": "no spaces"})
    assert bad["type"] == "error" and bad["code"] == "bad_request"


async def test_a_broadcast_retry_with_the_same_key_is_delivered_once(server: Running) -> None:
    c = await server.client("user=a")
    body = {"data": {"maintenance": True}, "idempotency_key": "maint-1"}
    assert (await server.api("POST", "/api/broadcast", body))[0] == 200
    assert (await server.api("POST", "/api/broadcast", body))[0] == 200  # the retry: no second delivery
    assert (await c.next("broadcast"))["data"] == {"maintenance": True}
    await c.nothing_more()
    status, err = await server.api("POST", "/api/broadcast", {"data": 1, "idempotency_key": "bad key!"})
    assert status == 400 and err["error"]["code"] == "bad_request"


async def test_publisher_broadcast_and_send_retries_are_applied_once() -> None:
    import pushgate

    async with pushgate.Publisher("memory://") as pub:
        assert await pub.broadcast({"x": 1}, idempotency_key="b-1") is True
        assert await pub.broadcast({"x": 1}, idempotency_key="b-1") is False
        first = await pub.send_to_users(["bob"], "hi", idempotency_key="s-1")
        again = await pub.send_to_users(["bob"], "hi", idempotency_key="s-1")
        assert first == again
