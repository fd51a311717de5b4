"""The Python client follows the user stream (direct messages) against a scripted server:
positions and duplicates, ``user_since`` on every handshake, the welcome's ``stream``, coalesced
acks and auto-ack, the user-stream resync, ``send`` positions, and the jittered "reconnect now".

Unit level: the server is :class:`ScriptedServer` (real sockets, frames written here), so these
tests pin the client's side of the contract exactly; the end-to-end tests against the real
server are in ``test_user_stream_e2e.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest

from pushgate.client import (
    Client,
    ClientClosed,
    Direct,
    EventStream,
    Position,
    Resync,
    State,
    StateChange,
    UsageError,
    UserStream,
    Welcome,
)
from pushgate.client._userstream import UserStreamPosition

from ..helpers import timeout
from .scripted import ScriptedServer


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., Client]]:
    made: list[Client] = []

    def factory(url: str, **kwargs: Any) -> Client:
        kwargs.setdefault("user", "bob")
        kwargs.setdefault("min_delay", 0.02)
        kwargs.setdefault("max_delay", 0.2)
        kwargs.setdefault("now_jitter", 0.02)
        kwargs.setdefault("request_timeout", timeout(5))
        c = Client(url, **kwargs)
        made.append(c)
        return c

    yield factory
    for c in made:
        await asyncio.wait_for(c.close(), timeout(5))


def direct(offset: int, epoch: str = "e1", data: Any = None) -> dict[str, Any]:
    return {"type": "direct", "from": "alice", "data": data if data is not None else offset,
            "offset": offset, "epoch": epoch}


def stream(epoch: str, offset: int, recovered: bool) -> Callable[[Mapping[str, str]], dict[str, Any]]:
    return lambda _query: {"epoch": epoch, "offset": offset, "recovered": recovered}


async def take(events: EventStream, n: int) -> list[Any]:
    return [await asyncio.wait_for(anext(events), timeout(5)) for _ in range(n)]


async def settled(client: Client) -> None:
    """A ping round trip: every push the server sent before the pong has been handled."""
    await asyncio.wait_for(client.ping(), timeout(5))


# -- the position, without I/O ------------------------------------------------------------------


def test_position_dedupes_within_an_epoch_and_follows_a_new_epoch() -> None:
    pos = UserStreamPosition(None)
    assert pos.is_new(Position("e1", 1))
    pos.delivered(Position("e1", 5))
    assert not pos.is_new(Position("e1", 5)) and not pos.is_new(Position("e1", 2))
    assert pos.is_new(Position("e1", 6)) and pos.is_new(Position("e2", 1))
    pos.welcomed(UserStream(Position("e1", 9), recovered=True))
    assert pos.position == Position("e1", 5)  # the head is not taken: the replay moves it
    pos.welcomed(UserStream(Position("e2", 3), recovered=False))
    assert pos.position == Position("e2", 0)  # history lost: ask for the new epoch from its start
    pos.resync(Position("e3", 7))
    assert pos.position == Position("e3", 7) and not pos.is_new(Position("e3", 7))
    fresh = UserStreamPosition(None)
    fresh.welcomed(UserStream(Position("e1", 4), recovered=False))
    assert fresh.position is None  # no position: the server sends what is unacked; nothing to dedupe


def test_now_jitter_must_not_be_negative() -> None:
    with pytest.raises(ValueError):
        Client("ws://127.0.0.1:1/ws", now_jitter=-1)


# -- directs, duplicates, recovery --------------------------------------------------------------


async def test_directs_carry_positions_and_duplicates_are_dropped(clients: Callable[..., Client]) -> None:
    async with ScriptedServer(stream("e1", 0, False)) as server:
        client = clients(server.ws_url)
        directs = client.events("direct")  # before connect: the replay after the welcome reaches it
        welcome = await asyncio.wait_for(client.connect(), timeout(5))
        assert welcome.stream == UserStream(Position("e1", 0), recovered=False, since=None)
        assert not welcome.stream.maybe_missed  # no position was passed: nothing to report
        conn = await server.accept()
        assert "user_since" not in conn.query and conn.query["user"] == "bob"
        for frame in (direct(1), direct(2), direct(2), direct(1), direct(3)):
            await conn.push(frame)
        await conn.push({"type": "direct", "from": None, "data": "old server"})  # no position
        await conn.push(direct(1, epoch="e2"))  # a new epoch starts a new sequence
        got = await take(directs, 5)
        assert [(d.epoch, d.offset) for d in got] == [("e1", 1), ("e1", 2), ("e1", 3), (None, None), ("e2", 1)]
        assert all(isinstance(d, Direct) for d in got) and got[0].sender == "alice" and got[0].data == 1
        assert got[2].position == Position("e1", 3) and got[3].position is None
        assert client.user_position == Position("e2", 1)


async def test_every_handshake_passes_the_position_and_the_replay_is_taken_once(
        clients: Callable[..., Client]) -> None:
    heads = iter([("e1", 7, True), ("e1", 8, True), ("e2", 3, False), ("e2", 3, True)])

    def next_stream(_query: Mapping[str, str]) -> dict[str, Any]:
        epoch, offset, recovered = next(heads)
        return {"epoch": epoch, "offset": offset, "recovered": recovered}

    async with ScriptedServer(next_stream) as server:
        client = clients(server.ws_url, user_since=Position("e1", 5))
        directs = client.events("direct")
        welcomes = client.events("welcome")
        await asyncio.wait_for(client.connect(), timeout(5))
        conn = await server.accept()
        assert conn.query["user_since"] == "e1:5"  # the position the app gave
        await conn.push(direct(6))
        await conn.push(direct(7))
        assert [d.offset for d in await take(directs, 2)] == [6, 7]
        assert client.user_position == Position("e1", 7)
        await take(welcomes, 1)

        await conn.close(1012, "restart")  # "reconnect now", jittered within now_jitter
        conn = await server.accept()
        assert conn.query["user_since"] == "e1:7"
        (again,) = await take(welcomes, 1)
        assert isinstance(again, Welcome) and again.stream is not None
        assert again.stream.since == Position("e1", 7) and not again.stream.maybe_missed
        await conn.push(direct(7))  # the replay overlaps what was delivered: dropped
        await conn.push(direct(8))
        assert [d.offset for d in await take(directs, 1)] == [8]

        await conn.close(4000, "reconnect")
        conn = await server.accept()
        assert conn.query["user_since"] == "e1:8"
        (lost,) = await take(welcomes, 1)
        assert isinstance(lost, Welcome) and lost.stream is not None and lost.stream.maybe_missed
        assert client.user_position == Position("e2", 0)  # history was lost: from the new epoch's start
        await conn.push(direct(2, epoch="e2"))  # what the server still keeps, oldest first
        await conn.push(direct(3, epoch="e2"))
        assert [(d.epoch, d.offset) for d in await take(directs, 2)] == [("e2", 2), ("e2", 3)]
        await conn.close(4000, "reconnect")
        conn = await server.accept()
        assert conn.query["user_since"] == "e2:3"


async def test_a_direct_no_listener_takes_does_not_move_the_position(clients: Callable[..., Client]) -> None:
    async with ScriptedServer(stream("e1", 0, False)) as server:
        client = clients(server.ws_url, auto_ack=True)
        await asyncio.wait_for(client.connect(), timeout(5))
        conn = await server.accept()
        await conn.push(direct(1))
        await settled(client)
        assert client.user_position is None and conn.commands.empty()  # not taken, not acked
        directs = client.events("direct")
        await conn.push(direct(1))  # so the next connection's replay brings it to the listener
        assert [d.offset for d in await take(directs, 1)] == [1]
        assert client.user_position == Position("e1", 1)
        ack = await conn.command()
        assert ack == {"id": ack["id"], "type": "ack", "epoch": "e1", "offset": 1}
        await conn.reply(ack, epoch="e1", offset=1)


async def test_user_stream_resync_moves_the_position_and_tells_the_app(clients: Callable[..., Client]) -> None:
    async with ScriptedServer(stream("e1", 0, False)) as server:
        client = clients(server.ws_url)
        resyncs = client.events("resync")
        directs = client.events("direct")
        await asyncio.wait_for(client.connect(), timeout(5))
        conn = await server.accept()
        await conn.push(direct(1))
        await conn.push({"type": "resync", "stream": "user", "epoch": "e3", "offset": 10})
        await conn.push(direct(10, epoch="e3"))  # at the resync position: already covered
        await conn.push(direct(11, epoch="e3"))
        (event,) = await take(resyncs, 1)
        assert event == Resync(None, Position("e3", 10)) and isinstance(event, Resync) and event.stream == "user"
        assert [(d.epoch, d.offset) for d in await take(directs, 2)] == [("e1", 1), ("e3", 11)]
        assert client.user_position == Position("e3", 11)
        assert client.welcome is not None and client.welcome.client == "c1"  # same connection


# -- acks -----------------------------------------------------------------------------------------


async def test_acks_are_coalesced_one_in_flight_then_the_highest(clients: Callable[..., Client]) -> None:
    async with ScriptedServer(stream("e1", 3, False)) as server:
        client = clients(server.ws_url)
        await asyncio.wait_for(client.connect(), timeout(5))
        conn = await server.accept()
        first = asyncio.ensure_future(client.ack(Position("e1", 1)))
        cmd = await conn.command()
        assert (cmd["type"], cmd["epoch"], cmd["offset"]) == ("ack", "e1", 1)
        later = [asyncio.ensure_future(client.ack(Position("e1", n))) for n in (3, 2)]
        await settled(client)  # the two later acks are registered, and nothing more went out
        assert conn.commands.empty()
        await conn.reply(cmd, epoch="e1", offset=1)
        assert await asyncio.wait_for(first, timeout(5)) == Position("e1", 1)
        cmd = await conn.command()
        assert (cmd["type"], cmd["epoch"], cmd["offset"]) == ("ack", "e1", 3)  # one ack, the highest
        await conn.reply(cmd, epoch="e1", offset=3)
        assert await asyncio.wait_for(asyncio.gather(*later), timeout(5)) == [Position("e1", 3)] * 2
        await settled(client)
        assert conn.commands.empty()

        # a stale epoch: the server answers with the stored position, which the caller gets
        stale = asyncio.ensure_future(client.ack(Direct("alice", None, 9, "e0")))
        cmd = await conn.command()
        await conn.reply(cmd, epoch="e1", offset=3)
        assert await asyncio.wait_for(stale, timeout(5)) == Position("e1", 3)
        with pytest.raises(UsageError):
            await client.ack(Direct("alice", "from an old server"))


async def test_auto_ack_acks_delivered_directs_coalesced(clients: Callable[..., Client]) -> None:
    async with ScriptedServer(stream("e1", 0, False)) as server:
        client = clients(server.ws_url, auto_ack=True)
        directs = client.events("direct")
        await asyncio.wait_for(client.connect(), timeout(5))
        conn = await server.accept()
        for n in (1, 2, 3):
            await conn.push(direct(n))
        await take(directs, 3)
        first = await conn.command()
        assert first["type"] == "ack" and 1 <= first["offset"] <= 3
        await conn.push(direct(4))
        await take(directs, 1)
        await settled(client)
        assert conn.commands.empty()  # at most one ack in flight
        await conn.reply(first, epoch="e1", offset=first["offset"])
        nxt = await conn.command()
        assert (nxt["type"], nxt["offset"]) == ("ack", 4)
        await conn.reply(nxt, epoch="e1", offset=4)
        await settled(client)
        assert conn.commands.empty()


async def test_an_ack_waiting_when_the_client_closes_raises_client_closed(clients: Callable[..., Client]) -> None:
    async with ScriptedServer(stream("e1", 0, False)) as server:
        client = clients(server.ws_url)
        await asyncio.wait_for(client.connect(), timeout(5))
        conn = await server.accept()
        pending = asyncio.ensure_future(client.ack(Position("e1", 1)))
        await conn.command()
        queued = asyncio.ensure_future(client.ack(Position("e1", 2)))
        await asyncio.wait_for(client.close(), timeout(5))
        for fut in (pending, queued):
            with pytest.raises(ClientClosed):
                await asyncio.wait_for(fut, timeout(5))


# -- send -------------------------------------------------------------------------------------------


async def test_send_returns_positions_and_carries_the_idempotency_key(clients: Callable[..., Client]) -> None:
    async with ScriptedServer(stream("e1", 0, False), user="alice") as server:
        client = clients(server.ws_url, user="alice")
        await asyncio.wait_for(client.connect(), timeout(5))
        conn = await server.accept()
        sent = asyncio.ensure_future(client.send(["bob", "carol"], {"hi": 1}, idempotency_key="k-1"))
        cmd = await conn.command()
        assert cmd == {"id": cmd["id"], "type": "send", "to": ["bob", "carol"], "data": {"hi": 1},
                       "idempotency_key": "k-1"}
        await conn.reply(cmd, positions={"bob": {"epoch": "b1", "offset": 7}, "carol": {"epoch": "c1", "offset": 2}})
        assert await asyncio.wait_for(sent, timeout(5)) == {"bob": Position("b1", 7), "carol": Position("c1", 2)}
        old = asyncio.ensure_future(client.send("bob", 1))
        cmd = await conn.command()
        assert "idempotency_key" not in cmd and cmd["to"] == ["bob"]
        await conn.reply(cmd)  # a server without user streams reports no positions
        assert await asyncio.wait_for(old, timeout(5)) == {}


# -- reconnect "now", jittered ------------------------------------------------------------------


async def test_reconnect_now_waits_a_random_delay_within_now_jitter(clients: Callable[..., Client]) -> None:
    async with ScriptedServer() as server:
        delays: list[float] = []
        for jitter in (0.3, 0.3, 0.3, 0.0):
            client = clients(server.ws_url, now_jitter=jitter)
            states = client.events("state")
            await asyncio.wait_for(client.connect(), timeout(5))
            conn = await server.accept()
            await conn.close(1012, "restart")
            while True:
                change = (await take(states, 1))[0]
                if isinstance(change, StateChange) and change.state is State.DISCONNECTED:
                    break
            assert change.code == 1012 and change.delay is not None and 0.0 <= change.delay <= jitter
            delays.append(change.delay)
            await server.accept()  # it came back
            await client.close()
        assert delays[-1] == 0.0  # now_jitter=0: at once, as before
        assert len(set(delays[:3])) == 3  # random, not one constant for the whole crowd
