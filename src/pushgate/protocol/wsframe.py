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
