"""One server frame, encoded once per wire format and shared by every connection that gets it.

Written for speed on purpose: fan-out hands the same :class:`Outgoing` to thousands of
connections; each asks for the encoding of its transport and the first ask builds it. Server
WebSocket frames are unmasked (RFC 6455 §5.1), so the framed bytes are identical for every peer.
No I/O here: this module only turns payloads into bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable

from ..backends.broker import Publication, StreamPosition
from . import jsonwire, wsframe
from .wsframe import MAX_CLOSE_REASON as MAX_CLOSE_REASON  # re-exported: transports cut reasons here
from .wsframe import close_reason as close_reason

# SSE line terminators (WHATWG HTML, "Parsing an event stream"): CRLF, LF or a lone CR.
_SSE_LINE_BREAK = re.compile(rb"\r\n|\r|\n")


class Outgoing:
    """One server frame's JSON payload, with its per-transport encodings made lazily, once.

    ``pub`` is the publication the frame carries (set by :func:`message_outgoing`): protocols
    that do not speak pushgate's JSON frames (STOMP) build their own frame from it, and cache it
    here with :meth:`encoded` so that it too is built once and shared by every connection.
    """

    __slots__ = ("_encoded", "_sse", "_sse_chunk", "_ws", "event_id", "payload", "pub", "resync")

    def __init__(self, payload: bytes, event_id: str | None = None, pub: Publication | None = None,
                 resync: tuple[str, StreamPosition] | None = None) -> None:
        self.payload = payload
        self.event_id = event_id  # SSE `id:` (epoch:offset of a publication) for Last-Event-ID
        self.pub = pub
        #: (channel, position) of a resync frame (:func:`resync_outgoing`), for protocols that
        #: tell it their own way (STOMP) instead of parsing the JSON payload back
        self.resync = resync
        self._ws: bytes | None = None
        self._sse: bytes | None = None
        self._sse_chunk: bytes | None = None
        self._encoded: dict[Hashable, bytes] | None = None

    def ws(self) -> bytes:
        if self._ws is None:
            self._ws = wsframe.server_frame(self.payload)
        return self._ws

    def sse(self) -> bytes:
        if self._sse is None:
            head = b"id: " + self.event_id.encode() + b"\n" if self.event_id else b""
            self._sse = head + sse_data(self.payload) + b"\n"
        return self._sse

    def encoded(self, key: Hashable, build: Callable[[Publication], bytes]) -> bytes:
        """The bytes ``build(self.pub)`` returns, built on the first ask for ``key`` and then reused.

        Hot path for STOMP fan-out: a MESSAGE frame differs between connections only by what
        ``key`` names (version, subscription id, destination, ack mode), so a thousand
        subscribers with the same subscription id (stompjs numbers them ``sub-0``, ``sub-1``...)
        share one encoding. Only for frames that carry a publication (``pub`` is set).
        """
        cache = self._encoded
        if cache is None:
            cache = self._encoded = {}
        else:
            hit = cache.get(key)
            if hit is not None:
                return hit
        assert self.pub is not None, "encoded() needs an Outgoing built by message_outgoing()"
        value = cache[key] = build(self.pub)
        return value

    def sse_chunk(self) -> bytes:
        """The SSE event as one HTTP/1.1 chunk, for streams with chunked transfer encoding."""
        if self._sse_chunk is None:
            self._sse_chunk = chunk(self.sse())
        return self._sse_chunk


def sse_data(payload: bytes) -> bytes:
    """The ``data:`` lines of one SSE event carrying ``payload`` (without the blank line ending it).

    A raw CR or LF in the payload would end the field, and a blank line the whole event, so a
    publication whose JSON has line breaks as whitespace (``{"x":\\n\\n1}`` is valid JSON) would
    reach the browser cut in two. Each line goes in its own ``data:`` field instead: the browser
    joins them with LF (WHATWG HTML, event stream interpretation), and LF where the JSON had CR,
    CRLF or LF is still JSON whitespace, so the event's data parses to the same value. Valid JSON
    has no raw line break inside a string, so only whitespace is touched. The check comes first
    so the common payload, without a line break, costs two ``in`` scans and no copy of lines.
    """
    if b"\n" not in payload and b"\r" not in payload:
        return b"data: " + payload + b"\n"
    return b"".join(b"data: " + line + b"\n" for line in _SSE_LINE_BREAK.split(payload))


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked HTTP/1.1 body (RFC 9112 §7.1)."""
    return b"%x\r\n" % len(data) + data + b"\r\n"


def resync_outgoing(channel: str, position: StreamPosition) -> Outgoing:
    """The in-band resync of ``channel`` (a channel or a user stream) at ``position``, for every
    transport; its SSE ``id`` is the position, so a browser's Last-Event-ID resumes from it."""
    payload = jsonwire.resync_frame(channel, position.epoch, position.offset)
    return Outgoing(payload, f"{position.epoch}:{position.offset}", resync=(channel, position))


def message_outgoing(pub: Publication) -> Outgoing:
    """The frame of one publication, for every transport.

    A user stream's publication (internal channel ``!u:<user>``) is a ``direct`` frame; it
    carries no SSE ``id``, because ``Last-Event-ID`` names a channel position (user streams
    recover with ``user_since``).
    """
    if pub.channel[:1] == "!":
        return Outgoing(jsonwire.stream_direct_frame(pub.data, pub.offset, pub.epoch), None, pub)
    payload = jsonwire.message_frame(pub.channel, pub.data, pub.offset, pub.epoch)
    return Outgoing(payload, f"{pub.epoch}:{pub.offset}", pub)
