"""One server frame, encoded once per wire format and shared by every connection that gets it.

Written for speed on purpose: fan-out hands the same :class:`Outgoing` to thousands of
connections; each asks for the encoding of its transport and the first ask builds it. Server
WebSocket frames are unmasked (RFC 6455 §5.1), so the framed bytes are identical for every peer.
No I/O here: this module only turns payloads into bytes.
"""

from __future__ import annotations

from ..backends.broker import Publication
from . import jsonwire, wsframe


class Outgoing:
    """One server frame's JSON payload, with its per-transport encodings made lazily, once."""

    __slots__ = ("_sse", "_sse_chunk", "_ws", "event_id", "payload")

    def __init__(self, payload: bytes, event_id: str | None = None) -> None:
        self.payload = payload
        self.event_id = event_id  # SSE `id:` (epoch:offset of a publication) for Last-Event-ID
        self._ws: bytes | None = None
        self._sse: bytes | None = None
        self._sse_chunk: bytes | None = None

    def ws(self) -> bytes:
        if self._ws is None:
            self._ws = wsframe.server_frame(self.payload)
        return self._ws

    def sse(self) -> bytes:
        if self._sse is None:
            head = b"id: " + self.event_id.encode() + b"\n" if self.event_id else b""
            self._sse = head + b"data: " + self.payload + b"\n\n"
        return self._sse

    def sse_chunk(self) -> bytes:
        """The SSE event as one HTTP/1.1 chunk, for streams with chunked transfer encoding."""
        if self._sse_chunk is None:
            self._sse_chunk = chunk(self.sse())
        return self._sse_chunk


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked HTTP/1.1 body (RFC 9112 §7.1)."""
    return b"%x\r\n" % len(data) + data + b"\r\n"


def message_outgoing(pub: Publication) -> Outgoing:
    """The frame of one publication, for every transport."""
    payload = jsonwire.message_frame(pub.channel, pub.data, pub.offset, pub.epoch)
    return Outgoing(payload, f"{pub.epoch}:{pub.offset}")
