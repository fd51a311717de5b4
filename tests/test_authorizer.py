"""The Authorizer, asked directly: every rule, without a server."""

from __future__ import annotations

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


async def test_presence_and_history_are_open() -> None:
    az = authorizer()
    az.presence(info(None), "news")
    az.history(info(None), "news")
