"""Connections per user and per client address, and the client address through trusted proxies."""

from __future__ import annotations

import pytest

from pushgate.app import App, ClientInfo

from ..conftest import Running, ServerFactory
from ..helpers import wait_for
from .test_handshake import attempt, refusals


async def test_connections_per_user_are_bounded_on_every_transport(make_server: ServerFactory) -> None:
    server = await make_server(max_connections_per_user=2)
    first = await server.client("user=alice")
    await server.client("user=alice")
    for path, (status, body) in (await refusals(server, "user=alice")).items():
        assert status == 429, path
        assert body["error"]["code"] == "too_many_connections" and "per user" in body["error"]["message"]
    await server.client("user=bob")  # other users are not affected
    await first.close()
    await wait_for(lambda: len(server.node.hub.users.get("alice", ())) == 1, what="alice's first gone")
    await server.client("user=alice")


async def test_connections_per_address_are_bounded(make_server: ServerFactory) -> None:
    server = await make_server(max_connections_per_ip=2)
    await server.client("user=a")
    await server.client("user=b")
    status, body = await attempt(server, "/ws", "user=c")
    assert status == 429 and "per client address" in body["error"]["message"]


async def addresses_seen(make_server: ServerFactory, **settings: object) -> tuple[Running, list[str | None]]:
    app = App()
    seen: list[str | None] = []

    @app.on_connect
    def record(client: ClientInfo) -> None:
        seen.append(client.address)

    return await make_server(app=app, **settings), seen


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-Forwarded-For": "203.0.113.9"}, "203.0.113.9"),
        ({"X-Forwarded-For": "198.51.100.1, 203.0.113.9"}, "203.0.113.9"),  # rightmost untrusted hop
        ({"X-Forwarded-For": "203.0.113.9, 127.0.0.5"}, "203.0.113.9"),  # our own proxies are skipped
        ({"X-Real-IP": "203.0.113.7"}, "203.0.113.7"),
        ({"Forwarded": 'for="[2001:db8::1]";proto=https'}, "2001:db8::1"),
        ({"Forwarded": "for=203.0.113.4:4711"}, "203.0.113.4"),
        ({}, "127.0.0.1"),
    ],
)
async def test_a_trusted_proxy_names_the_client(
    make_server: ServerFactory, headers: dict[str, str], expected: str
) -> None:
    server, seen = await addresses_seen(make_server, trusted_proxies=("127.0.0.0/8",))
    await server.client("user=a", headers=headers)
    assert seen == [expected]


async def test_forwarding_headers_from_an_untrusted_peer_are_ignored(make_server: ServerFactory) -> None:
    server, seen = await addresses_seen(make_server, max_connections_per_ip=1)
    await server.client("user=a", headers={"X-Forwarded-For": "203.0.113.9"})
    assert seen == ["127.0.0.1"]
    # a spoofed header cannot dodge the per-address limit either
    status, _ = await attempt(server, "/ws", "user=b", {"X-Forwarded-For": "198.51.100.77"})
    assert status == 429


async def test_per_address_limit_counts_the_forwarded_client(make_server: ServerFactory) -> None:
    server = await make_server(trusted_proxies=("127.0.0.1/32",), max_connections_per_ip=1)
    await server.client("user=a", headers={"X-Forwarded-For": "203.0.113.1"})
    await server.client("user=b", headers={"X-Forwarded-For": "203.0.113.2"})
    status, _ = await attempt(server, "/ws", "user=c", {"X-Forwarded-For": "203.0.113.1"})
    assert status == 429
