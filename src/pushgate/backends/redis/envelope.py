"""What travels on the pub/sub topics: publications, join/leave events and user messages.

Written for speed on purpose: a publication is ``b"P<offset>:<epoch>:<data>"``, built by the
publish script inside Redis and parsed by the broker's ``_on_message`` with one split, so the
raw JSON ``data`` passes through without re-encoding. Events are ``b"J"``/``b"L"`` +
(``b"="`` + user | ``b""``) on the channel's topic. User messages are one msgpack array,
encoded once for all recipients; broadcast payloads are the raw data itself.

A user message of kind ``ack`` is checked when decoded (its data must be a position, see
:func:`pushgate.backends.broker.parse_ack`), so the node never sees a malformed one: a decode
error makes the broker drop it like any invalid message. A node of an older version that does
not know ``ack`` drops it the same way (and counts it), which is harmless: acks are
notifications, the acknowledged position itself is kept in Redis.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from pushgate.backends.broker import ChannelEvent, UserMessage, parse_ack

__all__ = [
    "PUBLICATION_TAG",
    "decode_event",
    "decode_user",
    "decode_user_message",
    "encode_event",
    "encode_user",
    "encode_user_message",
]

PUBLICATION_TAG = ord("P")
_EVENT_TAGS: dict[str, bytes] = {"join": b"J", "leave": b"L"}
_EVENT_KINDS: dict[int, Literal["join", "leave"]] = {ord("J"): "join", ord("L"): "leave"}


def encode_user(user: str | None) -> bytes:
    """Anonymous is the empty string; a named user is ``=`` + name (so ``""`` stays a name).

    Also the encoding of users in presence hashes (:mod:`.presence`).
    """
    return b"" if user is None else b"=" + user.encode()


def decode_user(raw: bytes) -> str | None:
    return raw[1:].decode() if raw else None


def encode_event(event: ChannelEvent) -> bytes:
    return _EVENT_TAGS[event.kind] + encode_user(event.user)


def decode_event(channel: str, payload: bytes) -> ChannelEvent | None:
    kind = _EVENT_KINDS.get(payload[0]) if payload else None
    if kind is None:
        return None
    return ChannelEvent(channel=channel, kind=kind, user=decode_user(payload[1:]))


class _UserEnvelope(msgspec.Struct, array_like=True):
    kind: Literal["direct", "disconnect", "ack"]
    sender: str | None
    data: bytes
    code: int
    reason: str


_user_encoder = msgspec.msgpack.Encoder()
_user_decoder = msgspec.msgpack.Decoder(_UserEnvelope)


def encode_user_message(message: UserMessage) -> bytes:
    return _user_encoder.encode(_UserEnvelope(message.kind, message.sender, message.data, message.code, message.reason))


def decode_user_message(payload: bytes) -> UserMessage:
    """ValueError (msgspec.DecodeError is one) when the payload is not a valid user message."""
    env = _user_decoder.decode(payload)
    if env.kind == "ack":
        parse_ack(env.data)  # only acks pay for this check
    return UserMessage(kind=env.kind, sender=env.sender, data=env.data, code=env.code, reason=env.reason)
