"""Refusals and failures the Python client makes diagnosable: the server's code and message on a
refused handshake, a connect timeout with what the attempts met, the server's close reason."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import jwt
import pytest

import pushgate
from pushgate.app import ClientInfo
from pushgate.client import Client, ClientClosed, ConnectTimeout, HandshakeError, State

from ..conftest import ServerFactory
from ..helpers import free_port, timeout


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., Client]]:
    made: list[Client] = []

    def factory(url: str, **kwargs: Any) -> Client:
        kwargs.setdefault("min_delay", 0.05)
        kwargs.setdefault("max_delay", 0.2)
        kwargs.setdefault("request_timeout", timeout(5))
        made.append(c := Client(url, **kwargs))
        return c

    yield factory
    for c in made:
        await asyncio.wait_for(c.close(), timeout(5))


async def test_expired_token_keeps_the_servers_code_and_message(make_server: ServerFactory,
                                                                clients: Callable[..., Client]) -> None:
    secret = "s" * 32
    running = await make_server(jwt_secret=secret)
    expired = jwt.encode({"sub": "alice", "exp": int(time.time()) - 60}, secret, algorithm="HS256")
    client = clients(running.ws_url, token=expired)
    with pytest.raises(HandshakeError) as refused:
        await asyncio.wait_for(client.connect(), timeout(5))
    err = refused.value
    assert (err.status, err.code) == (401, "unauthorized")
    assert "expired" in err.reason.lower()
    assert "401" in str(err) and err.reason in str(err)
    assert client.state is State.CLOSED and err.reason in client.close_reason


async def test_a_connect_hooks_own_code_reaches_the_client(make_server: ServerFactory,
                                                          clients: Callable[..., Client]) -> None:
    app = pushgate.App()

    @app.on_connect
    async def gate(client: ClientInfo) -> None:
        if client.user == "mallory":
            raise pushgate.Reject("mallory is banned", code="banned")

    running = await make_server(app=app)
    with pytest.raises(HandshakeError) as refused:
        await asyncio.wait_for(clients(running.ws_url, user="mallory").connect(), timeout(5))
    assert (refused.value.status, refused.value.code, refused.value.reason) == (403, "banned", "mallory is banned")


async def test_a_session_of_your_own_still_gives_the_status(make_server: ServerFactory,
                                                            clients: Callable[..., Client]) -> None:
    import aiohttp

    running = await make_server(jwt_secret="s" * 32)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(HandshakeError) as refused:
            await asyncio.wait_for(clients(running.ws_url, session=session).connect(), timeout(5))
    assert (refused.value.status, refused.value.code) == (401, "unauthorized")


async def test_connect_timeout_against_a_port_nobody_listens_on(clients: Callable[..., Client]) -> None:
    client = clients(f"ws://127.0.0.1:{free_port()}/ws", user="alice", connect_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(ConnectTimeout) as timed_out:
        await asyncio.wait_for(client.connect(), timeout(5))
    assert time.monotonic() - started < timeout(3)
    assert isinstance(timed_out.value, TimeoutError)
    assert "cannot connect" in timed_out.value.last_error
    assert client.state is State.CLOSED


async def test_the_servers_close_reason_is_surfaced(make_server: ServerFactory,
                                                    clients: Callable[..., Client]) -> None:
    running = await make_server()
    client = clients(running.ws_url, user="dave")
    await asyncio.wait_for(client.connect(), timeout(5))
    status, _ = await running.api("POST", "/api/disconnect", {"user": "dave", "reason": "kicked by admin"})
    assert status in (200, 202, 204)
    assert await asyncio.wait_for(client.wait_closed(), timeout(5)) == 4500
    assert client.close_reason == "kicked by admin"
    with pytest.raises(ClientClosed) as closed:
        await client.publish("news", 1)
    assert (closed.value.close_code, closed.value.reason) == (4500, "kicked by admin")
