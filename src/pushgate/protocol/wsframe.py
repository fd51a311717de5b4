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


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame (§5.5.1): 2-byte code then a UTF-8 reason, at most 125 bytes of payload."""
    body = struct.pack("!H", code) + reason.encode()[:123]
    return server_frame(body, OP_CLOSE)
