"""Tokens do not outlive ``exp``: a connection is closed with 4005 at its token's ``exp`` unless
the client refreshed the token over the connection (``{"type":"refresh","token":...}``, same
user); ``jwt_require_exp`` refuses tokens without ``exp``. Real servers, short token lifetimes,
every wait bounded."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from typing import Any

import aiohttp
import jwt
import pytest

from pushgate.errors import CloseCode
from pushgate.web.connection import Connection
from pushgate.web.expiry import TokenDeadline

from .conftest import ServerFactory
from .helpers import timeout

SECRET = "token-expiry-test-secret-long-enough-for-hs256"


def token(sub: str = "alice", seconds: float | None = 60, secret: str = SECRET, **claims: Any) -> str:
    body: dict[str, Any] = {"sub": sub, **claims}
    if seconds is not None:
        body["exp"] = int(time.time() + seconds)
    return jwt.encode(body, secret, algorithm="HS256")


async def until(moment: float) -> None:
    """Sleep until wall-clock ``moment`` (the point of these tests is a wall-clock deadline)."""
    await asyncio.sleep(max(0.0, moment - time.time()))


async def test_a_connection_is_closed_with_4005_at_exp(make_server: ServerFactory) -> None:
    running = await make_server(jwt_secret=SECRET)
    exp = int(time.time()) + 2
    client = await running.client(f"token={jwt.encode({'sub': 'alice', 'exp': exp}, SECRET)}")
    await client.ok({"type": "subscribe", "channel": "news"})
    assert await client.wait_closed(seconds=6) == CloseCode.TOKEN_EXPIRED
    assert time.time() >= exp
    assert await _gone(running)


async def _gone(running: Any) -> bool:
    deadline = time.monotonic() + timeout(5)
    while running.node.hub.connections and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return not running.node.hub.connections


async def test_refresh_moves_the_deadline_to_the_new_exp(make_server: ServerFactory) -> None:
    running = await make_server(jwt_secret=SECRET)
    old_exp = int(time.time()) + 2
    client = await running.client(f"token={jwt.encode({'sub': 'alice', 'exp': old_exp}, SECRET)}")
    await client.ok({"type": "subscribe", "channel": "news"})
    new_exp = old_exp + 2
    reply = await client.ok({"type": "refresh", "token": jwt.encode({"sub": "alice", "exp": new_exp}, SECRET)})
    assert reply["exp"] == new_exp

    await until(old_exp + 0.5)
    assert (await client.request({"type": "ping"}))["type"] == "pong"  # still open after the old exp
    status, _ = await running.api("POST", "/api/publish", {"channel": "news", "data": "after the old exp"})
    assert status == 200 and (await client.next("message"))["data"] == "after the old exp"
    assert await client.wait_closed(seconds=6) == CloseCode.TOKEN_EXPIRED
    assert time.time() >= new_exp


@pytest.mark.parametrize(
    ("new_token", "code"),
    [
        pytest.param(lambda: token("mallory"), "permission_denied", id="another-user"),
        pytest.param(lambda: token("alice", secret="another-secret-that-is-also-long-enough"), "unauthorized",
                     id="bad-signature"),
        pytest.param(lambda: token("alice", seconds=-10), "unauthorized", id="expired"),
        pytest.param(lambda: "not.a.jwt", "unauthorized", id="garbage"),
    ],
)
async def test_a_refused_refresh_keeps_the_old_deadline(make_server: ServerFactory, new_token: Any,
                                                        code: str) -> None:
    running = await make_server(jwt_secret=SECRET)
    exp = int(time.time()) + 2
    client = await running.client(f"token={jwt.encode({'sub': 'alice', 'exp': exp}, SECRET)}")
    reply = await client.request({"type": "refresh", "token": new_token()})
    assert reply["type"] == "error" and reply["code"] == code, reply
    assert (await client.request({"type": "ping"}))["type"] == "pong"  # an error reply, not a close
    assert await client.wait_closed(seconds=6) == CloseCode.TOKEN_EXPIRED


async def test_refreshed_claims_apply_to_later_commands(make_server: ServerFactory) -> None:
    running = await make_server(jwt_secret=SECRET)
    client = await running.client(f"token={token(channels=['a'])}")
    await client.ok({"type": "subscribe", "channel": "a"})
    await client.ok({"type": "refresh", "token": token(channels=["b"])})
    await client.ok({"type": "subscribe", "channel": "b"})
    reply = await client.request({"type": "subscribe", "channel": "c"})
    assert reply["code"] == "permission_denied"


async def test_a_token_without_exp_never_expires_unless_exp_is_required(make_server: ServerFactory) -> None:
    lenient = await make_server(jwt_secret=SECRET)
    client = await lenient.client(f"token={token(seconds=None)}")
    assert (await client.ok({"type": "refresh", "token": token(seconds=None)}))["exp"] is None

    strict = await make_server(jwt_secret=SECRET, jwt_require_exp=True)
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await strict.client(f"token={token(seconds=None)}")
    assert info.value.status == 401
    client = await strict.client(f"token={token()}")
    reply = await client.request({"type": "refresh", "token": token(seconds=None)})
    assert reply["code"] == "unauthorized" and "exp" in reply["message"]


async def test_refresh_in_dev_mode_is_a_harmless_no_op(make_server: ServerFactory) -> None:
    running = await make_server()
    client = await running.client("user=alice")
    assert (await client.ok({"type": "refresh", "token": "anything"}))["exp"] is None
    assert client.welcome["user"] == "alice"


class FakeConn(Connection):
    transport_name = "test"

    def __init__(self) -> None:
        super().__init__("c1", "alice")
        self.closes: list[int] = []

    def send(self, out: Any) -> None:
        pass

    def _close(self, code: int, reason: str) -> None:
        self.closed = True
        self.closes.append(code)


async def test_token_deadline_fires_once_and_is_cancelled_or_re_armed() -> None:
    """The timer itself, without a server: one call_at, cancel, re-arm, and no strong reference."""
    conn = FakeConn()
    deadline = TokenDeadline(conn)
    deadline.set(time.time() - 1)  # already past: fires on the next loop iteration
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert conn.closes == [CloseCode.TOKEN_EXPIRED]

    other = FakeConn()
    deadline = TokenDeadline(other)
    deadline.set(time.time() + 0.05)
    deadline.set(time.time() + 60)  # re-armed: the first moment no longer counts
    await asyncio.sleep(0.1)
    deadline.cancel()
    assert other.closes == []

    # the loop's timer does not keep a dropped connection alive until exp
    dropped = FakeConn()
    ref = weakref.ref(dropped)
    TokenDeadline(dropped).set(time.time() + 3600)
    del dropped
    gc.collect()
    assert ref() is None
