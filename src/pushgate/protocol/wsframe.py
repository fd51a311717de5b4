"""RFC 6455 §5.2 framing for server-to-client frames, sans I/O.

Server frames are never masked (§5.1), so one encoded frame is byte-for-byte valid for every
client: the fan-out path frames a publication once and writes the same bytes to each socket.
"""

from __future__ import annotations

import struct

OP_TEXT = 0x1
OP_CLOSE = 0x8


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
