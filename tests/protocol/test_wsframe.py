"""The client-frame parser (RFC 6455 §5), on bytes only: masks, fragments, control frames between
fragments, the size limit, UTF-8, reserved bits and opcodes, close payload rules."""

from __future__ import annotations

import struct

import pytest

from pushgate.protocol import wsframe
from pushgate.protocol.wsframe import Close, Failure, FrameParser, Message, Ping, Pong

MASK = b"\x37\xfa\x21\x3d"


def client_frame(payload: bytes, opcode: int = wsframe.OP_TEXT, *, fin: bool = True, rsv: int = 0,
                 mask: bytes | None = MASK, length: int | None = None) -> bytes:
    """A client frame written from §5.2 here (not with the server's writer)."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    m = 0x80 if mask is not None else 0
    if n < 126:
        head = bytes((b0, m | n))
    elif n < 65536:
        head = struct.pack("!BBH", b0, m | 126, n)
    else:
        head = struct.pack("!BBQ", b0, m | 127, n)
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def feed_all(data: bytes, max_size: int = 1 << 20, *, step: int | None = None) -> list[wsframe.Event]:
    parser = FrameParser(max_size)
    if step is None:
        return parser.feed(data)
    events: list[wsframe.Event] = []
    for i in range(0, len(data), step):
        events.extend(parser.feed(data[i:i + step]))
    return events


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_masked_text_of_every_length_class(size: int) -> None:
    payload = (b"abcdefg" * (size // 7 + 1))[:size]
    assert feed_all(client_frame(payload)) == [Message(payload)]
    assert feed_all(client_frame(payload), step=1 if size < 200 else 997) == [Message(payload)]


def test_unmask_matches_a_byte_loop() -> None:
    data = bytes(range(256)) * 5 + b"xyz"
    assert wsframe.unmask(data, MASK) == bytes(b ^ MASK[i % 4] for i, b in enumerate(data))
    assert wsframe.unmask(b"", MASK) == b""


def test_binary_and_several_frames_in_one_read() -> None:
    data = client_frame(b"one") + client_frame(b"\x00\xff", wsframe.OP_BINARY) + client_frame(b"two")
    assert feed_all(data) == [Message(b"one"), Message(b"\x00\xff", binary=True), Message(b"two")]


def test_the_parser_holds_no_buffer_between_frames() -> None:
    parser = FrameParser(1000)
    frame = client_frame(b"hello")
    assert parser.feed(frame[:3]) == []
    assert parser._buf is not None
    assert parser.feed(frame[3:]) == [Message(b"hello")]
    assert parser._buf is None


def test_fragments_with_control_frames_between_them() -> None:
    data = (client_frame(b"he", fin=False) + client_frame(b"p1", wsframe.OP_PING)
            + client_frame(b"ll", wsframe.OP_CONTINUATION, fin=False) + client_frame(b"", wsframe.OP_PONG)
            + client_frame(b"o", wsframe.OP_CONTINUATION))
    expected = [Ping(b"p1"), Pong(b""), Message(b"hello")]
    assert feed_all(data) == expected
    assert feed_all(data, step=1) == expected


def test_unmasked_client_frame_is_1002() -> None:
    assert feed_all(client_frame(b"x", mask=None)) == [Failure(1002, "unmasked client frame")]


@pytest.mark.parametrize("rsv", [1, 2, 4])
def test_reserved_bits_are_1002(rsv: int) -> None:
    assert feed_all(client_frame(b"x", rsv=rsv)) == [Failure(1002, "reserved bits set")]


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 11, 12, 15])
def test_reserved_opcodes_are_1002(opcode: int) -> None:
    assert feed_all(client_frame(b"", opcode)) == [Failure(1002, "reserved opcode")]


def test_control_frame_rules() -> None:
    too_long = client_frame(b"p" * 126, wsframe.OP_PING)
    assert feed_all(too_long)[0].code == 1002  # type: ignore[union-attr]
    fragmented = client_frame(b"p", wsframe.OP_PING, fin=False)
    assert feed_all(fragmented) == [Failure(1002, "fragmented or oversize control frame")]
    assert feed_all(client_frame(b"p" * 125, wsframe.OP_PING)) == [Ping(b"p" * 125)]


def test_fragment_sequence_errors() -> None:
    stray = client_frame(b"x", wsframe.OP_CONTINUATION)
    assert feed_all(stray) == [Failure(1002, "continuation frame without a message")]
    nested = client_frame(b"a", fin=False) + client_frame(b"b")
    assert feed_all(nested) == [Failure(1002, "data frame inside a fragmented message")]


def test_oversize_is_1009_from_the_header_alone() -> None:
    parser = FrameParser(100)
    head = client_frame(b"x" * 101)[:8]  # header and mask only: the payload never arrives
    assert parser.feed(head) == [Failure(1009, "message too big")]
    assert parser.done and parser.feed(b"more") == []
    assert feed_all(client_frame(b"x" * 100), 100) == [Message(b"x" * 100)]


def test_oversize_counts_all_fragments() -> None:
    data = client_frame(b"x" * 60, fin=False) + client_frame(b"y" * 41, wsframe.OP_CONTINUATION)
    assert feed_all(data, 100) == [Failure(1009, "message too big")]


def test_64_bit_length_with_the_top_bit_is_1002() -> None:
    frame = struct.pack("!BBQ", 0x81, 0xFF, 1 << 63) + MASK
    assert feed_all(frame, 1 << 62) == [Failure(1002, "invalid payload length")]


def test_invalid_utf8_is_1007_and_checked_per_fragment() -> None:
    assert feed_all(client_frame(b"\xce\xba\xe1\xbd")) == [Failure(1007, "invalid UTF-8 in a text message")]
    # a character split across fragments is fine
    ok = client_frame(b"\xce", fin=False) + client_frame(b"\xba", wsframe.OP_CONTINUATION)
    assert feed_all(ok) == [Message("κ".encode())]
    # fail fast: the bad fragment fails before the message is complete
    parser = FrameParser(1000)
    assert parser.feed(client_frame(b"ok", fin=False)) == []
    assert parser.feed(client_frame(b"\xff", wsframe.OP_CONTINUATION, fin=False)) == [
        Failure(1007, "invalid UTF-8 in a text message")]
    # an incomplete character at the end of the message
    bad_end = client_frame(b"a", fin=False) + client_frame(b"\xce", wsframe.OP_CONTINUATION)
    assert feed_all(bad_end) == [Failure(1007, "invalid UTF-8 in a text message")]
    # binary messages are not UTF-8
    assert feed_all(client_frame(b"\xff", wsframe.OP_BINARY)) == [Message(b"\xff", binary=True)]


@pytest.mark.parametrize(("payload", "expected"), [
    (b"", Close(1005, "")),
    (struct.pack("!H", 1000), Close(1000, "")),
    (struct.pack("!H", 4001) + "bye κ".encode(), Close(4001, "bye κ")),
    (struct.pack("!H", 3000), Close(3000, "")),
    (b"\x03", Failure(1002, "close payload of one byte")),
    (struct.pack("!H", 0), Failure(1002, "invalid close code")),
    (struct.pack("!H", 999), Failure(1002, "invalid close code")),
    (struct.pack("!H", 1005), Failure(1002, "invalid close code")),
    (struct.pack("!H", 1006), Failure(1002, "invalid close code")),
    (struct.pack("!H", 1015), Failure(1002, "invalid close code")),
    (struct.pack("!H", 5000), Failure(1002, "invalid close code")),
    (struct.pack("!H", 1000) + b"\xff", Failure(1007, "invalid UTF-8 in the close reason")),
])
def test_close_payload_rules(payload: bytes, expected: wsframe.Event) -> None:
    parser = FrameParser(1000)
    assert parser.feed(client_frame(payload, wsframe.OP_CLOSE) + client_frame(b"after")) == [expected]
    assert parser.done and parser.feed(client_frame(b"later")) == []


def test_close_between_fragments_ends_the_message() -> None:
    data = client_frame(b"part", fin=False) + client_frame(struct.pack("!H", 1000), wsframe.OP_CLOSE)
    assert feed_all(data) == [Close(1000, "")]


def test_server_control_frames() -> None:
    assert wsframe.ping_frame() == b"\x89\x00"
    assert wsframe.pong_frame(b"ab") == b"\x8a\x02ab"


def test_invalid_utf8_fails_before_its_frame_is_complete() -> None:
    """§8.1 fail fast, within one frame whose bytes arrive in pieces (Autobahn 6.4.3/6.4.4)."""
    payload = "κόσμε".encode() + b"\xf4\x90\x80\x80" + b"edited" * 10
    frame = client_frame(payload)
    parser = FrameParser(1000)
    cut = 2 + 4 + len("κόσμε".encode()) + 2  # header, mask, the valid text and half the bad sequence
    assert parser.feed(frame[:cut - 3]) == []
    assert parser.feed(frame[cut - 3:cut]) == [Failure(1007, "invalid UTF-8 in a text message")]
    # the same inside a continuation, from the state the earlier fragment left (a split character)
    parser = FrameParser(1000)
    assert parser.feed(client_frame(b"ok\xce", fin=False)) == []
    cont = client_frame(b"\xbaok" + b"\xff" + b"rest" * 10, wsframe.OP_CONTINUATION)
    assert parser.feed(cont[:9]) == []  # header, mask, b"\xbaok": the split character completes
    assert parser.feed(cont[9:10]) == [Failure(1007, "invalid UTF-8 in a text message")]


@pytest.mark.parametrize("step", [1, 2, 3, 5, 7])
def test_valid_multibyte_text_in_pieces_of_any_size(step: int) -> None:
    text = ("héllo wörld κόσμε 😀 " * 20).encode()
    data = client_frame(text[:100], fin=False) + client_frame(text[100:], wsframe.OP_CONTINUATION)
    assert feed_all(data, step=step) == [Message(text)]
    assert feed_all(client_frame(text), step=step) == [Message(text)]
