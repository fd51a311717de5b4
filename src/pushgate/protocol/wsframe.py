"""RFC 6455 framing, sans I/O: server frames out, client frames in.

Server frames are never masked (§5.1), so one encoded frame is byte-for-byte valid for every
client: the fan-out path frames a publication once and writes the same bytes to each socket.

:class:`FrameParser` reads client frames: bytes go in with :meth:`FrameParser.feed`, events come
out (:class:`Message`, :class:`Ping`, :class:`Pong`, :class:`Close`, :class:`Failure`). It never
raises on what a peer sends: a protocol error becomes a :class:`Failure` carrying the close code
to fail the connection with (1002 protocol error, 1007 invalid UTF-8, 1009 too big; §7.4.1), and
the parser then ignores everything after it. Text is checked as UTF-8 as its bytes arrive, even
inside a frame not complete yet (§8.1 fail fast). It holds no buffer between frames, so an idle
connection costs it a few slots.
"""

from __future__ import annotations

import codecs
import struct
from dataclasses import dataclass

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_NO_STATUS = 1005  # §7.4.1: "no status code was actually present" (never sent on the wire)
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009
MAX_CONTROL_PAYLOAD = 125  # §5.5


def server_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One final (FIN=1), unmasked frame carrying ``payload``."""
    n = len(payload)
    first = 0x80 | opcode
    if n < 126:
        header = bytes((first, n))
    elif n < 65536:
        header = struct.pack("!BBH", first, 126, n)
    else:
        header = struct.pack("!BBQ", first, 127, n)
    return header + payload


MAX_CLOSE_REASON = 123  # a control frame's payload is at most 125 bytes (§5.5), 2 are the code


def close_reason(reason: str, limit: int = MAX_CLOSE_REASON) -> bytes:
    """``reason`` as a close frame's UTF-8 reason: at most ``limit`` bytes, cut on a character boundary.

    A reason cut mid-character is invalid UTF-8, which the peer must treat as a protocol error
    (RFC 6455 §8.1): it fails the connection with 1007 instead of reading our code, so a client
    kicked with 4500 would see 1007 and reconnect. Unencodable text (lone surrogates) becomes ``?``.
    """
    data = reason.encode("utf-8", "replace")
    if len(data) <= limit:
        return data
    # the first ``limit`` bytes are UTF-8 but for at most one incomplete character at the end
    return data[:limit].decode("utf-8", "ignore").encode()


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame (§5.5.1): 2-byte code then a UTF-8 reason, at most 125 bytes of payload."""
    return server_frame(struct.pack("!H", code) + close_reason(reason), OP_CLOSE)


def peer_close_code_valid(code: int) -> bool:
    """Whether a peer may send ``code`` in a close frame (RFC 6455 §7.4.1-§7.4.2; 0: no code).

    aiohttp's reader accepts 1006 and anything from 5000 up (its allow-list is its own
    ``WSCloseCode`` enum), while the RFC says 1005, 1006 and 1015 must never be on the wire
    and only 1000-4999 are defined: such a close is a protocol error, answered with 1002
    (Autobahn cases 7.9.5 and 7.13.x).
    """
    return code == 0 or 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def ping_frame(payload: bytes = b"") -> bytes:
    """A ping (§5.5.2); the peer answers with a pong carrying the same payload."""
    return server_frame(payload, OP_PING)


def pong_frame(payload: bytes) -> bytes:
    """The pong answering a ping with ``payload`` (§5.5.3)."""
    return server_frame(payload, OP_PONG)


def unmask(data: bytes | bytearray, mask: bytes) -> bytes:
    """``data`` XOR the repeated 4-byte ``mask`` (§5.3).

    Written for speed on purpose: one XOR of two big integers runs in C over the whole payload
    (a byte-at-a-time loop in Python is ~100x slower on a 64 KiB message).
    """
    n = len(data)
    if n == 0:
        return b""
    key = (mask * ((n + 3) >> 2))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


@dataclass(frozen=True, slots=True)
class Message:
    """A complete data message (its fragments joined); text is checked UTF-8, still as bytes."""

    data: bytes
    binary: bool = False


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """The peer's close frame: its code (:data:`CLOSE_NO_STATUS` when it sent none) and reason.
    Only codes a peer may send reach here (others are a :class:`Failure` with 1002)."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Failure:
    """The peer broke the protocol: fail the connection with ``code`` (§7.1.7)."""

    code: int
    reason: str


Event = Message | Ping | Pong | Close | Failure


class FrameParser:
    """Client-to-server frames (§5.2) of one connection, incrementally.

    ``max_size`` bounds a message (all its fragments together): the 1009 is decided from the
    frame header, before the payload is buffered. After a :class:`Close` or a :class:`Failure`
    the parser is done and :meth:`feed` answers nothing.
    """

    __slots__ = ("_buf", "_done", "_frag_op", "_frag_parts", "_frag_size", "_partial", "_partial_checked", "_utf8",
                 "max_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buf: bytearray | None = None  # an incomplete frame, else None
        self._frag_op = 0  # opcode of the fragmented message in progress, 0 when none
        self._frag_parts: list[bytes] | None = None
        self._frag_size = 0
        self._utf8: codecs.IncrementalDecoder | None = None
        #: UTF-8 check of the text frame still arriving: its decoder and how many payload bytes it read
        self._partial: codecs.IncrementalDecoder | None = None
        self._partial_checked = 0
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, data: bytes) -> list[Event]:
        """The events completed by ``data`` (the bytes that follow what was fed before)."""
        if self._done:
            return []
        buf = self._buf
        if buf is not None:
            buf += data
            view: bytes | bytearray = buf
        else:
            view = data
        events: list[Event] = []
        pos = self._frames(view, events)
        if self._done:
            self._buf = None
        elif pos == len(view):
            self._buf = None  # nothing kept while idle
        elif buf is not None:
            del buf[:pos]
        else:
            self._buf = bytearray(view[pos:])
        return events

    def _fail(self, events: list[Event], code: int, reason: str) -> int:
        events.append(Failure(code, reason))
        self._done = True
        self._frag_parts = None
        self._utf8 = None
        return 0

    def _frames(self, data: bytes | bytearray, events: list[Event]) -> int:
        """Parse the complete frames at the start of ``data``; answers where the first incomplete one starts."""
        pos, end = 0, len(data)
        while end - pos >= 2:
            b0, b1 = data[pos], data[pos + 1]
            opcode, length = b0 & 0x0F, b1 & 0x7F
            head = pos + 2
            if b0 & 0x70:  # §5.2: RSV1-3 must be 0 without a negotiated extension (we negotiate none)
                return self._fail(events, CLOSE_PROTOCOL_ERROR, "reserved bits set")
            if not b1 & 0x80:  # §5.1: a client MUST mask every frame
                return self._fail(events, CLOSE_PROTOCOL_ERROR, "unmasked client frame")
            if opcode >= OP_CLOSE:
                if opcode > OP_PONG:
                    return self._fail(events, CLOSE_PROTOCOL_ERROR, "reserved opcode")
                if not b0 & 0x80 or length > MAX_CONTROL_PAYLOAD:  # §5.5
                    return self._fail(events, CLOSE_PROTOCOL_ERROR, "fragmented or oversize control frame")
            elif opcode > OP_BINARY:
                return self._fail(events, CLOSE_PROTOCOL_ERROR, "reserved opcode")
            if length == 126:
                if end - head < 2:
                    break
                length = (data[head] << 8) | data[head + 1]
                head += 2
            elif length == 127:
                if end - head < 8:
                    break
                (length,) = struct.unpack_from("!Q", data, head)
                head += 8
                if length >> 63:  # §5.2: the most significant bit MUST be 0
                    return self._fail(events, CLOSE_PROTOCOL_ERROR, "invalid payload length")
            if opcode < OP_CLOSE and self._frag_size + length > self.max_size:
                return self._fail(events, CLOSE_TOO_BIG, "message too big")
            if end - head < 4 + length:
                if end - head > 4 and ((opcode == OP_TEXT and not self._frag_op)
                                       or (opcode == OP_CONTINUATION and self._utf8 is not None)):
                    return self._check_partial(data, pos, head + 4, end, events)
                break
            mask = bytes(data[head:head + 4])
            head += 4
            payload = unmask(data[head:head + length], mask)
            pos = head + length
            self._partial, self._partial_checked = None, 0
            if not self._frame(b0 & 0x80, opcode, payload, events):
                return 0
        return pos

    def _check_partial(self, data: bytes | bytearray, frame_start: int, start: int, end: int,
                       events: list[Event]) -> int:
        """Fail fast (§8.1) inside a text frame still arriving (its payload from ``start``, its
        mask the 4 bytes before): check the payload bytes that came since the last look, keeping
        the decoder's state. Answers ``frame_start`` (where parsing resumes), or 0 after a failure."""
        checked = self._partial_checked
        available = end - start
        if available <= checked:
            return frame_start
        decoder = self._partial
        if decoder is None:
            decoder = self._partial = codecs.getincrementaldecoder("utf-8")()
            if self._utf8 is not None:  # a continuation: go on from the message's state
                decoder.setstate(self._utf8.getstate())
        mask = bytes(data[start - 4:start])
        turn = checked % 4
        try:
            decoder.decode(unmask(data[start + checked:end], mask[turn:] + mask[:turn]), False)
        except UnicodeDecodeError:
            return self._fail(events, CLOSE_INVALID_DATA, "invalid UTF-8 in a text message")
        self._partial_checked = available
        return frame_start

    def _frame(self, fin: int, opcode: int, payload: bytes, events: list[Event]) -> bool:
        """Act on one complete frame; False once the parser is done."""
        if opcode == OP_TEXT or opcode == OP_BINARY:
            if self._frag_op:  # §5.4: a new message may not start inside a fragmented one
                self._fail(events, CLOSE_PROTOCOL_ERROR, "data frame inside a fragmented message")
                return False
            if fin:
                if opcode == OP_TEXT and not _valid_utf8(payload):
                    self._fail(events, CLOSE_INVALID_DATA, "invalid UTF-8 in a text message")
                    return False
                events.append(Message(payload, opcode == OP_BINARY))
                return True
            self._frag_op, self._frag_parts, self._frag_size = opcode, [payload], len(payload)
            if opcode == OP_TEXT:
                self._utf8 = codecs.getincrementaldecoder("utf-8")()
                return self._check_utf8(payload, False, events)
            return True
        if opcode == OP_CONTINUATION:
            parts = self._frag_parts
            if parts is None:
                self._fail(events, CLOSE_PROTOCOL_ERROR, "continuation frame without a message")
                return False
            parts.append(payload)
            self._frag_size += len(payload)
            if self._utf8 is not None and not self._check_utf8(payload, bool(fin), events):
                return False
            if fin:
                events.append(Message(b"".join(parts), self._frag_op == OP_BINARY))
                self._frag_op, self._frag_parts, self._frag_size, self._utf8 = 0, None, 0, None
            return True
        if opcode == OP_PING:  # control frames may come between fragments (§5.4)
            events.append(Ping(payload))
            return True
        if opcode == OP_PONG:
            events.append(Pong(payload))
            return True
        return self._close(payload, events)

    def _check_utf8(self, part: bytes, final: bool, events: list[Event]) -> bool:
        """Fail fast (§8.1): a fragmented text message is checked fragment by fragment."""
        assert self._utf8 is not None
        try:
            self._utf8.decode(part, final)
        except UnicodeDecodeError:
            self._fail(events, CLOSE_INVALID_DATA, "invalid UTF-8 in a text message")
            return False
        return True

    def _close(self, payload: bytes, events: list[Event]) -> bool:
        """§5.5.1: no payload, or a 2-byte code and a UTF-8 reason."""
        if not payload:
            events.append(Close(CLOSE_NO_STATUS, ""))
        elif len(payload) == 1:
            self._fail(events, CLOSE_PROTOCOL_ERROR, "close payload of one byte")
            return False
        else:
            code = (payload[0] << 8) | payload[1]
            if code < 1000 or not peer_close_code_valid(code):
                self._fail(events, CLOSE_PROTOCOL_ERROR, "invalid close code")
                return False
            try:
                reason = payload[2:].decode()
            except UnicodeDecodeError:
                self._fail(events, CLOSE_INVALID_DATA, "invalid UTF-8 in the close reason")
                return False
            events.append(Close(code, reason))
        self._done = True
        self._frag_parts = None
        self._utf8 = None
        return False


def _valid_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True
