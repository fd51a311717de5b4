"""The STOMP frame codec on bytes, one rule of the STOMP 1.2 specification (and its 1.0/1.1
differences) per test: framing, EOLs, heart-beats, escaping, content-length, limits, commands,
negotiation. Every bad input must come back as a ProtocolError event, never as an exception."""

from __future__ import annotations

import pytest

from pushgate.protocol import stomp
from pushgate.protocol.stomp import (
    ALL_COMMANDS,
    Frame,
    FrameParser,
    Heartbeat,
    ProtocolError,
    encode,
    negotiate,
    negotiate_heartbeat,
    parse_heartbeat,
)


def parse(data: bytes, **kwargs: object) -> list[stomp.Event]:
    return FrameParser(**kwargs).feed(data)  # type: ignore[arg-type]


def only_frame(data: bytes, **kwargs: object) -> Frame:
    events = [e for e in parse(data, **kwargs) if not isinstance(e, Heartbeat)]
    assert len(events) == 1 and isinstance(events[0], Frame), events
    return events[0]


def error_of(data: bytes, **kwargs: object) -> ProtocolError:
    events = parse(data, **kwargs)
    assert events and isinstance(events[-1], ProtocolError), events
    return events[-1]


# --- §STOMP Frames: command EOL, headers EOL, blank line, body, NUL ---------------------------


def test_a_frame_with_lf_line_ends() -> None:
    frame = only_frame(b"SEND\ndestination:/topic/a\ncontent-type:text/plain\n\nhello\x00")
    assert frame == Frame("SEND", (("destination", "/topic/a"), ("content-type", "text/plain")), b"hello")


def test_crlf_line_ends_are_accepted_everywhere() -> None:
    frame = only_frame(b"SEND\r\ndestination:/topic/a\r\n\r\nhello\r\n\x00")
    assert frame == Frame("SEND", (("destination", "/topic/a"),), b"hello\r\n")  # the body is not a line


def test_a_frame_without_headers_or_body() -> None:
    assert only_frame(b"DISCONNECT\n\n\x00") == Frame("DISCONNECT")


def test_values_are_never_trimmed_and_later_colons_belong_to_the_value() -> None:
    frame = only_frame(b"SEND\n destination : /a \nempty:\nurl:http://x:1/\n\n\x00", version="1.0")
    assert frame.headers == ((" destination ", " /a "), ("empty", ""), ("url", "http://x:1/"))


def test_repeated_headers_keep_wire_order_and_the_first_wins() -> None:
    frame = only_frame(b"SEND\nfoo:World\nfoo:Hello\n\n\x00")
    assert frame.headers == (("foo", "World"), ("foo", "Hello"))
    assert frame.get("foo") == "World"
    assert frame.get("bar") is None and frame.get("bar", "x") == "x"


def test_several_frames_in_one_feed() -> None:
    events = parse(b"BEGIN\ntransaction:t\n\n\x00COMMIT\ntransaction:t\n\n\x00")
    assert events == [Frame("BEGIN", (("transaction", "t"),)), Frame("COMMIT", (("transaction", "t"),))]


def test_a_frame_split_anywhere_is_the_same_frame() -> None:
    data = b"SEND\r\ndestination:/a\r\ncontent-length:3\r\n\r\na\x00b\x00\r\n"
    whole = FrameParser().feed(data)
    for cut in range(len(data) + 1):
        parser = FrameParser()
        events = parser.feed(data[:cut]) + parser.feed(data[cut:])
        assert [e for e in events if isinstance(e, Frame)] == [e for e in whole if isinstance(e, Frame)]
        assert sum(e.count for e in events if isinstance(e, Heartbeat)) == 1


def test_byte_by_byte() -> None:
    data = b"\nSUBSCRIBE\nid:0\ndestination:/topic/x\n\n\x00\n\nUNSUBSCRIBE\nid:0\n\n\x00"
    parser = FrameParser()
    events = [e for b in data for e in parser.feed(bytes([b]))]
    assert [e for e in events if isinstance(e, Frame)] == [
        Frame("SUBSCRIBE", (("id", "0"), ("destination", "/topic/x"))),
        Frame("UNSUBSCRIBE", (("id", "0"),)),
    ]
    assert sum(e.count for e in events if isinstance(e, Heartbeat)) == 3


# --- §Heart-beating: EOLs between frames -------------------------------------------------------


def test_eols_between_frames_are_heartbeats_coalesced_per_run() -> None:
    events = parse(b"\n\r\n\nACK\nid:1\n\n\x00\r\n\n")
    assert events == [Heartbeat(3), Frame("ACK", (("id", "1"),)), Heartbeat(2)]


def test_a_heartbeat_alone_and_a_cr_waiting_for_its_lf() -> None:
    parser = FrameParser()
    assert parser.feed(b"\n") == [Heartbeat(1)]
    assert parser.feed(b"\r") == []
    assert parser.feed(b"\n") == [Heartbeat(1)]
    assert stomp.HEARTBEAT == b"\n"


def test_a_flood_of_newlines_is_one_event() -> None:
    assert parse(b"\n" * 1_000_000) == [Heartbeat(1_000_000)]


# --- §Value Encoding: escaping per version; none on CONNECT/STOMP/CONNECTED -------------------


def test_12_unescapes_all_four() -> None:
    frame = only_frame(b"SEND\na\\cb:c\\\\d\\ne\\rf\n\n\x00")
    assert frame.headers == (("a:b", "c\\d\ne\rf"),)


def test_11_has_no_cr_escape() -> None:
    assert only_frame(b"SEND\nk:c\\\\d\\ne\\cf\n\n\x00", version="1.1").headers == (("k", "c\\d\ne:f"),)
    assert "escape" in error_of(b"SEND\nk:a\\rb\n\n\x00", version="1.1").message


def test_10_has_no_escaping() -> None:
    assert only_frame(b"SEND\nk:a\\tb\\n\n\n\x00", version="1.0").headers == (("k", "a\\tb\\n"),)


@pytest.mark.parametrize("escape", [b"\\t", b"\\x", b"\\", b"\\C", b"\\N"])
def test_undefined_escapes_are_fatal(escape: bytes) -> None:
    error = error_of(b"SEND\nreceipt:r7\nk:a" + escape + b"\n\n\x00")
    assert "escape" in error.message and error.receipt == "r7"


def test_connect_and_stomp_are_never_unescaped() -> None:
    for command in (b"CONNECT", b"STOMP"):
        frame = only_frame(command + b"\nlogin:a\\tb\npasscode:x:y\\c\n\n\x00")
        assert frame.headers == (("login", "a\\tb"), ("passcode", "x:y\\c"))


def test_connected_is_never_unescaped_when_accepted() -> None:
    frame = only_frame(b"CONNECTED\nserver:a\\tb\n\n\x00", commands=ALL_COMMANDS)
    assert frame.headers == (("server", "a\\tb"),)


def test_the_version_is_settable_and_checked() -> None:
    parser = FrameParser()
    parser.version = "1.0"
    assert parser.feed(b"SEND\nk:\\t\n\n\x00") == [Frame("SEND", (("k", "\\t"),))]
    with pytest.raises(ValueError, match="unsupported"):
        parser.version = "2.0"


def test_connect_switches_the_parser_to_the_negotiated_version_for_pipelined_frames() -> None:
    parser = FrameParser()
    events = parser.feed(b"CONNECT\naccept-version:1.0\n\n\x00SEND\nk:\\t\n\n\x00")
    assert events[1] == Frame("SEND", (("k", "\\t"),))
    assert parser.version == "1.0"
    parser = FrameParser(version="1.0")
    parser.feed(b"STOMP\naccept-version:1.1,1.2\nhost:h\n\n\x00")
    assert parser.version == "1.2"
    parser.feed(b"CONNECT\naccept-version:9.9\n\n\x00")  # no common version: the session says no
    assert parser.version == "1.2"


def test_a_client_side_parser_follows_connected() -> None:
    parser = FrameParser(commands=stomp.SERVER_COMMANDS)
    events = parser.feed(b"CONNECTED\nversion:1.1\n\n\x00MESSAGE\nk:a\\cb\n\n\x00")
    assert parser.version == "1.1" and events[1] == Frame("MESSAGE", (("k", "a:b"),))
    parser.feed(b"CONNECTED\n\n\x00")  # no version header: a 1.0 server
    assert parser.version == "1.0"


# --- §Header content-length ---------------------------------------------------------------------


def test_content_length_body_may_hold_nuls() -> None:
    frame = only_frame(b"SEND\ncontent-length:5\n\n\x00a\x00b\x00\x00")
    assert frame.body == b"\x00a\x00b\x00"


def test_without_content_length_the_body_ends_at_the_first_nul() -> None:
    assert parse(b"SEND\n\nab\x00cd") == [Frame("SEND", (), b"ab")]


def test_the_first_content_length_counts() -> None:
    frame = only_frame(b"SEND\ncontent-length:1\ncontent-length:3\n\nx\x00")
    assert frame.body == b"x"


def test_zero_content_length_and_leading_zeros() -> None:
    assert only_frame(b"SEND\ncontent-length:0\n\n\x00").body == b""
    assert only_frame(b"SEND\ncontent-length:002\n\nab\x00").body == b"ab"


@pytest.mark.parametrize("value", [b"", b"-1", b"+1", b"1.0", b" 1", b"1 ", b"0x1", b"\xd9\xa3", b"9" * 30])
def test_bad_content_length_is_fatal_with_the_receipt(value: bytes) -> None:
    error = error_of(b"SEND\nreceipt:77\ncontent-length:" + value + b"\n\nx\x00")
    assert error.receipt == "77"
    assert "content-length" in error.message or "UTF-8" in error.message


def test_a_content_length_beyond_the_limit_fails_before_the_body_arrives() -> None:
    parser = FrameParser(max_frame_size=100)
    assert parser.feed(b"SEND\ncontent-length:1000\n\n") == [ProtocolError("frame larger than 100 bytes")]


def test_no_nul_after_content_length_bytes_is_fatal() -> None:
    error = error_of(b"SEND\nreceipt:q\ncontent-length:2\n\nabc\x00")
    assert "NUL" in error.message and error.receipt == "q"


# --- §Size Limits: bounded memory for a hostile peer ------------------------------------------


def test_frame_size_limit_counts_the_whole_frame() -> None:
    head = b"SEND\n\n"
    assert only_frame(head + b"x" * (64 - len(head) - 1) + b"\x00", max_frame_size=64).body == b"x" * 57
    assert "larger than 64" in error_of(head + b"x" * (64 - len(head)) + b"\x00", max_frame_size=64).message


def test_a_body_without_nul_is_not_buffered_past_the_limit() -> None:
    parser = FrameParser(max_frame_size=1000)
    assert parser.feed(b"SEND\n\n" + b"x" * 900) == []
    assert parser.feed(b"x" * 200) == [ProtocolError("frame larger than 1000 bytes")]
    assert parser.feed(b"\x00") == []  # dead
    assert parser.failed == ProtocolError("frame larger than 1000 bytes")


def test_header_count_limit() -> None:
    ok = b"SEND\n" + b"h:v\n" * 3 + b"\n\x00"
    assert len(only_frame(ok, max_headers=3).headers) == 3
    bad = b"SEND\nreceipt:r\n" + b"h:v\n" * 3 + b"\n\x00"
    assert error_of(bad, max_headers=3) == ProtocolError("more than 3 headers", "r")


def test_header_line_limit_on_complete_and_partial_lines() -> None:
    assert only_frame(b"SEND\nk:" + b"v" * 8 + b"\r\n\n\x00", max_header_length=10).get("k") == "v" * 8
    assert "longer than 10" in error_of(b"SEND\nk:" + b"v" * 9 + b"\n\n\x00", max_header_length=10).message
    parser = FrameParser(max_header_length=10)
    assert parser.feed(b"SEND\nk:vvvvvvvv\r") == []  # 10 bytes and maybe a CR LF: still fine
    assert "longer than 10" in parser.feed(b"v")[-1].message  # type: ignore[union-attr]


def test_an_endless_command_line_is_cut_off() -> None:
    parser = FrameParser(max_header_length=100)
    assert parser.feed(b"S" * 100) == []
    assert parser.feed(b"S" * 10) == [ProtocolError("header line longer than 100 bytes")]


# --- commands -------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(stomp.CLIENT_COMMANDS))
def test_every_client_command_is_accepted(command: str) -> None:
    assert only_frame(command.encode() + b"\n\n\x00").command == command


@pytest.mark.parametrize("command", [b"send", b"MESSAGE", b"CONNECTED", b"SEND ", b"\rSEND", b"\xff", b"X" * 60])
def test_unknown_commands_are_fatal_with_the_receipt(command: bytes) -> None:
    error = error_of(command + b"\nreceipt:abc\nk:\\t\n\n\x00")
    assert error.message.startswith("unknown command") and error.receipt == "abc"


def test_unknown_command_without_a_readable_receipt() -> None:
    assert error_of(b"FOO\n\n\x00") == ProtocolError("unknown command 'FOO'")


def test_frames_before_a_bad_one_are_delivered_then_the_parser_is_dead() -> None:
    parser = FrameParser()
    events = parser.feed(b"ACK\nid:1\n\n\x00BAD\n\n\x00ACK\nid:2\n\n\x00")
    assert events == [Frame("ACK", (("id", "1"),)), ProtocolError("unknown command 'BAD'")]
    assert parser.feed(b"ACK\nid:3\n\n\x00") == []


# --- header syntax and UTF-8 ----------------------------------------------------------------------


def test_header_names_and_values_are_utf8() -> None:
    assert only_frame("SEND\nnäme:välue ✓\n\n\x00".encode()).headers == (("näme", "välue ✓"),)
    assert error_of(b"SEND\nreceipt:1\nk:\xff\xfe\n\n\x00") == ProtocolError("header is not valid UTF-8", "1")


def test_a_header_line_needs_a_colon_and_a_name() -> None:
    assert "without ':'" in error_of(b"SEND\nnocolon\n\n\x00").message
    assert "empty name" in error_of(b"SEND\n:v\n\n\x00").message


def test_bodies_are_bytes_not_text() -> None:
    assert only_frame(b"SEND\ncontent-length:2\n\n\xff\xfe\x00").body == b"\xff\xfe"


# --- encoding -------------------------------------------------------------------------------------


def test_encode_a_message_with_content_length() -> None:
    frame = Frame("MESSAGE", (("subscription", "0"), ("message-id", "7"), ("destination", "/topic/a")), b"hi\x00")
    assert encode(frame) == (
        b"MESSAGE\nsubscription:0\nmessage-id:7\ndestination:/topic/a\ncontent-length:3\n\nhi\x00\x00"
    )


def test_encode_without_body_has_no_content_length() -> None:
    assert encode(Frame("RECEIPT", (("receipt-id", "9"),))) == b"RECEIPT\nreceipt-id:9\n\n\x00"


def test_encode_replaces_a_given_content_length_with_the_true_one() -> None:
    frame = Frame("ERROR", (("content-length", "99"), ("message", "m")), b"abc")
    assert encode(frame) == b"ERROR\nmessage:m\ncontent-length:3\n\nabc\x00"


def test_encode_escapes_per_version() -> None:
    frame = Frame("MESSAGE", (("a:b", "c\\d\ne\rf"),))
    assert encode(frame) == b"MESSAGE\na\\cb:c\\\\d\\ne\\rf\n\n\x00"
    assert encode(frame, version="1.1") == b"MESSAGE\na\\cb:c\\\\d\\ne\rf\n\n\x00"
    # 1.0 cannot escape: an EOL would start a forged header line; ':' would end the name
    assert encode(frame, version="1.0") == b"MESSAGE\na_b:c\\d e f\n\n\x00"


def test_connected_is_never_escaped_and_cannot_be_injected_into() -> None:
    frame = Frame("CONNECTED", (("version", "1.2"), ("user-name", "eve\nsession:forged"), ("server", "pg\\1")))
    assert encode(frame) == b"CONNECTED\nversion:1.2\nuser-name:eve session:forged\nserver:pg\\1\n\n\x00"


def test_encode_never_raises_on_lone_surrogates() -> None:
    assert encode(Frame("ERROR", (("message", "bad \udc80"),))) == b"ERROR\nmessage:bad ?\n\n\x00"


def test_encode_head_plus_body_is_the_frame() -> None:
    frame = Frame("MESSAGE", (("destination", "/a"),), b"xyz")
    head = stomp.encode_head(frame.command, frame.headers, len(frame.body))
    assert head + frame.body + b"\x00" == encode(frame)


def test_encoded_server_frames_parse_back() -> None:
    parser = FrameParser(commands=ALL_COMMANDS)
    frame = Frame("MESSAGE", (("destination", "/topic/a:b"), ("k", "\\\r\n:")), b"\x00body\x00")
    (back,) = parser.feed(encode(frame))
    assert back == Frame("MESSAGE", (*frame.headers, ("content-length", "6")), frame.body)


# --- §Protocol Negotiation and §Heart-beating ------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "1.0"),
        ("1.0", "1.0"),
        ("1.1", "1.1"),
        ("1.0,1.1,1.2", "1.2"),
        ("1.2,1.0", "1.2"),
        ("1.1, 1.0", "1.1"),
        ("1.0,1.1,2.0", "1.1"),
        ("2.0", None),
        ("", None),
    ],
)
def test_negotiate(accept: str | None, expected: str | None) -> None:
    assert negotiate(accept) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, (0, 0)), ("0,0", (0, 0)), ("10000,10000", (10000, 10000)), ("0,500", (0, 500)), ("007,1", (7, 1))],
)
def test_parse_heartbeat(value: str | None, expected: tuple[int, int]) -> None:
    assert parse_heartbeat(value) == expected


@pytest.mark.parametrize("value", ["", "1", "1,2,3", "-1,0", "1, 2", "a,b", "1.5,2", ",", "٣,1", "9" * 40 + ",1",
                                   "2147483648,0"])
def test_parse_heartbeat_rejects(value: str) -> None:
    with pytest.raises(ValueError, match="heart-beat"):
        parse_heartbeat(value)


@pytest.mark.parametrize(
    ("client", "server", "expected"),
    [
        ((0, 0), (10000, 10000), (0, 0)),
        ((5000, 0), (10000, 10000), (0, 10000)),
        ((0, 5000), (10000, 10000), (10000, 0)),
        ((20000, 3000), (10000, 10000), (10000, 20000)),
        ((20000, 3000), (0, 0), (0, 0)),
        ((1000, 1000), (10000, 0), (10000, 0)),
    ],
)
def test_negotiate_heartbeat(client: tuple[int, int], server: tuple[int, int], expected: tuple[int, int]) -> None:
    assert negotiate_heartbeat(client, server) == expected
