"""pushgate.client against real in-process servers: commands, pushes, reconnect and recovery."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import jwt
import pytest

from pushgate import App, Reject
from pushgate.client import (
    Action,
    Client,
    ClientClosed,
    Direct,
    Disconnected,
    HandshakeError,
    Message,
    Position,
    RequestError,
    State,
    StateChange,
    Subscribed,
    Subscription,
    Welcome,
    backoff,
    close_code_action,
)

from ..conftest import Running, ServerFactory
from ..helpers import free_port, timeout

T = TypeVar("T")


async def within(awaitable: Awaitable[T], seconds: float = 5.0) -> T:
    """Every wait in these tests is bounded (scaled by PUSHGATE_TEST_TIMEOUT_SCALE)."""
    return await asyncio.wait_for(awaitable, timeout(seconds))


async def take(sub: Subscription | AsyncIterator[Any], n: int) -> list[Any]:
    return [await within(anext(sub)) for _ in range(n)]


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., Client]]:
    """Make clients that are closed at teardown, failing the test if one hangs."""
    made: list[Client] = []

    def factory(url: str, **kwargs: Any) -> Client:
        kwargs.setdefault("min_delay", 0.05)
        kwargs.setdefault("max_delay", 0.5)
        kwargs.setdefault("request_timeout", timeout(5))
        c = Client(url, **kwargs)
        made.append(c)
        return c

    yield factory
    for c in made:
        await within(c.close())


def server_conn(running: Running, user: str) -> Any:
    return next(c for c in running.node.hub.connections.values() if c.user == user)


async def next_disconnect(states: AsyncIterator[Any]) -> StateChange:
    async for event in states:
        if isinstance(event, StateChange) and event.state is State.DISCONNECTED:
            return event
    raise AssertionError("state stream ended")


# -- policy (no server) -------------------------------------------------------------------------


def test_backoff_first_delay_random_within_min_then_exponential_and_capped() -> None:
    for seed in range(50):
        delays = backoff(0.5, 20.0, rng=random.Random(seed))
        got = [next(delays) for _ in range(12)]
        assert 0.0 <= got[0] <= 0.5
        assert all(0.0 <= d <= min(20.0, 0.5 * 2**n) for n, d in enumerate(got))
    firsts = {next(backoff(0.5, 20.0, rng=random.Random(seed))) for seed in range(20)}
    assert len(firsts) == 20  # jittered, not a constant first delay

    class Ceiling(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b

    caps = backoff(0.5, 20.0, rng=Ceiling())
    assert [next(caps) for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 20, 20, 20]
    with pytest.raises(ValueError):
        next(backoff(0, 1))


def test_close_code_actions_follow_the_protocol_table() -> None:
    assert close_code_action(1012) is close_code_action(4002) is Action.NOW
    for code in (1000, 1001, 1006, 1009, 1011, 4000, 4001, 4003, 4499, None):
        assert close_code_action(code) is Action.BACKOFF, code
    for code in (1008, 4500, 4501, 4999):
        assert close_code_action(code) is Action.STOP, code


# -- commands and pushes ------------------------------------------------------------------------


async def test_connect_returns_welcome_and_context_manager_closes(server: Running,
                                                                   clients: Callable[..., Client]) -> None:
    client = clients(server.ws_url, user="alice")
    welcome = await within(client.connect())
    assert isinstance(welcome, Welcome) and welcome.user == "alice" and welcome.node == server.node.id
    assert client.state is State.CONNECTED
    assert await within(client.ping()) >= 0
    async with Client(server.url + "/ws", user="bob") as bob:  # http:// URLs are accepted
        assert bob.welcome is not None and bob.welcome.user == "bob"
    assert bob.state is State.CLOSED and await within(bob.wait_closed()) == 1000
    with pytest.raises(ClientClosed):
        await bob.publish("news", 1)


async def test_subscribe_publish_roundtrip_and_async_iteration(server: Running,
                                                               clients: Callable[..., Client]) -> None:
    client = clients(server.ws_url, user="alice")
    await within(client.connect())
    await server.node.publish_json("news", "before")
    sub = await within(client.subscribe("news"))
    assert sub.position is not None and sub.position.offset == 1 and sub.recovered is False
    pos = await within(client.publish("news", {"text": "hi"}))
    assert isinstance(pos, Position) and pos.offset == 2
    await server.node.publish_json("news", [1, None, "x"])
    got = await take(sub, 2)
    assert [m.data for m in got] == [{"text": "hi"}, [1, None, "x"]]
    assert [m.offset for m in got] == [2, 3] and {m.epoch for m in got} == {pos.epoch}
    assert all(isinstance(m, Message) and m.channel == "news" for m in got)
    assert sub.position == Position(pos.epoch, 3)

    info = await within(client.presence("news"))
    assert info.users == ("alice",) and info.connections == 1

    await within(sub.unsubscribe())
    assert client.channels() == [] and not sub.active
    with pytest.raises(StopAsyncIteration):
        await within(anext(sub))


async def test_subscribe_with_handler_and_refusal(server: Running, clients: Callable[..., Client]) -> None:
    client = clients(server.ws_url, user="alice")
    await within(client.connect())
    seen: list[Any] = []
    done = asyncio.Event()

    async def handler(msg: Message) -> None:
        seen.append(msg.data)
        if len(seen) == 3:
            done.set()

    await within(client.subscribe("ticks", handler=handler))
    for i in range(3):
        await within(client.publish("ticks", i))
    await within(done.wait())
    assert seen == [0, 1, 2]
    with pytest.raises(RequestError) as refused:
        await within(client.subscribe("not a valid channel!"))
    assert refused.value.code == "bad_request" and not refused.value.retryable
    assert client.channels() == ["ticks"]


async def test_direct_message_is_stamped_by_the_server(server: Running, clients: Callable[..., Client]) -> None:
    alice = clients(server.ws_url, user="alice")
    bob = clients(server.ws_url, user="bob")
    await within(asyncio.gather(alice.connect(), bob.connect()))
    via_callback: asyncio.Queue[Direct] = asyncio.Queue()
    bob.on("direct", via_callback.put_nowait)
    async with bob.events("direct") as directs:
        await within(alice.send("bob", {"text": "hi bob"}))
        event = await within(anext(directs))
    assert isinstance(event, Direct) and event.sender == "alice" and event.data == {"text": "hi bob"}
    assert await within(via_callback.get()) == event


async def test_rpc_result_and_error_replies(make_server: ServerFactory, clients: Callable[..., Client]) -> None:
    app = App()

    @app.rpc("echo")
    async def echo(_client: Any, data: Any) -> Any:
        return {"echo": data}

    @app.rpc("deny")
    def deny(_client: Any, _data: Any) -> Any:
        raise Reject("not today")

    running = await make_server(app=app)
    client = clients(running.ws_url, user="alice")
    await within(client.connect())
    assert await within(client.rpc("echo", [1, 2])) == {"echo": [1, 2]}
    with pytest.raises(RequestError) as rejected:
        await within(client.rpc("deny"))
    assert rejected.value.code == "rejected" and rejected.value.message == "not today"
    with pytest.raises(RequestError) as unknown:
        await within(client.rpc("nope"))
    assert unknown.value.code == "unknown_method"
    assert await within(client.rpc("echo")) == {"echo": None}  # the connection stayed usable


# -- reconnect, recovery, stop ------------------------------------------------------------------


async def test_1012_reconnects_soon_and_recovers_missed_messages_in_order(
    server: Running, clients: Callable[..., Client]
) -> None:
    # The token provider runs before every connection attempt: holding it open keeps the client
    # disconnected (deterministically) while the server publishes.
    attempts = 0
    reconnecting, release = asyncio.Event(), asyncio.Event()

    async def token() -> str:
        nonlocal attempts
        attempts += 1
        if attempts > 1:
            reconnecting.set()
            await release.wait()
        return "dev-mode-ignores-it"

    client = clients(server.ws_url, user="alice", token=token, max_delay=5, now_jitter=0.1)
    states = client.events("state")
    first = await within(client.connect())
    sub = await within(client.subscribe("feed"))
    for i in range(3):
        await server.node.publish_json("feed", i)
    assert [m.data for m in await take(sub, 3)] == [0, 1, 2]

    server_conn(server, "alice").close(1012, "restart")
    await within(reconnecting.wait())
    for i in range(3, 8):
        await server.node.publish_json("feed", i)  # published while the client is away
    release.set()

    got = await take(sub, 5)
    await server.node.publish_json("feed", 8)  # and live again afterwards
    got += await take(sub, 1)
    assert [m.data for m in got] == [3, 4, 5, 6, 7, 8]
    assert [m.offset for m in got] == [4, 5, 6, 7, 8, 9]  # in order, nothing twice
    assert sub.recovered is True and sub.position is not None and sub.position.offset == 9
    assert client.welcome is not None and client.welcome.client != first.client

    change = await within(next_disconnect(states))
    assert change.code == 1012 and change.delay is not None and 0.0 <= change.delay <= 0.1  # "now", jittered...
    server_conn(server, "alice").close(1012, "restart again")
    change = await within(next_disconnect(states))
    assert change.code == 1012 and change.delay is not None and change.delay > 0  # ...once, then backoff
    await within(client.ping())


async def test_overlapping_replay_is_deduplicated_and_since_resumes_a_position(
    server: Running, clients: Callable[..., Client]
) -> None:
    client = clients(server.ws_url, user="alice")
    await within(client.connect())
    sub = await within(client.subscribe("dup"))
    for i in range(1, 4):
        await server.node.publish_json("dup", i)
    got = await take(sub, 3)
    # Make the next renewal ask for history the client already delivered (as when a replay
    # overlaps live traffic): the server replays offsets 2 and 3 again, the client must drop them.
    sub._position = Position(got[0].epoch, 1)
    server_conn(server, "alice").close(1012, "restart")
    async with client.events("subscribed") as renewed:
        event = await within(anext(renewed))
    assert isinstance(event, Subscribed) and event.resubscribe
    await server.node.publish_json("dup", 4)
    assert [m.data for m in await take(sub, 1)] == [4]

    # A position persisted from a message resumes on a fresh client (within the history window).
    other = clients(server.ws_url, user="bob")
    await within(other.connect())
    resumed = await within(other.subscribe("dup", since=got[1].position))
    assert resumed.recovered is True
    assert [m.data for m in await take(resumed, 2)] == [3, 4]


async def test_requests_in_flight_fail_with_disconnected_and_are_not_resent(
    make_server: ServerFactory, clients: Callable[..., Client]
) -> None:
    app = App()
    entered, release, calls = asyncio.Event(), asyncio.Event(), []

    @app.rpc("slow")
    async def slow(_client: Any, data: Any) -> Any:
        calls.append(data)
        entered.set()
        await release.wait()  # the connection is closed under it before it answers

    running = await make_server(app=app)
    client = clients(running.ws_url, user="alice")
    await within(client.connect())
    pending = asyncio.ensure_future(client.rpc("slow", 1))
    await within(entered.wait())
    server_conn(running, "alice").close(4000, "reconnect")
    with pytest.raises(Disconnected) as lost:
        await within(pending)
    assert lost.value.close_code == 4000
    await within(client.ping())  # reconnected with backoff; commands flow again
    assert calls == [1]
    release.set()


async def test_4500_disconnect_stops_reconnecting(server: Running, clients: Callable[..., Client]) -> None:
    client = clients(server.ws_url, user="alice")
    await within(client.connect())
    sub = await within(client.subscribe("news"))
    status, _ = await server.api("POST", "/api/disconnect", {"user": "alice"})
    assert status in (200, 202, 204)
    assert await within(client.wait_closed()) == 4500
    assert client.state is State.CLOSED and client.close_code == 4500
    with pytest.raises(ClientClosed) as closed:
        await within(anext(sub))  # the reader learns why its stream ended
    assert closed.value.close_code == 4500
    with pytest.raises(ClientClosed):
        await within(client.publish("news", 1))
    assert not server.node.hub.connections  # and it did not come back


async def test_refused_handshake_is_fatal_and_a_fresh_token_is_used(make_server: ServerFactory,
                                                                  clients: Callable[..., Client]) -> None:
    secret = "s" * 32
    running = await make_server(jwt_secret=secret)
    anonymous = clients(running.ws_url)
    with pytest.raises(HandshakeError) as refused:
        await within(anonymous.connect())
    assert refused.value.status == 401 and anonymous.state is State.CLOSED
    with pytest.raises(HandshakeError):
        await within(anonymous.wait_closed())

    client = clients(running.ws_url, token=lambda: jwt.encode({"sub": "carol"}, secret, algorithm="HS256"))
    welcome = await within(client.connect())
    assert welcome.user == "carol"


async def test_refused_connections_and_503_are_retried_with_backoff(make_server: ServerFactory,
                                                                   clients: Callable[..., Client]) -> None:
    port = free_port()
    client = clients(f"ws://127.0.0.1:{port}/ws", user="alice")
    states = client.events("state")
    connecting = asyncio.ensure_future(client.connect())
    retry = await within(next_disconnect(states))
    assert retry.code is None and retry.delay is not None and 0 <= retry.delay <= 0.05  # first: [0, min]
    assert not connecting.done()
    running = await make_server(port=port)
    welcome = await within(connecting)
    assert welcome.user == "alice"

    running.node.draining = True  # the node now answers the handshake with 503: retried, not fatal
    server_conn(running, "alice").close(1011, "server error")
    while True:  # skip refused retries queued before the server came up
        event = await within(next_disconnect(states))
        if event.code == 1011:
            break
        assert event.code is None and "cannot connect" in event.reason, event
    refused = await within(next_disconnect(states))
    assert "503" in refused.reason and client.state is not State.CLOSED
    running.node.draining = False
    await within(client.ping())
