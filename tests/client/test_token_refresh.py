"""pushgate.client keeps a connection past its token's ``exp``: a token function is asked again
shortly before ``exp`` and the new token is sent as a ``refresh`` command; when that fails, or the
server closes with 4005, the client reconnects with a fresh token. Real servers, 2-3 s tokens."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import jwt
import pytest

from pushgate.client import Client, ErrorEvent, State, Subscription, Welcome
from pushgate.client._token import refresh_delay, token_expiry

from ..conftest import Running, ServerFactory
from ..helpers import timeout

SECRET = "client-refresh-test-secret-long-enough-for-hs256"


def token(sub: str = "alice", seconds: float = 2.5) -> str:
    return jwt.encode({"sub": sub, "exp": time.time() + seconds}, SECRET, algorithm="HS256")


class Tokens:
    """A token function that records its calls; ``plan`` maps a call number to a special token."""

    def __init__(self, seconds: float = 2.5, plan: dict[int, Callable[[], Any]] | None = None) -> None:
        self.seconds = seconds
        self.plan = plan or {}
        self.calls = 0
        self.issued: list[str] = []

    async def __call__(self) -> str:
        self.calls += 1
        special = self.plan.get(self.calls)
        if special is not None:
            value = special()
            made = str(await value if asyncio.iscoroutine(value) else value)
        else:
            made = token(seconds=self.seconds)
        self.issued.append(made)
        return made


@pytest.fixture
async def running(make_server: ServerFactory) -> Running:
    return await make_server(jwt_secret=SECRET, jwt_require_exp=True)


@pytest.fixture
async def opened() -> AsyncIterator[list[Client]]:
    made: list[Client] = []
    yield made
    for client in made:
        await asyncio.wait_for(client.close(), timeout(5))


async def start(running: Running, tokens: Tokens, opened: list[Client]) -> tuple[Client, list[Welcome]]:
    client = Client(running.ws_url, token=tokens, min_delay=0.05, max_delay=0.2, request_timeout=timeout(5))
    opened.append(client)
    welcomes: list[Welcome] = []
    client.on("welcome", welcomes.append)
    await asyncio.wait_for(client.connect(), timeout(5))
    return client, welcomes


async def publish_after(running: Running, moment: float, sub: Subscription, text: str) -> None:
    """Publish once wall-clock ``moment`` has passed, then read it from ``sub``."""
    await asyncio.sleep(max(0.0, moment - time.time()))
    status, _ = await running.api("POST", "/api/publish", {"channel": "news", "data": text})
    assert status == 200
    msg = await asyncio.wait_for(anext(sub), timeout(5))
    assert msg.data == text


async def test_the_client_refreshes_over_the_connection_and_stays_connected(
    running: Running, opened: list[Client]
) -> None:
    tokens = Tokens(seconds=2.5)
    client, welcomes = await start(running, tokens, opened)
    sub = await client.subscribe("news")
    first_exp = token_expiry(tokens.issued[0])
    assert first_exp is not None
    await publish_after(running, first_exp + 1.0, sub, "after the first exp")
    assert tokens.calls >= 2  # asked again for the refresh
    assert len(welcomes) == 1  # one connection all along: no 4005, no reconnect
    assert client.state is State.CONNECTED


async def test_a_refused_refresh_reconnects_with_a_fresh_token(running: Running, opened: list[Client]) -> None:
    tokens = Tokens(seconds=2.5, plan={2: lambda: token("mallory", 60)})  # 2nd call: the wrong user
    client, welcomes = await start(running, tokens, opened)
    errors: list[ErrorEvent] = []
    client.on("error", errors.append)
    sub = await client.subscribe("news")
    deadline = time.monotonic() + timeout(8)
    while len(welcomes) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert len(welcomes) == 2 and welcomes[1].user == "alice"
    assert errors and errors[0].code == "token" and "permission_denied" in errors[0].message
    await publish_after(running, time.time(), sub, "on the new connection")  # the subscription was renewed


async def test_a_4005_close_reconnects_with_a_fresh_token(running: Running, opened: list[Client]) -> None:
    async def too_late() -> str:  # the refresh's token comes after the server's deadline
        await asyncio.sleep(4)
        return token(seconds=60)

    tokens = Tokens(seconds=2.0, plan={2: too_late})
    client, welcomes = await start(running, tokens, opened)
    sub = await client.subscribe("news")
    deadline = time.monotonic() + timeout(8)
    while len(welcomes) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert len(welcomes) == 2, "no reconnect after 4005"
    assert tokens.calls >= 3  # the reconnect asked for a fresh token
    await publish_after(running, time.time(), sub, "after 4005")


def test_token_expiry_reads_exp_without_verifying() -> None:
    assert token_expiry(jwt.encode({"sub": "a", "exp": 1234}, "whatever-key-of-sufficient-length!")) == 1234.0
    assert token_expiry(jwt.encode({"sub": "a"}, "whatever-key-of-sufficient-length!")) is None
    no_padding = base64.urlsafe_b64encode(b'{"exp":99.5}').rstrip(b"=").decode()
    assert token_expiry(f"x.{no_padding}.y") == 99.5
    for bad in ("", "a.b", "a.!!!.c", "a." + base64.urlsafe_b64encode(b"[1]").decode() + ".c",
                "a." + base64.urlsafe_b64encode(b'{"exp":"soon"}').decode() + ".c"):
        assert token_expiry(bad) is None


@pytest.mark.parametrize(
    ("lifetime", "delay"),
    [(3600.0, 3060.0), (120.0, 90.0), (40.0, 20.0), (3.0, 1.5), (0.0, 0.0), (-5.0, 0.0)],
)
def test_refresh_delay_is_early_enough_but_never_a_busy_loop(lifetime: float, delay: float) -> None:
    assert refresh_delay(1000.0 + lifetime, 1000.0) == pytest.approx(delay)
