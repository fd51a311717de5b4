"""Idempotent publish through a node: the settings reach the brokers ``create_stores`` builds.

The broker side is the conformance suite (``tests/backends/test_idempotency.py``); here a node
built from config uses its ``idempotency_window`` (the Redis node's settings are checked in
``tests/backends/test_idempotency.py``; history bounds in ``tests/test_history_bounds.py``).
"""

from __future__ import annotations

from .backends.conftest import wait_until
from .conftest import ServerFactory


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
