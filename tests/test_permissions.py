"""Every client operation goes through the Authorizer, over a real server: the token's
``channels`` claim limits publish, presence and history (not only subscribe), ``send`` is limited
by the ``send`` claim and ``on_send`` hooks, ``subscribe = "authenticated"`` namespaces refuse
anonymous clients for every operation, and ``presence = "subscribers"`` answers only subscribers.
A refusal is an error reply (``permission_denied``); the connection stays open."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt

import pushgate

from .conftest import ServerFactory
from .helpers import WsClient, direct_body

SECRET = "permissions-test-secret-long-enough-for-hs256"


def token(sub: str, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 300, **claims}, SECRET, algorithm="HS256")


def config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "pushgate.toml"
    path.write_text(text)
    return str(path)


async def refused(client: WsClient, cmd: dict[str, Any], code: str = "permission_denied") -> str:
    reply = await client.request(cmd)
    assert reply["type"] == "error" and reply["code"] == code, reply
    return str(reply["message"])


async def test_the_channels_claim_limits_publish_and_presence(make_server: ServerFactory, tmp_path: Path) -> None:
    conf = config(tmp_path, "[namespaces.chat]\npublish = true\n[namespaces.private]\npublish = true\n")
    running = await make_server(jwt_secret=SECRET, config_file=conf)
    alice = await running.client(f"token={token('alice', channels=['chat:lobby'])}")
    await alice.ok({"type": "subscribe", "channel": "chat:lobby"})
    await alice.ok({"type": "publish", "channel": "chat:lobby", "data": "allowed"})
    assert (await alice.next("message"))["data"] == "allowed"

    for channel in ("chat:secret", "private:bob"):
        message = await refused(alice, {"type": "publish", "channel": channel, "data": "sneaky"})
        assert channel in message
        await refused(alice, {"type": "presence", "channel": channel})
    assert (await alice.ok({"type": "presence", "channel": "chat:lobby"}))["users"] == ["alice"]
    # nothing reached the refused channel, and the connection is still usable
    _, history = await running.api("GET", "/api/history/chat:secret")
    assert history["publications"] == []
    assert (await alice.request({"type": "ping"}))["type"] == "pong"


async def test_the_send_claim_limits_recipients(make_server: ServerFactory) -> None:
    running = await make_server(jwt_secret=SECRET)
    alice = await running.client(f"token={token('alice', send=['bob', 'support-*'])}")
    bob = await running.client(f"token={token('bob')}")
    carol = await running.client(f"token={token('carol')}")

    message = await refused(alice, {"type": "send", "to": ["carol"], "data": "hi"})
    assert "carol" in message
    await refused(alice, {"type": "send", "to": ["bob", "carol"], "data": "hi"})  # all or nothing
    await alice.ok({"type": "send", "to": ["bob"], "data": "hi bob"})
    assert direct_body(await bob.next("direct")) == {"type": "direct", "from": "alice", "data": "hi bob"}
    await carol.nothing_more()
    # without the claim a user may send to anyone
    await bob.ok({"type": "send", "to": ["carol"], "data": "hi carol"})
    assert (await carol.next("direct"))["from"] == "bob"


async def test_anonymous_dev_mode_clients_cannot_use_an_authenticated_namespace(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    running = await make_server(config_file=config(tmp_path, '[namespaces.private]\nsubscribe = "authenticated"\n'))
    anonymous = await running.client()
    for cmd in ({"type": "publish", "channel": "private:inbox", "data": "spam"},
                {"type": "presence", "channel": "private:inbox"},
                {"type": "subscribe", "channel": "private:inbox"}):
        await refused(anonymous, cmd)
    await anonymous.ok({"type": "publish", "channel": "news", "data": 1})  # other namespaces stay open

    alice = await running.client("user=alice")
    await alice.ok({"type": "subscribe", "channel": "private:inbox"})
    await alice.ok({"type": "publish", "channel": "private:inbox", "data": "mine"})
    assert (await alice.next("message"))["data"] == "mine"


async def test_presence_subscribers_answers_only_subscribers(make_server: ServerFactory, tmp_path: Path) -> None:
    running = await make_server(config_file=config(tmp_path, '[namespaces.room]\npresence = "subscribers"\n'))
    alice = await running.client("user=alice")
    bob = await running.client("user=bob")
    await alice.ok({"type": "subscribe", "channel": "room:1"})

    assert "subscribers" in await refused(bob, {"type": "presence", "channel": "room:1"})
    assert (await alice.ok({"type": "presence", "channel": "room:1"}))["users"] == ["alice"]
    await bob.ok({"type": "subscribe", "channel": "room:1"})
    assert (await bob.ok({"type": "presence", "channel": "room:1"}))["users"] == ["alice", "bob"]
    await bob.ok({"type": "unsubscribe", "channel": "room:1"})
    await refused(bob, {"type": "presence", "channel": "room:1"})
    # the HTTP API is the backend's own door: not limited
    _, presence = await running.api("GET", "/api/presence/room:1")
    assert presence["users"] == ["alice"]


async def test_on_send_hooks_may_reject_a_client_send(make_server: ServerFactory) -> None:
    app = pushgate.App()
    seen: list[tuple[str | None, list[str], Any]] = []

    @app.on_send
    def guard(client: pushgate.ClientInfo, users: list[str], data: Any) -> None:
        seen.append((client.user, users, data))
        if "ceo" in users:
            raise pushgate.Reject("write to the assistant")

    running = await make_server(app=app)
    alice = await running.client("user=alice")
    ceo = await running.client("user=ceo")
    bob = await running.client("user=bob")
    reply = await alice.request({"type": "send", "to": ["ceo"], "data": {"text": "hi"}})
    assert reply["type"] == "error" and reply["code"] == "rejected" and reply["message"] == "write to the assistant"
    await alice.ok({"type": "send", "to": ["bob"], "data": {"text": "hi"}})
    assert (await bob.next("direct"))["data"] == {"text": "hi"}
    await ceo.nothing_more()
    assert seen == [("alice", ["ceo"], {"text": "hi"}), ("alice", ["bob"], {"text": "hi"})]
    # the HTTP API's sends are the backend's own: no hook
    status, _ = await running.api("POST", "/api/send", {"users": ["ceo"], "data": "from ops"})
    assert status == 200 and (await ceo.next("direct"))["data"] == "from ops"
    assert len(seen) == 2
