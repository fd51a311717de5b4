"""The Python client and the real server's user streams, end to end: a client that misses direct
messages while reconnecting gets them in order, once; acks decide what a device without a
position gets; auto-ack and a persisted position work across clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from pushgate.client import Client, Direct, Position
from pushgate.names import user_stream

from ..conftest import Running, ServerFactory
from ..helpers import timeout, wait_for


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., Client]]:
    made: list[Client] = []

    def factory(url: str, **kwargs: Any) -> Client:
        kwargs.setdefault("min_delay", 0.05)
        kwargs.setdefault("max_delay", 0.5)
        kwargs.setdefault("now_jitter", 0.05)
        kwargs.setdefault("request_timeout", timeout(5))
        c = Client(url, **kwargs)
        made.append(c)
        return c

    yield factory
    for c in made:
        await asyncio.wait_for(c.close(), timeout(5))


async def send(server: Running, user: str, data: Any) -> Position:
    status, body = await server.api("POST", "/api/send", {"users": [user], "data": data})
    assert status == 200, body
    pos = body["positions"][user]
    return Position(pos["epoch"], pos["offset"])


def server_conn(running: Running, user: str) -> Any:
    return next(c for c in running.node.hub.connections.values() if c.user == user)


async def settled(client: Client) -> None:
    """A round trip: every push the server wrote before the pong has been handled."""
    await asyncio.wait_for(client.ping(), timeout(5))


async def test_directs_missed_while_reconnecting_arrive_in_order_once(server: Running,
                                                                      clients: Callable[..., Client]) -> None:
    # The token provider runs before every attempt: holding it keeps bob away, deterministically.
    attempts = 0
    reconnecting, release = asyncio.Event(), asyncio.Event()

    async def token() -> str:
        nonlocal attempts
        attempts += 1
        if attempts > 1:
            reconnecting.set()
            await release.wait()
        return "dev-mode-ignores-it"

    bob = clients(server.ws_url, user="bob", token=token)
    got: list[Direct] = []
    bob.on("direct", got.append)
    await asyncio.wait_for(bob.connect(), timeout(5))
    first = await send(server, "bob", "before")
    await wait_for(lambda: len(got) == 1, what="the first direct")
    assert bob.user_position == first

    server_conn(server, "bob").close(1012, "restart")
    await asyncio.wait_for(reconnecting.wait(), timeout(5))
    missed = [await send(server, "bob", f"missed {n}") for n in (1, 2, 3)]
    release.set()
    await wait_for(lambda: len(got) == 4, what="the missed directs")
    welcome = bob.welcome
    assert welcome is not None and welcome.stream is not None
    assert welcome.stream.since == first and welcome.stream.recovered and not welcome.stream.maybe_missed
    live = await send(server, "bob", "live")
    await wait_for(lambda: len(got) == 5, what="the live direct")
    await settled(bob)
    assert [d.data for d in got] == ["before", "missed 1", "missed 2", "missed 3", "live"]
    assert [d.position for d in got] == [first, *missed, live]  # in order, each once
    assert bob.user_position == live


async def test_acks_decide_what_a_device_without_a_position_gets(server: Running,
                                                                  clients: Callable[..., Client]) -> None:
    sent = [await send(server, "carol", n) for n in range(5)]  # carol is offline
    phone = clients(server.ws_url, user="carol")
    on_phone: list[Direct] = []
    phone.on("direct", on_phone.append)
    await asyncio.wait_for(phone.connect(), timeout(5))
    await wait_for(lambda: len(on_phone) == 5, what="the offline inbox")
    assert [d.data for d in on_phone] == [0, 1, 2, 3, 4]
    assert await asyncio.wait_for(phone.ack(on_phone[2]), timeout(5)) == sent[2]

    laptop = clients(server.ws_url, user="carol")  # a new device: no position
    on_laptop: list[Direct] = []
    laptop.on("direct", on_laptop.append)
    await asyncio.wait_for(laptop.connect(), timeout(5))
    await wait_for(lambda: len(on_laptop) == 2, what="the unacknowledged directs")
    await settled(laptop)
    assert [d.position for d in on_laptop] == sent[3:]


async def test_auto_ack_and_a_persisted_position(make_server: ServerFactory, clients: Callable[..., Client]) -> None:
    server = await make_server()
    first = clients(server.ws_url, user="dave", auto_ack=True)
    got: list[Direct] = []
    first.on("direct", got.append)
    await asyncio.wait_for(first.connect(), timeout(5))
    sent = [await send(server, "dave", n) for n in range(3)]
    await wait_for(lambda: len(got) == 3, what="three directs")
    persisted = first.user_position
    assert persisted is not None and persisted == sent[-1]

    async def acked_on_server() -> bool:  # the auto-acks arrive asynchronously: wait for the last
        acked = await server.node.broker.acked(user_stream("dave"))
        return acked is not None and (acked.epoch, acked.offset) == tuple(persisted)

    await wait_for(acked_on_server, what="the auto-ack of the last direct")
    await asyncio.wait_for(first.close(), timeout(5))

    # auto-acked: a device without a position gets nothing old...
    fresh = clients(server.ws_url, user="dave")
    on_fresh: list[Direct] = []
    fresh.on("direct", on_fresh.append)
    await asyncio.wait_for(fresh.connect(), timeout(5))
    await settled(fresh)
    assert on_fresh == []
    # ...and a client resuming from the persisted position gets only what came after it
    later = await send(server, "dave", "later")
    resumed = clients(server.ws_url, user="dave", user_since=persisted)
    on_resumed: list[Direct] = []
    resumed.on("direct", on_resumed.append)
    welcome = await asyncio.wait_for(resumed.connect(), timeout(5))
    assert welcome.stream is not None and welcome.stream.since == persisted and welcome.stream.recovered
    await wait_for(lambda: len(on_resumed) == 1, what="the direct after the position")
    await settled(resumed)
    assert [d.position for d in on_resumed] == [later]
    await wait_for(lambda: len(on_fresh) == 1, what="the live direct on the other device")


async def test_send_between_clients_reports_positions(server: Running, clients: Callable[..., Client]) -> None:
    alice = clients(server.ws_url, user="alice")
    erin = clients(server.ws_url, user="erin")
    got: list[Direct] = []
    erin.on("direct", got.append)
    await asyncio.wait_for(asyncio.gather(alice.connect(), erin.connect()), timeout(5))
    positions = await asyncio.wait_for(alice.send(["erin"], {"hi": 1}, idempotency_key="hi-erin-1"), timeout(5))
    again = await asyncio.wait_for(alice.send(["erin"], {"hi": 1}, idempotency_key="hi-erin-1"), timeout(5))
    assert set(positions) == {"erin"} and again == positions  # the retry was applied once
    await wait_for(lambda: len(got) == 1, what="the direct")
    await settled(erin)
    assert len(got) == 1 and got[0].sender == "alice" and got[0].position == positions["erin"]
