"""The Authorizer, asked directly: every rule, without a server."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from pushgate.app import App, ClientInfo
from pushgate.auth import Authorizer
from pushgate.config import NamespaceConfig, load_config
from pushgate.errors import ClientError, Reject


def info(user: str | None = "alice", claims: dict[str, Any] | None = None) -> ClientInfo:
    return ClientInfo("n1.x.1", user, "n1", "websocket", claims)


def authorizer(app: App | None = None, **settings: Any) -> Authorizer:
    namespaces = settings.pop("namespaces", {})
    cfg = load_config(env={}, cli=settings)
    if namespaces:
        from dataclasses import replace

        cfg = replace(cfg, namespaces=namespaces)
    return Authorizer(cfg, app)


async def denied(coro_or_call: Any) -> str:
    with pytest.raises(ClientError) as info_:
        result = coro_or_call()
        if hasattr(result, "__await__"):
            await result
    return info_.value.code


async def test_subscribe_is_open_by_default() -> None:
    await authorizer().subscribe(info(None), "news")


async def test_an_authenticated_namespace_refuses_anonymous_subscribers() -> None:
    az = authorizer(namespaces={"private": NamespaceConfig(subscribe="authenticated")})
    assert await denied(lambda: az.subscribe(info(None), "private:x")) == "permission_denied"
    await az.subscribe(info("bob"), "private:x")


async def test_the_token_channels_claim_limits_subscribes_by_glob() -> None:
    az = authorizer()
    claims = {"sub": "alice", "channels": ["chat:lobby", "news:*"]}
    await az.subscribe(info("alice", claims), "chat:lobby")
    await az.subscribe(info("alice", claims), "news:today")
    assert await denied(lambda: az.subscribe(info("alice", claims), "chat:secret")) == "permission_denied"


async def test_subscribe_hooks_run_after_the_rules_and_may_reject() -> None:
    app = App()
    seen: list[str] = []

    @app.on_subscribe
    def hook(client: ClientInfo, channel: str) -> None:
        seen.append(channel)
        if channel == "vip":
            raise Reject("members only")

    az = authorizer(app, namespaces={"private": NamespaceConfig(subscribe="authenticated")})
    await az.subscribe(info(), "news")
    assert await denied(lambda: az.subscribe(info(), "vip")) == "rejected"
    # a rule that refuses first means the hook is never asked
    assert await denied(lambda: az.subscribe(info(None), "private:x")) == "permission_denied"
    assert seen == ["news", "vip"]


async def test_client_publish_follows_the_mode_and_the_namespace() -> None:
    dev = authorizer()
    dev.publish(info(), "chat")  # dev mode: allowed by default
    jwt = authorizer(jwt_secret="s" * 32)
    assert await denied(lambda: jwt.publish(info(), "chat")) == "permission_denied"
    opened = authorizer(jwt_secret="s" * 32, namespaces={"chat": NamespaceConfig(publish=True)})
    opened.publish(info(), "chat:room")
    closed = authorizer(namespaces={"feed": NamespaceConfig(publish=False)})
    assert await denied(lambda: closed.publish(info(), "feed:x")) == "permission_denied"


async def test_only_named_users_may_send() -> None:
    az = authorizer()
    az.send(info("alice"), ["bob"])
    assert await denied(lambda: az.send(info(None), ["bob"])) == "permission_denied"


async def test_presence_and_history_are_open_without_claims_or_namespace_rules() -> None:
    az = authorizer()
    az.presence(info(None), "news")
    az.history(info(None), "news")


@dataclass
class Conn:
    """What the node passes for a connection: user, claims and the channels it is subscribed to."""

    user: str | None
    claims: dict[str, Any] | None = None
    channels: set[str] = field(default_factory=set)


LOBBY_ONLY = {"sub": "alice", "channels": ["chat:lobby"]}


async def test_the_channels_claim_limits_every_channel_operation() -> None:
    az = authorizer(namespaces={"chat": NamespaceConfig(publish=True)})
    who = Conn("alice", LOBBY_ONLY)
    az.publish(who, "chat:lobby")
    az.presence(who, "chat:lobby")
    az.history(who, "chat:lobby")
    for check in (az.publish, az.presence, az.history):
        assert await denied(lambda check=check: check(who, "chat:secret")) == "permission_denied"
        assert await denied(lambda check=check: check(who, "private:bob")) == "permission_denied"


async def test_an_authenticated_namespace_refuses_anonymous_publish_presence_and_history() -> None:
    az = authorizer(namespaces={"private": NamespaceConfig(subscribe="authenticated", publish=True)})
    anonymous = Conn(None)
    for check in (az.publish, az.presence, az.history):
        assert await denied(lambda check=check: check(anonymous, "private:x")) == "permission_denied"
        check(Conn("bob"), "private:x")
    az.publish(anonymous, "news")  # other namespaces keep their own rules


async def test_publish_checks_the_namespace_switch_before_the_claims() -> None:
    az = authorizer(jwt_secret="k" * 40, namespaces={"chat": NamespaceConfig(publish=True)})
    with pytest.raises(ClientError, match="clients may not publish"):
        az.publish(Conn("alice", LOBBY_ONLY), "news")
    with pytest.raises(ClientError, match="token does not allow"):
        az.publish(Conn("alice", LOBBY_ONLY), "chat:secret")


async def test_presence_subscribers_answers_only_subscribers() -> None:
    az = authorizer(namespaces={"room": NamespaceConfig(presence="subscribers")})
    member = Conn("alice", channels={"room:1"})
    az.presence(member, "room:1")
    assert await denied(lambda: az.presence(member, "room:2")) == "permission_denied"
    assert await denied(lambda: az.presence(Conn("bob"), "room:1")) == "permission_denied"
    # a subject without `channels` (a ClientInfo) is subscribed to nothing
    assert await denied(lambda: az.presence(info("alice"), "room:1")) == "permission_denied"
    az.presence(Conn("bob"), "news")  # other namespaces stay open


async def test_the_send_claim_limits_recipients_by_glob() -> None:
    az = authorizer()
    who = Conn("alice", {"sub": "alice", "send": ["bob", "support-*"]})
    az.send(who, ["bob", "support-1"])
    assert await denied(lambda: az.send(who, ["bob", "carol"])) == "permission_denied"
    assert await denied(lambda: az.send(Conn("alice", {"sub": "alice", "send": []}), ["bob"])) == "permission_denied"
    az.send(Conn("alice", {"sub": "alice"}), ["anyone"])  # no claim: anyone


async def test_send_hooks_see_the_sender_recipients_and_data_and_may_reject() -> None:
    app = App()
    seen: list[tuple[str | None, list[str], Any]] = []

    @app.on_send
    async def hook(client: ClientInfo, users: list[str], data: Any) -> None:
        seen.append((client.user, users, data))
        if "ceo" in users:
            raise Reject("write to the assistant")

    az = authorizer(app)
    await az.send_hooks(info("alice"), ("bob",), {"text": "hi"})
    assert await denied(lambda: az.send_hooks(info("alice"), ["ceo"], "hi")) == "rejected"
    assert seen == [("alice", ["bob"], {"text": "hi"}), ("alice", ["ceo"], "hi")]
    await authorizer().send_hooks(info("alice"), ["ceo"], None)  # no app, no hooks
