"""SockJS framing, sans I/O: the frames a SockJS server sends and the bodies it reads.

The SockJS protocol (the sockjs-protocol test suite is its definition) wraps every message the
application sends in a small text frame: ``o`` (the session is open), ``h`` (heartbeat),
``a[...]`` (a JSON array of messages) and ``c[code,"reason"]`` (closed). Clients send a JSON
array of strings (``xhr_send``, and usually the websocket transport) or a single JSON string
(allowed on the websocket transport). Nothing here does I/O or knows about STOMP: the session
(:mod:`.sockjs_session`) and the HTTP edge (:mod:`.sockjs`) use these functions.

Encode once still holds over SockJS: the STOMP edge frames a MESSAGE once per (publication,
subscription key) as WebSocket bytes, shared by every subscriber. :class:`MessageCache` turns
those shared bytes into the JSON string literal SockJS carries, once, keyed by the very bytes
object (a dict lookup that compares identity first), so N SockJS subscribers cost one JSON
escape, not N.
"""

from __future__ import annotations

import re

import msgspec

OPEN = b"o"
HEARTBEAT = b"h"
#: xhr-streaming first sends 2 KiB of ``h`` and a newline: some browsers deliver nothing of a
#: streaming response to the page before they have seen that much of it.
STREAMING_PRELUDE = b"h" * 2048 + b"\n"
WELCOME = b"Welcome to SockJS!\n"

#: close codes the protocol itself uses (sockjs-protocol "Handling close")
ANOTHER_CONNECTION = 2010
ANOTHER_CONNECTION_REASON = "Another connection still open"
GO_AWAY = 3000
GO_AWAY_REASON = "Go away!"

#: session and server ids: no dots, no slashes, not empty (the routes enforce that); a bound on
#: the length keeps hostile ids from filling the session table with large keys
MAX_ID_LENGTH = 128

_json_encode = msgspec.json.encode
_json_decode = msgspec.json.decode
# Characters some browsers mangle in a text response (sockjs-protocol "JSON Unicode Encoding",
# escapable_by_server): msgspec leaves non-ASCII text as it is, so these are escaped after it.
_SERVER_ESCAPE = re.compile("[\u200c-\u200f\u2028-\u202f\u2060-\u206f\ufff0-\uffff]")


class BodyError(ValueError):
    """A client body that is not what the transport accepts; the message is for the client."""


def valid_id(value: str) -> bool:
    """A ``<server>`` or ``<session>`` URL segment the server accepts (routes rule out ``/``)."""
    return 0 < len(value) <= MAX_ID_LENGTH and "." not in value and "/" not in value


def _escape_more(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def json_string(text: str) -> bytes:
    """``text`` as a JSON string literal, with the escapes the SockJS protocol asks of servers."""
    encoded = _json_encode(text)
    if encoded.isascii():
        return encoded
    escaped = _SERVER_ESCAPE.sub(_escape_more, encoded.decode())
    return escaped.encode()


def message_frame(messages: list[bytes]) -> bytes:
    """``a[...]`` from messages that are already JSON string literals (:func:`json_string`)."""
    if len(messages) == 1:
        return b"a[" + messages[0] + b"]"
    return b"a[" + b",".join(messages) + b"]"


def close_frame(code: int, reason: str) -> bytes:
    """``c[code,"reason"]``."""
    return b"c[%d," % code + json_string(reason) + b"]"


def parse_send_body(body: bytes) -> list[str]:
    """The messages of an ``xhr_send`` body: a JSON array of strings. Raises :class:`BodyError`
    with the protocol's wording ("Payload expected.", "Broken JSON encoding.")."""
    if not body:
        raise BodyError("Payload expected.")
    try:
        value = _json_decode(body)
    except msgspec.DecodeError as exc:
        raise BodyError("Broken JSON encoding.") from exc
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        raise BodyError("Payload must be a JSON array of strings.")
    return value


def parse_ws_message(text: str) -> list[str]:
    """The messages of one websocket-transport message: a JSON array of strings or one string;
    an empty message carries none (the protocol says to ignore it). Raises :class:`BodyError`."""
    if not text:
        return []
    try:
        value = _json_decode(text)
    except msgspec.DecodeError as exc:
        raise BodyError("Broken JSON encoding.") from exc
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        raise BodyError("Payload must be a JSON array of strings.")
    return value


def ws_payload(framed: bytes) -> bytes:
    """The payload of one unmasked, final server WebSocket frame (RFC 6455 §5.2), as
    :func:`pushgate.protocol.wsframe.server_frame` builds them: the STOMP edge hands its
    connections pre-framed bytes, SockJS needs the text inside."""
    n = framed[1] & 0x7F
    if n < 126:
        return framed[2:]
    if n == 126:
        return framed[4:]
    return framed[10:]


class MessageCache:
    """WebSocket-framed STOMP frames → SockJS message literals, computed once per shared frame.

    Bounded by the bytes it holds (oldest entries go first): fan-out frames are looked up by
    every subscriber within one loop iteration, so a small cache catches them; one-off frames
    (RECEIPT, CONNECTED) pass through and age out.
    """

    def __init__(self, max_bytes: int = 8 << 20) -> None:
        self._entries: dict[bytes, bytes] = {}
        self._bytes = 0
        self._max = max_bytes

    def literal(self, framed: bytes) -> bytes:
        """The JSON string literal carrying ``framed``'s text (hot path: one dict lookup)."""
        hit = self._entries.get(framed)
        if hit is not None:
            return hit
        text = ws_payload(framed).decode("utf-8", "replace")  # STOMP text; bodies are JSON
        literal = json_string(text)
        size = len(framed) + len(literal)
        if size <= self._max:
            entries = self._entries
            while entries and self._bytes + size > self._max:
                old = next(iter(entries))
                self._bytes -= len(old) + len(entries.pop(old))
            entries[framed] = literal
            self._bytes += size
        return literal

    def __len__(self) -> int:
        return len(self._entries)
