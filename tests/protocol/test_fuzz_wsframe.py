"""Property tests for the server frame writer (RFC 6455 §5.2): a reference decoder written here,
from the RFC and not from the writer, reads back every frame it makes, for any payload length
and especially at the 7-bit / 16-bit / 64-bit length boundaries."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hypothesis import example, given, settings
from hypothesis import strategies as st

from pushgate.protocol import wsframe

BOUNDED = settings(max_examples=200, deadline=None, database=None)
BOUNDARIES = [0, 1, 124, 125, 126, 127, 128, 65534, 65535, 65536, 65537]


@dataclass(frozen=True, slots=True)
class Frame:
    fin: bool
    rsv: int
    opcode: int
    payload: bytes
    header_size: int


def decode_one(data: bytes) -> tuple[Frame, bytes]:
    """Decode one frame from ``data``; return it and the bytes after it (RFC 6455 §5.2)."""
    assert len(data) >= 2, "a frame has at least two header bytes"
    b0, b1 = data[0], data[1]
    fin, rsv, opcode = bool(b0 & 0x80), (b0 >> 4) & 0x7, b0 & 0x0F
    masked, length = bool(b1 & 0x80), b1 & 0x7F
    pos = 2
    if length == 126:
        (length,) = struct.unpack_from("!H", data, pos)
        pos += 2
        assert length >= 126, "§5.2: the minimal number of bytes MUST be used to encode the length"
    elif length == 127:
        (length,) = struct.unpack_from("!Q", data, pos)
        pos += 8
        assert length >= 65536, "§5.2: the minimal number of bytes MUST be used to encode the length"
        assert length >> 63 == 0, "§5.2: the most significant bit of a 64-bit length MUST be 0"
    key = b""
    if masked:
        key = data[pos:pos + 4]
        pos += 4
    payload = data[pos:pos + length]
    assert len(payload) == length, "frame shorter than its length field"
    if masked:
        payload = bytes(c ^ key[i % 4] for i, c in enumerate(payload))
    return Frame(fin, rsv, opcode, payload, pos - (4 if masked else 0)), data[pos + length:]


def _payload(n: int, seed: int) -> bytes:
    return bytes((seed + i * 31) & 0xFF for i in range(n))


@BOUNDED
@given(st.sampled_from(BOUNDARIES) | st.integers(min_value=0, max_value=70_000), st.integers(0, 255),
       st.sampled_from([0x1, 0x2, 0x9, 0xA]))
@example(125, 0, 0x1)
@example(126, 0, 0x1)
@example(65535, 0, 0x2)
@example(65536, 0, 0x2)
def test_server_frames_decode_to_their_payload(n: int, seed: int, opcode: int) -> None:
    payload = _payload(n, seed)
    frame, rest = decode_one(wsframe.server_frame(payload, opcode))
    assert rest == b""
    assert frame.fin and frame.rsv == 0 and frame.opcode == opcode
    assert frame.payload == payload
    # §5.1: a server MUST NOT mask; and the header is as short as the length allows
    assert frame.header_size == (2 if n < 126 else 4 if n < 65536 else 10)


@BOUNDED
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=8))
def test_frames_written_back_to_back_split_cleanly(payloads: list[bytes]) -> None:
    """The hub joins queued frames into one write: the stream must split back into them."""
    stream = b"".join(wsframe.server_frame(p) for p in payloads)
    decoded = []
    while stream:
        frame, stream = decode_one(stream)
        decoded.append(frame.payload)
    assert decoded == payloads


@BOUNDED
@given(st.sampled_from([1000, 1001, 1008, 1011, 1012, 4000, 4001, 4999]), st.text(max_size=200))
def test_close_frames_carry_the_code_and_a_prefix_of_the_reason(code: int, reason: str) -> None:
    frame, rest = decode_one(wsframe.close_frame(code, reason))
    assert rest == b"" and frame.opcode == 0x8 and frame.fin
    assert len(frame.payload) <= 125  # §5.5: control frames carry at most 125 bytes
    (got,) = struct.unpack("!H", frame.payload[:2])
    assert got == code
    assert reason.encode().startswith(frame.payload[2:])


@BOUNDED
@given(st.sampled_from([1000, 1008, 4001]), st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from("aé€😀"),
                                                    max_size=200))
@example(1008, "é" * 100)
@example(1008, "ab" + "😀" * 40)
def test_close_frame_reason_is_valid_utf8(code: int, reason: str) -> None:
    """§5.5.1 and §8.1: the reason is UTF-8; a client fails a close frame whose reason is not
    (1007), so a long reason must be cut on a character boundary (issue 7, item 9)."""
    frame, _ = decode_one(wsframe.close_frame(code, reason))
    text = frame.payload[2:].decode("utf-8")  # raises on a cut character
    assert reason.startswith(text)
    assert len(reason.encode()) <= 123 or len(text.encode()) > 123 - 4  # cut no shorter than it must be
