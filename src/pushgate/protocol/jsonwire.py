"""pushgate's JSON wire protocol, sans I/O: bytes in, commands out; events in, bytes out.

Decoding never raises: a bad frame becomes a :class:`DecodeError` carrying the protocol error
code and the request ``id`` (when one could be read), so the transport can answer and keep the
connection open. ``data`` fields are kept as raw JSON (:class:`msgspec.Raw`) and are never
re-encoded: the bytes a publisher sent are the bytes every subscriber receives.

Server frames on the fan-out path are built by byte concatenation once per publication.
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec

RequestId = int | str | None


class Since(msgspec.Struct, frozen=True):
    epoch: str
    offset: int


class Subscribe(msgspec.Struct, tag="subscribe", tag_field="type", frozen=True):
    channel: str
    since: Since | None = None
    id: RequestId = None


class Unsubscribe(msgspec.Struct, tag="unsubscribe", tag_field="type", frozen=True):
    channel: str
    id: RequestId = None


class Publish(msgspec.Struct, tag="publish", tag_field="type", frozen=True):
    channel: str
    data: msgspec.Raw
    id: RequestId = None
    idempotency_key: str | None = None  # a retry with the same key is not applied twice


class Send(msgspec.Struct, tag="send", tag_field="type", frozen=True):
    to: list[str]
    data: msgspec.Raw
    id: RequestId = None
    idempotency_key: str | None = None  # a retry with the same key is applied once per recipient
    destination: str | None = None  # for STOMP recipients: their /user<destination> subscription


class Presence(msgspec.Struct, tag="presence", tag_field="type", frozen=True):
    channel: str
    id: RequestId = None


class Ping(msgspec.Struct, tag="ping", tag_field="type", frozen=True):
    id: RequestId = None


class Ack(msgspec.Struct, tag="ack", tag_field="type", frozen=True):
    """The user has processed its stream up to (epoch, offset)."""

    epoch: str
    offset: int
    id: RequestId = None


class Rpc(msgspec.Struct, tag="rpc", tag_field="type", frozen=True):
    method: str
    data: msgspec.Raw = msgspec.Raw(b"null")
    id: RequestId = None


class Refresh(msgspec.Struct, tag="refresh", tag_field="type", frozen=True):
    """A new token for this connection, sent before the old one's ``exp`` (same user)."""

    token: str
    id: RequestId = None


Command = Subscribe | Unsubscribe | Publish | Send | Presence | Ping | Rpc | Refresh | Ack
COMMAND_TYPES: Final = frozenset(
    {"subscribe", "unsubscribe", "publish", "send", "presence", "ping", "rpc", "refresh", "ack"}
)


class DecodeError(msgspec.Struct, frozen=True):
    """A frame that is not a valid command; answer it with an error reply."""

    code: str  # bad_json | unknown_type | bad_request
    message: str
    id: RequestId = None


_command_decoder: Final = msgspec.json.Decoder(Command)
_any_decoder: Final = msgspec.json.Decoder()
_encode: Final = msgspec.json.encode


def decode_command(frame: bytes | str) -> Command | DecodeError:
    """Parse one client frame. Never raises."""
    try:
        command: Command = _command_decoder.decode(frame)
    except msgspec.DecodeError as exc:
        return _explain(frame, exc)
    except RecursionError:
        return DecodeError("bad_request", "frame nests too deeply", _find_id(frame))
    return command


_ID_MEMBER: Final = re.compile(rb'"id"\s*:\s*(-?\d{1,18}|"[^"\\]{0,200}")')


def _find_id(frame: bytes | str) -> RequestId:
    """Best effort: the request id of a frame too deep to parse, read from the top-level members
    before the first nested value or after the last one (where every client puts it), so the
    error reply still names the request."""
    raw = frame.encode() if isinstance(frame, str) else frame
    body = raw.strip()[1:]
    cut = min((i for i in (body.find(b"["), body.find(b"{")) if i >= 0), default=len(body))
    end = max(body.rfind(b"]"), body.rfind(b"}", 0, len(body) - 1))
    for part in (body[: min(cut, 1024)], body[end + 1 :][-1024:] if end >= 0 else b""):
        match = _ID_MEMBER.search(part)
        if match is not None:
            value = match.group(1)
            return value[1:-1].decode("utf-8", "replace") if value[:1] == b'"' else int(value)
    return None


def _explain(frame: bytes | str, exc: msgspec.DecodeError) -> DecodeError:
    """Sort a failed decode into bad_json / unknown_type / bad_request (cold path)."""
    try:
        obj = _any_decoder.decode(frame)
    except msgspec.DecodeError:
        return DecodeError("bad_json", "frame is not valid JSON")
    except RecursionError:
        return DecodeError("bad_request", "frame nests too deeply", _find_id(frame))
    if not isinstance(obj, dict):
        return DecodeError("bad_request", "frame must be a JSON object")
    rid = obj.get("id")
    if not isinstance(rid, int | str) or isinstance(rid, bool):
        rid = None
    kind = obj.get("type")
    if not isinstance(kind, str):
        return DecodeError("bad_request", "missing field `type`", rid)
    if kind not in COMMAND_TYPES:
        return DecodeError("unknown_type", f"unknown command type {kind!r}", rid)
    return DecodeError("bad_request", str(exc), rid)


# --- server frames -------------------------------------------------------------------------

def stamp(sender: str, data: bytes) -> bytes:
    """A channel publication's stored form with its publisher: ``=<sender>\n<data>``.

    Stored and carried by every broker as opaque bytes, so brokers, history and recovery need
    no field for it. Unambiguous because JSON text never begins with ``=``; a user id holds
    no newline (:data:`pushgate.names.NAME_RE`).
    """
    return b"=" + sender.encode() + b"\n" + data


def unstamp(entry: bytes) -> tuple[str | None, bytes]:
    """(publisher, JSON data) of a stored channel publication (publisher None: not stamped)."""
    if entry[:1] != b"=":
        return None, entry
    head, _, data = entry.partition(b"\n")
    return head[1:].decode("utf-8", "replace"), data  # never raises, whatever a broker handed back


def message_frame(channel: str, data: bytes, offset: int, epoch: str) -> bytes:
    """``{"type":"message",...}`` for one publication, with ``"from"`` when the publication is
    stamped with its publisher (:func:`stamp`). Hot path: built once, sent to many."""
    sender = None
    if data[:1] == b"=":
        sender, data = unstamp(data)
    return b"".join(
        (
            b'{"type":"message","channel":',
            _encode(channel),
            b',"data":',
            data,
            b',"offset":',
            str(offset).encode(),
            b',"epoch":',
            _encode(epoch),
            b"}" if sender is None else b',"from":' + _encode(sender) + b"}",
        )
    )


def direct_frame(sender: str | None, data: bytes) -> bytes:
    return b'{"type":"direct","from":' + _encode(sender) + b',"data":' + data + b"}"


def direct_envelope(sender: str | None, data: bytes, destination: str | None = None) -> bytes:
    """What a user stream stores per message: ``{"from":...,"data":...}`` (raw ``data``), plus
    the ``destination`` a STOMP client subscribes to (``/user/queue/<name>``) when one was given."""
    head = b'{"from":' + _encode(sender)
    if destination is not None:
        head += b',"destination":' + _encode(destination)
    return head + b',"data":' + data + b"}"


def stream_direct_frame(envelope: bytes, offset: int, epoch: str) -> bytes:
    """``{"type":"direct","from":..,"data":..,"offset":..,"epoch":..}`` from a user stream's
    stored envelope. Hot path: built by concatenation once per message, sent to every device."""
    return b"".join(
        (b'{"type":"direct",', envelope[1:-1], b',"offset":', str(offset).encode(), b',"epoch":', _encode(epoch), b"}")
    )


def broadcast_frame(data: bytes) -> bytes:
    return b'{"type":"broadcast","data":' + data + b"}"


def resync_frame(channel: str, epoch: str, offset: int) -> bytes:
    """``{"type":"resync",...}``: the channel's stream goes on from (epoch, offset) and messages
    before it may have been missed; the subscription stays, the client keeps its connection.
    For the connection's own user stream the frame names ``"stream":"user"`` instead."""
    if channel.startswith("!u:"):
        return _encode({"type": "resync", "stream": "user", "epoch": epoch, "offset": offset})
    return _encode({"type": "resync", "channel": channel, "epoch": epoch, "offset": offset})


def channel_event_frame(kind: str, channel: str, user: str | None) -> bytes:
    return _encode({"type": kind, "channel": channel, "user": user})


def welcome_frame(
    client: str, user: str | None, node: str, stream: tuple[str, int, bool] | None = None
) -> bytes:
    """The first frame; ``stream`` = (epoch, offset, recovered) of a named user's stream."""
    body: dict[str, Any] = {"type": "welcome", "client": client, "user": user, "node": node}
    if stream is not None:
        body["stream"] = {"epoch": stream[0], "offset": stream[1], "recovered": stream[2]}
    return _encode(body)


def ok_frame(rid: RequestId, fields: dict[str, Any] | None = None) -> bytes:
    """Success reply echoing the request ``id``; ``fields`` may hold :class:`msgspec.Raw` values."""
    body: dict[str, Any] = {"type": "ok"} if rid is None else {"id": rid, "type": "ok"}
    if fields:
        body.update(fields)
    return _encode(body)


def error_frame(rid: RequestId, code: str, message: str) -> bytes:
    body: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if rid is not None:
        body = {"id": rid, **body}
    return _encode(body)


def pong_frame(rid: RequestId) -> bytes:
    return b'{"type":"pong"}' if rid is None else _encode({"id": rid, "type": "pong"})
