"""The destination mapping and the shared MESSAGE encoding, without sockets."""

from __future__ import annotations

import pytest

from pushgate.backends.broker import Publication
from pushgate.errors import ClientError
from pushgate.protocol.outgoing import message_outgoing
from pushgate.web.stomp_connection import Subscription, message_frame, parse_ack_id
from pushgate.web.stomp_destinations import (
    AppDestination,
    ChannelDestination,
    Destinations,
    UserDestination,
    UserSendDestination,
)

D = Destinations(("/topic", "/chat", "/topic-archive"), "/app", "/user", "/queue/messages")


def test_broker_prefixes_map_onto_channels() -> None:
    assert D.for_subscribe("/topic/news") == ChannelDestination("news", "/topic/news")
    assert D.for_subscribe("/topic/a/b") == ChannelDestination("a/b", "/topic/a/b")
    assert D.for_subscribe("/chat/lobby") == ChannelDestination("chat:lobby", "/chat/lobby")
    assert D.for_subscribe("/topic-archive/x").channel == "topic-archive:x"  # longest prefix wins
    for bad in ("/topic/", "/topic/has space", "/topicx/a", "/queue/a", "/nowhere"):
        with pytest.raises(ClientError):
            D.for_subscribe(bad)


def test_user_app_and_send_destinations() -> None:
    assert D.for_subscribe("/user/queue/inbox") == UserDestination("/queue/inbox")
    assert D.for_send("/user/bob/queue/inbox") == UserSendDestination("bob", "/queue/inbox")
    assert D.for_send("/app/chat.send") == AppDestination("/chat.send")
    assert D.for_send("/topic/x") == ChannelDestination("x", "/topic/x")
    with pytest.raises(ClientError):
        D.for_send("/user/bob")
    assert D.user_suffix(None) == "/queue/messages" and D.user_suffix("/queue/a") == "/queue/a"


def test_ack_ids_round_trip() -> None:
    assert parse_ack_id("sub:0:ep0ch:42") == ("sub:0", parse_ack_id("sub:0:ep0ch:42")[1])  # type: ignore[index]
    parsed = parse_ack_id("s:e:7")
    assert parsed is not None and parsed[0] == "s" and parsed[1].epoch == "e" and parsed[1].offset == 7
    assert parse_ack_id("nonsense") is None and parse_ack_id("a:b:c") is None


def test_a_message_is_encoded_once_per_subscription_key() -> None:
    out = message_outgoing(Publication("news", b'{"a":1}', 3, "ep"))
    built: list[str] = []

    def build(pub: Publication) -> bytes:
        built.append(pub.channel)
        return message_frame(Subscription("sub-0", "/topic/news", "news"), "1.2", pub, pub.data)

    key = ("1.2", "sub-0", "/topic/news", "auto")
    first = out.encoded(key, build)
    assert out.encoded(key, build) is first and built == ["news"]
    out.encoded(("1.2", "sub-1", "/topic/news", "auto"), build)
    assert len(built) == 2
    assert b"message-id:sub-0\\cep\\c3\n" in first  # STOMP 1.2 escapes the colons
    assert first.endswith(b'{"a":1}\x00')
