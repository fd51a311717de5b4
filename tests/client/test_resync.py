"""The Python client on an in-band resync: it keeps the connection and the subscription, moves its
position, tells the app, and takes what follows."""

from __future__ import annotations

from pushgate.client import Client, Position, Resync

from ..conftest import ServerFactory
from ..helpers import timeout, wait_for


async def test_client_follows_a_resync_without_reconnecting(make_server: ServerFactory) -> None:
    server = await make_server(history_size=2)
    client = Client(server.ws_url, user="alice", request_timeout=timeout(5))
    events: list[Resync] = []
    client.on("resync", events.append)
    try:
        await client.connect()
        sub = await client.subscribe("feed")
        welcome_client = client.welcome.client if client.welcome else None
        # five publications this node never hears live (as if pub/sub dropped them), then a live one
        await server.node.broker.unsubscribe("feed")
        for i in range(5):
            await server.node.publish_json("feed", {"lost": i})
        await server.node.broker.subscribe("feed")
        await server.node.publish_json("feed", "live")
        got = [await sub.get() for _ in range(2)]
        assert [(m.offset, m.data) for m in got] == [(5, {"lost": 4}), (6, "live")]
        await wait_for(lambda: bool(events), what="resync event")
        assert events == [Resync("feed", Position(got[0].epoch, 4))]
        assert sub.position == Position(got[0].epoch, 6) and sub.recovered is False
        assert client.welcome is not None and client.welcome.client == welcome_client  # same connection
    finally:
        await client.close()
