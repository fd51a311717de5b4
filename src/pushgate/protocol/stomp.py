"""STOMP 1.0, 1.1 and 1.2 frames, sans I/O: bytes in, frames out; frames in, bytes out.

The STOMP session (one per connection) feeds whatever the transport received to a
:class:`FrameParser` and gets :class:`Frame`, :class:`Heartbeat` and :class:`ProtocolError`
events back. Parsing never raises, whatever the bytes: a broken stream becomes one
:class:`ProtocolError`, which the session answers with an ERROR frame before closing (STOMP 1.2
§ERROR: the server MUST close the connection after sending it). A WebSocket message may carry
several frames or part of one (stompjs ``splitLargeFrames``), so the parser keeps the unfinished
tail between calls; the tail is bounded by the limits, never by what a hostile peer sends.

Choices where the specification leaves room (each also said where the code makes it):

- EOL is LF or CR LF in every version (§STOMP Frames; 1.0 and 1.1 only knew LF, but their
  clients send CR LF too). Frames are encoded with LF.
- EOLs between frames are heart-beats (§Heart-beating). One :class:`Heartbeat` reports a run of
  them, with its ``count``: a peer that sends a megabyte of newlines costs one event, not a
  million.
- Header values are never trimmed (§Value Encoding: "MUST never trim or pad"); the first raw
  ``:`` of a header line ends the name and later ones belong to the value (the 1.2 grammar wants
  them escaped, but 1.0 allowed them and CONNECT is never escaped, so a stricter reading would
  reject real clients for no safety gain).
- A body on a frame that must not have one (§Body: only SEND, MESSAGE and ERROR) is kept, not
  rejected: it cannot confuse the framing, and the session decides what to do with it.
- ``max_frame_size`` bounds a whole frame: command line, headers, body and NUL.
- After a CONNECT or STOMP frame the parser switches itself to the version :func:`negotiate`
  picks from its ``accept-version`` (after a CONNECTED, when it accepts one, to its ``version``),
  so frames pipelined behind it in the same message are unescaped by the right rules; the
  session may still set :attr:`FrameParser.version`.

Encoding is the fan-out hot path: a MESSAGE is encoded once per publication and subscription
id, so :func:`encode` is a single byte join with a fast path that skips escaping when no header
holds a character that needs it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "ALL_COMMANDS",
    "CLIENT_COMMANDS",
    "HEARTBEAT",
    "MAX_HEARTBEAT_MS",
    "SERVER_COMMANDS",
    "SUPPORTED_VERSIONS",
    "Event",
    "Frame",
    "FrameParser",
    "Heartbeat",
    "ProtocolError",
    "encode",
    "encode_head",
    "negotiate",
    "negotiate_heartbeat",
    "parse_heartbeat",
]

SUPPORTED_VERSIONS: Final[tuple[str, ...]] = ("1.2", "1.1", "1.0")  # best first
HEARTBEAT: Final = b"\n"  # §Heart-beating: "an EOL"

#: §Client Frames (1.2); 1.0 had no NACK and no STOMP, but accepting them costs nothing.
CLIENT_COMMANDS: Final = frozenset(
    {"CONNECT", "STOMP", "SEND", "SUBSCRIBE", "UNSUBSCRIBE", "ACK", "NACK", "BEGIN", "COMMIT", "ABORT", "DISCONNECT"}
)
#: §Server Frames.
SERVER_COMMANDS: Final = frozenset({"CONNECTED", "MESSAGE", "RECEIPT", "ERROR"})
ALL_COMMANDS: Final = CLIENT_COMMANDS | SERVER_COMMANDS

#: §Value Encoding: "CONNECT and CONNECTED frames do not escape" (for compatibility with 1.0);
#: STOMP is CONNECT's other name.
_UNESCAPED_COMMANDS: Final = frozenset({"CONNECT", "STOMP", "CONNECTED"})

_NUL: Final = 0
_LF: Final = 10
_CR: Final = 13


@dataclass(frozen=True, slots=True)
class Frame:
    """One STOMP frame: its command, its headers in wire order (unescaped) and its body."""

    command: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def get(self, name: str, default: str | None = None) -> str | None:
        """The value of header ``name``: the first occurrence wins (§Repeated Header Entries)."""
        for key, value in self.headers:
            if key == name:
                return value
        return default


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """``count`` EOLs received between frames (§Heart-beating); consecutive ones are one event."""

    count: int = 1


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """The stream is broken: answer with an ERROR frame and close (§ERROR).

    ``receipt`` is the bad frame's ``receipt`` header when it could be read, so the ERROR frame
    can name it in ``receipt-id``. ``message`` is short, single-line text for its ``message``
    header.
    """

    message: str
    receipt: str | None = None


Event = Frame | Heartbeat | ProtocolError

# --- header escaping (§Value Encoding) -------------------------------------------------------

# Decoding: the character after a backslash -> what it stands for. 1.1 has no \r (added in 1.2);
# any other escape "MUST be treated as a fatal protocol error".
_UNESCAPE_11: Final = {"n": "\n", "c": ":", "\\": "\\"}
_UNESCAPE_12: Final = {"r": "\r", **_UNESCAPE_11}
_UNESCAPE: Final[dict[str, dict[str, str] | None]] = {"1.0": None, "1.1": _UNESCAPE_11, "1.2": _UNESCAPE_12}

# Encoding: the reverse. A 1.1 value keeps a raw CR, an octet its grammar allows.
_ESCAPE_11: Final = str.maketrans({"\\": "\\\\", "\n": "\\n", ":": "\\c"})
_ESCAPE_12: Final = str.maketrans({"\\": "\\\\", "\n": "\\n", ":": "\\c", "\r": "\\r"})
# Frames that cannot escape (1.0, CONNECT, CONNECTED) cannot carry an EOL in a header: it would end
# the header line and let the text after it pose as a header of its own (header injection through,
# say, a user name). Such EOLs become spaces, and so does a ':' in a name (it would end the name).
_RAW_VALUE: Final = str.maketrans({"\n": " ", "\r": " "})
_RAW_NAME: Final = str.maketrans({"\n": " ", "\r": " ", ":": "_"})

_RAW, _ESC11, _ESC12 = 0, 1, 2
_ESCAPE_MODE: Final = {"1.0": _RAW, "1.1": _ESC11, "1.2": _ESC12}


def _unescape(text: str, table: dict[str, str]) -> str | None:
    """``text`` with its escapes replaced, or None when it holds an undefined one (§Value Encoding)."""
    if "\\" not in text:
        return text
    out: list[str] = []
    start = 0
    while True:
        slash = text.find("\\", start)
        if slash < 0:
            out.append(text[start:])
            return "".join(out)
        replacement = table.get(text[slash + 1 : slash + 2])
        if replacement is None:
            return None
        out.append(text[start:slash])
        out.append(replacement)
        start = slash + 2


def _escape_headers(headers: Iterable[tuple[str, str]], mode: int) -> list[tuple[str, str]]:
    """Headers made safe for a header line under ``mode`` (cold path: only when one needs it)."""
    if mode == _RAW:
        return [(name.translate(_RAW_NAME), value.translate(_RAW_VALUE)) for name, value in headers]
    table = _ESCAPE_12 if mode == _ESC12 else _ESCAPE_11
    return [(name.translate(table), value.translate(table)) for name, value in headers]


# --- encoding ----------------------------------------------------------------------------------


def encode_head(command: str, headers: Sequence[tuple[str, str]], body_length: int, *, version: str = "1.2") -> bytes:
    """A frame's command line and header block, up to and including the blank line.

    ``encode_head(...) + body + b"\\0"`` is the frame. Any ``content-length`` in ``headers`` is
    dropped and the true one written last when there is a body (§Header content-length: servers
    SHOULD send it), so a stale length can never desynchronise the client.

    Hot path (MESSAGE on fan-out), written for speed on purpose: the lines are joined first, and
    when the text holds no backslash or CR, exactly one LF and one ``:`` per header and no
    ``content-length``, nothing needs escaping or dropping in any version (a handful of C-level
    scans), so it is encoded as is. Otherwise :func:`_encode_head_slow` does the work.
    """
    text = "\n".join([command, *[name + ":" + value for name, value in headers]])
    count = len(headers)
    if (
        "\\" in text
        or "\r" in text
        or text.count("\n") != count
        or text.count(":") != count
        or "\ncontent-length:" in text
    ):
        return _encode_head_slow(command, headers, body_length, version)
    if body_length:
        text = text + "\ncontent-length:" + str(body_length) + "\n\n"
    else:
        text = text + "\n\n"
    # "replace": a lone surrogate in a server-side string must not make encoding raise
    return text.encode("utf-8", "replace")


def _encode_head_slow(command: str, headers: Sequence[tuple[str, str]], body_length: int, version: str) -> bytes:
    """:func:`encode_head` for headers that need escaping (§Value Encoding) or hold a ``content-length``."""
    mode = _RAW if command in _UNESCAPED_COMMANDS else _ESCAPE_MODE[version]
    pairs = _escape_headers([(name, value) for name, value in headers if name != "content-length"], mode)
    lines = [command, *[name + ":" + value for name, value in pairs]]
    if body_length:
        lines.append("content-length:" + str(body_length))
    lines.append("\n")
    return "\n".join(lines).encode("utf-8", "replace")


def encode(frame: Frame, *, version: str = "1.2") -> bytes:
    """``frame`` as bytes to write, escaped for ``version`` (§STOMP Frames, §Value Encoding).

    CONNECTED is never escaped. A frame with a body gets a ``content-length`` (the body may hold
    NULs); headers the version cannot represent are made safe, see :func:`encode_head`.
    """
    return b"".join((encode_head(frame.command, frame.headers, len(frame.body), version=version), frame.body, b"\0"))


# --- negotiation -------------------------------------------------------------------------------


def negotiate(accept_version: str | None) -> str | None:
    """The version to speak: the highest both sides support (§Protocol Negotiation).

    ``accept_version`` is CONNECT's ``accept-version`` header; without it the client speaks 1.0.
    None when there is no common version: the server answers with an ERROR and closes.
    """
    if accept_version is None:
        return "1.0"
    offered = {part.strip() for part in accept_version.split(",")}
    for version in SUPPORTED_VERSIONS:
        if version in offered:
            return version
    return None


MAX_HEARTBEAT_MS: Final = 2**31 - 1  # ~24.8 days: beyond it a timer is nonsense (and may overflow)


def parse_heartbeat(value: str | None) -> tuple[int, int]:
    """A ``heart-beat`` header, ``"cx,cy"``, as two ints in milliseconds (§Heart-beating).

    A missing header is ``"0,0"`` (no heart-beats either way). Anything else but two non-negative
    integers raises :class:`ValueError`, which the session turns into an ERROR.
    """
    if value is None:
        return (0, 0)
    parts = value.split(",")
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() and len(p) <= 12 for p in parts):
        raise ValueError(f"heart-beat must be two non-negative integers 'cx,cy', not {value[:40]!r}")
    first, second = int(parts[0]), int(parts[1])
    if first > MAX_HEARTBEAT_MS or second > MAX_HEARTBEAT_MS:
        raise ValueError(f"heart-beat values must be at most {MAX_HEARTBEAT_MS} ms")
    return (first, second)


def negotiate_heartbeat(client: tuple[int, int], server: tuple[int, int]) -> tuple[int, int]:
    """``(send_every_ms, expect_every_ms)`` for the server; 0 means never (§Heart-beating).

    ``client`` is CONNECT's ``heart-beat`` (cx: it can send, cy: it wants), ``server`` the one the
    server puts in CONNECTED (sx, sy). The server sends every max(sx, cy) ms unless either is 0,
    and expects something from the client every max(cx, sy) ms unless either is 0.
    """
    cx, cy = client
    sx, sy = server
    send_every = 0 if sx == 0 or cy == 0 else max(sx, cy)
    expect_every = 0 if cx == 0 or sy == 0 else max(cx, sy)
    return (send_every, expect_every)


# --- decoding ----------------------------------------------------------------------------------

_EOLS: Final = re.compile(rb"(?:\r?\n)+")

_IDLE, _HEADERS, _BODY = 0, 1, 2


class FrameParser:
    """An incremental STOMP frame parser: one per connection; :meth:`feed` never raises.

    Limits (§Size Limits lets a server bound headers, header lines and bodies): ``max_frame_size``
    bytes per frame from the command to the NUL, ``max_headers`` header lines, and
    ``max_header_length`` bytes per line (the command line included). The parser never holds
    more than one frame's worth of unparsed bytes; exceeding a limit is a :class:`ProtocolError`.
    ``commands`` are the commands accepted (a server accepts client commands; tests and clients
    may accept more).
    """

    __slots__ = (
        "_body_start",
        "_buf",
        "_command",
        "_commands",
        "_content_length",
        "_error",
        "_frame_len",
        "_headers",
        "_receipt",
        "_scan",
        "_state",
        "_table",
        "_unknown",
        "_version",
        "max_frame_size",
        "max_header_length",
        "max_headers",
    )

    def __init__(
        self,
        *,
        max_frame_size: int = 65536,
        max_headers: int = 64,
        max_header_length: int = 8192,
        version: str = "1.2",
        commands: frozenset[str] = CLIENT_COMMANDS,
    ) -> None:
        self.max_frame_size = max_frame_size
        self.max_headers = max_headers
        self.max_header_length = max_header_length
        self._commands = commands
        self._version = "1.2"
        self._table: dict[str, str] | None = _UNESCAPE_12
        self.version = version
        self._buf = bytearray()
        self._error: ProtocolError | None = None
        self._state = _IDLE
        self._scan = 0  # where the next search for LF or NUL resumes (a partial line or body)
        self._reset_frame()

    def _reset_frame(self) -> None:
        self._command = ""
        self._unknown: str | None = None  # an unknown command, reported once its receipt is read
        self._headers: list[tuple[str, str]] = []
        self._receipt: str | None = None
        self._content_length: int | None = None
        self._frame_len = 0  # bytes of this frame consumed so far (command line, headers)
        self._body_start = 0

    @property
    def version(self) -> str:
        """The STOMP version whose escaping rules apply to frames other than CONNECT/STOMP."""
        return self._version

    @version.setter
    def version(self, version: str) -> None:
        if version not in _UNESCAPE:
            raise ValueError(f"unsupported STOMP version {version!r}")
        self._version = version
        self._table = _UNESCAPE[version]

    @property
    def failed(self) -> ProtocolError | None:
        """The error that ended the stream, if any: the parser is dead after it."""
        return self._error

    def feed(self, data: bytes) -> list[Event]:
        """Parse ``data``, the next bytes from the peer; return the events it completes.

        Frames before a bad one are returned before its :class:`ProtocolError`; after the
        error every call returns ``[]``.
        """
        if self._error is not None:
            return []
        buf = self._buf
        buf += data
        events: list[Event] = []
        pos = self._parse(buf, events)
        if self._error is not None:
            self._buf = bytearray()  # dead: hold on to nothing
            return events
        if pos:
            del buf[:pos]
            self._scan -= pos
            self._body_start -= pos
        return events

    def _fail(self, events: list[Event], message: str) -> int:
        """Record the stream's end; an unknown command outranks what went wrong after it."""
        if self._unknown is not None:
            message = self._unknown
        error = ProtocolError(message, self._receipt)
        self._error = error
        events.append(error)
        return 0

    def _parse(self, buf: bytearray, events: list[Event]) -> int:
        """Consume whole frames and heart-beats from ``buf``; return how many bytes were used."""
        pos = 0
        end = len(buf)
        while True:
            if self._state == _BODY:
                done = self._parse_body(buf, pos, events)
                if done < 0:
                    return 0 if self._error is not None else pos
                pos = done
                self._state = _IDLE
                continue
            if self._state == _IDLE:
                # §Heart-beating / the grammar's trailing *(EOL): EOLs between frames.
                match = _EOLS.match(buf, pos)
                if match is not None:
                    events.append(Heartbeat(buf.count(b"\n", pos, match.end())))
                    pos = match.end()
                if pos == end or (buf[pos] == _CR and pos + 1 == end):
                    self._scan = pos
                    return pos  # nothing, or a CR that may start the next EOL
            # a command or header line: find its LF
            newline = buf.find(b"\n", max(self._scan, pos))
            limit = self.max_header_length
            if newline < 0:
                pending = end - pos
                self._scan = end
                if pending > limit + 1:  # + 1: room for the CR of a CR LF
                    return self._fail(events, f"header line longer than {limit} bytes")
                if self._frame_len + pending > self.max_frame_size:
                    return self._fail(events, f"frame larger than {self.max_frame_size} bytes")
                return pos
            line_end = newline - 1 if newline > pos and buf[newline - 1] == _CR else newline
            line = bytes(buf[pos:line_end])
            self._frame_len += newline + 1 - pos
            pos = newline + 1
            self._scan = pos
            if len(line) > limit:
                return self._fail(events, f"header line longer than {limit} bytes")
            if self._frame_len > self.max_frame_size:
                return self._fail(events, f"frame larger than {self.max_frame_size} bytes")
            if self._state == _IDLE:
                self._start_frame(line)
                self._state = _HEADERS
            elif line:
                if not self._header_line(line, events):
                    return 0
            else:  # the blank line: the header block is complete
                if not self._end_headers(events):
                    return 0
                self._state = _BODY
                self._body_start = pos
                self._scan = pos

    def _start_frame(self, line: bytes) -> None:
        """§STOMP Frames: the command line. An unknown command is reported after the headers,
        so that the ERROR can carry the frame's receipt."""
        try:
            command = line.decode("ascii")
        except UnicodeDecodeError:
            command = ""
        if command not in self._commands:
            shown = line[:40].decode("utf-8", "replace")
            self._unknown = f"unknown command {shown!r}"
        self._command = command

    def _header_line(self, line: bytes, events: list[Event]) -> bool:
        """One ``name:value`` line (§STOMP Frames, §Value Encoding); False when the stream is broken."""
        if len(self._headers) >= self.max_headers:
            self._fail(events, f"more than {self.max_headers} headers")
            return False
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self._fail(events, "header is not valid UTF-8")
            return False
        name, colon, value = text.partition(":")
        if not colon:
            self._fail(events, f"header line without ':': {text[:40]!r}")
            return False
        if not name:
            self._fail(events, "header with an empty name")
            return False
        table = None if self._command in _UNESCAPED_COMMANDS else self._table
        if table is not None:
            unescaped_name, unescaped_value = _unescape(name, table), _unescape(value, table)
            if unescaped_name is None or unescaped_value is None:
                self._fail(events, f"undefined escape sequence in header {name[:40]!r}")
                return False
            name, value = unescaped_name, unescaped_value
        if name == "receipt" and self._receipt is None:
            self._receipt = value
        self._headers.append((name, value))
        return True

    def _end_headers(self, events: list[Event]) -> bool:
        """Validate the header block; False when the stream is broken."""
        if self._unknown is not None:
            self._fail(events, self._unknown)
            return False
        length = None
        for name, value in self._headers:
            if name == "content-length":  # §Repeated Header Entries: the first one counts
                length = value
                break
        if length is not None:
            if not (length.isascii() and length.isdigit()) or len(length) > 20:
                self._fail(events, f"content-length is not a non-negative integer: {length[:40]!r}")
                return False
            self._content_length = int(length)
            if self._frame_len + self._content_length + 1 > self.max_frame_size:
                self._fail(events, f"frame larger than {self.max_frame_size} bytes")
                return False
        return True

    def _follow_version(self, frame: Frame) -> None:
        """Switch to the version a CONNECT/STOMP will get (:func:`negotiate`) or a CONNECTED
        announces (its ``version`` header; none means 1.0), so that frames pipelined behind it
        are unescaped by that version's rules (§Protocol Negotiation). No common version: stay."""
        if frame.command == "CONNECTED":
            version: str | None = frame.get("version", "1.0")
        else:
            version = negotiate(frame.get("accept-version"))
        if version in _UNESCAPE:
            self.version = version

    def _parse_body(self, buf: bytearray, pos: int, events: list[Event]) -> int:
        """The body and its NUL (§Body, §Header content-length); the position after the frame,
        or -1 when more bytes are needed or the stream is broken."""
        end = len(buf)
        room = self.max_frame_size - self._frame_len  # for the body and its NUL
        if self._content_length is not None:
            # "that number of octets MUST be read, regardless of whether or not there are NULL
            # octets in the body"; the frame still ends with a NUL
            nul = pos + self._content_length
            if end <= nul:
                return -1
            if buf[nul] != _NUL:
                self._fail(events, "frame body does not end with NUL after content-length bytes")
                return -1
        else:
            window = pos + room
            nul = buf.find(b"\0", max(self._scan, pos), min(end, window))
            if nul < 0:
                if end >= window:
                    self._fail(events, f"frame larger than {self.max_frame_size} bytes")
                else:
                    self._scan = end
                return -1
        frame = Frame(self._command, tuple(self._headers), bytes(buf[pos:nul]))
        if self._command in _UNESCAPED_COMMANDS:
            self._follow_version(frame)
        events.append(frame)
        self._reset_frame()
        self._scan = nul + 1
        return nul + 1
