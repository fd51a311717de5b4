"""Property tests for the STOMP frame codec.

- encode then parse gives the frame back, in every version, for every frame that version can
  represent; for any other text, encoding still makes exactly one frame (no header injection);
- a stream written here by a reference writer (from the STOMP 1.2 grammar, not from ``encode``:
  LF or CR LF, with or without content-length, heart-beats between frames) parses to its frames,
  whether it arrives whole or cut into arbitrary pieces;
- arbitrary bytes, whole or in pieces, never raise: they give frames, heart-beats and at most one
  ProtocolError, last, and the pieces change nothing but how heart-beats are grouped.
"""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from pushgate.protocol import stomp
from pushgate.protocol.stomp import ALL_COMMANDS, Event, Frame, FrameParser, Heartbeat, ProtocolError, encode

BOUNDED = settings(max_examples=200, deadline=None, database=None)
VERSIONS = st.sampled_from(stomp.SUPPORTED_VERSIONS)
UNESCAPED = {"CONNECT", "STOMP", "CONNECTED"}

#: Text with the characters escaping is about well represented; valid UTF-8 (no lone surrogates).
chars = st.characters(codec="utf-8") | st.sampled_from(":\\\n\r\x00 c")
names = st.text(chars, min_size=1, max_size=8).filter(lambda n: n != "content-length")
values = st.text(chars, max_size=12)
bodies = st.binary(max_size=40) | st.sampled_from([b"", b"\x00", b"a\x00b", b"\n\n", b"\r\n\x00\r\n"])


def representable(command: str, version: str, headers: tuple[tuple[str, str], ...]) -> bool:
    """What a version's header lines can carry (§Value Encoding)."""
    if command in UNESCAPED or version == "1.0":  # no escaping: nothing that ends a line or a name
        return all(not set(n) & {":", "\n", "\r"} and not set(v) & {"\n", "\r"} for n, v in headers)
    if version == "1.1":  # no \r escape: a raw CR is data, but not just before the EOL
        return not any(v.endswith("\r") for _, v in headers)
    return True


def parser(version: str = "1.2") -> FrameParser:
    return FrameParser(version=version, commands=ALL_COMMANDS, max_frame_size=1 << 20, max_headers=1000,
                       max_header_length=1 << 16)


def frames_of(events: list[Event]) -> list[Frame]:
    return [e for e in events if isinstance(e, Frame)]


def beats(events: list[Event]) -> int:
    return sum(e.count for e in events if isinstance(e, Heartbeat))


def feed_in_pieces(p: FrameParser, data: bytes, cuts: list[int]) -> list[Event]:
    events: list[Event] = []
    start = 0
    for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
        events += p.feed(data[start:cut])
        start = max(start, cut)
    return events


@st.composite
def frames(draw: st.DrawFn, commands: frozenset[str] = ALL_COMMANDS) -> tuple[str, Frame]:
    version = draw(VERSIONS)
    command = draw(st.sampled_from(sorted(commands)))
    headers = tuple(draw(st.lists(st.tuples(names, values), max_size=5)))
    if not representable(command, version, headers):
        headers = ()
    return version, Frame(command, headers, draw(bodies))


# --- encode -> parse ---------------------------------------------------------------------------


@BOUNDED
@given(frames())
@example(("1.2", Frame("MESSAGE", (("a:b", "c\\d\ne\rf"),), b"\x00")))
@example(("1.1", Frame("SEND", (("k\r", "a\rb"),))))
@example(("1.0", Frame("ERROR", (("k", "a\\tb:c"),), b"x")))
@example(("1.2", Frame("CONNECTED", (("server", "a\\b:c"),))))
def test_parse_of_encode_is_the_frame(case: tuple[str, Frame]) -> None:
    version, frame = case
    expected = frame.headers + ((("content-length", str(len(frame.body))),) if frame.body else ())
    assert parser(version).feed(encode(frame, version=version)) == [Frame(frame.command, expected, frame.body)]


@BOUNDED
@given(VERSIONS, st.sampled_from(sorted(ALL_COMMANDS)),
       st.lists(st.tuples(st.text(min_size=1) | st.just("\udc80x"), st.text() | st.just("a\nb:c\r")), max_size=5),
       bodies)
def test_any_text_encodes_to_exactly_one_frame(version: str, command: str, headers: list[tuple[str, str]],
                                               body: bytes) -> None:
    """Whatever a server-side string holds, it cannot end a header line or a frame early."""
    kept = [(n, v) for n, v in headers if n != "content-length"]
    events = parser(version).feed(encode(Frame(command, tuple(headers), body), version=version))
    assert len(events) == 1 and isinstance(events[0], Frame)
    assert events[0].command == command and events[0].body == body
    assert len(events[0].headers) == len(kept) + (1 if body else 0)


@BOUNDED
@given(VERSIONS, st.sampled_from(sorted(ALL_COMMANDS)),
       st.lists(st.tuples(names | st.just("content-length"), values), max_size=5), st.integers(0, 10**6))
def test_the_fast_path_is_only_an_optimisation(version: str, command: str, headers: list[tuple[str, str]],
                                               body_length: int) -> None:
    fast = stomp.encode_head(command, headers, body_length, version=version)
    assert fast == stomp._encode_head_slow(command, headers, body_length, version)


# --- a reference writer, from the grammar (§Augmented BNF) ----------------------------------------


def reference_escape(text: str, command: str, version: str) -> str:
    if command in UNESCAPED or version == "1.0":
        return text
    text = text.replace("\\", "\\\\").replace("\n", "\\n").replace(":", "\\c")
    return text.replace("\r", "\\r") if version == "1.2" else text


def reference_write(frame: Frame, version: str, eol: bytes, with_length: bool) -> bytes:
    lines = [frame.command.encode()]
    lines += [(reference_escape(n, frame.command, version) + ":" + reference_escape(v, frame.command, version)).encode()
              for n, v in frame.headers]
    return eol.join([*lines, b"", b""]) + frame.body + b"\x00"


@st.composite
def streams(draw: st.DrawFn) -> tuple[str, bytes, list[Frame], int]:
    """(version, bytes, the frames they hold, how many heart-beats) — CONNECT, STOMP and
    CONNECTED left out, since they switch the parser's version."""
    version = draw(VERSIONS)
    eol = draw(st.sampled_from([b"\n", b"\r\n"]))
    out: list[bytes] = []
    expected: list[Frame] = []
    heartbeats = 0
    for _ in range(draw(st.integers(0, 4))):
        gap = draw(st.lists(st.sampled_from([b"\n", b"\r\n"]), max_size=3))
        heartbeats += len(gap)
        out += gap
        _, frame = draw(frames(ALL_COMMANDS - UNESCAPED))
        if not representable(frame.command, version, frame.headers):
            frame = Frame(frame.command, (), frame.body)
        with_length = b"\x00" in frame.body or draw(st.booleans())
        if with_length:
            frame = Frame(frame.command, (*frame.headers, ("content-length", str(len(frame.body)))), frame.body)
        out.append(reference_write(frame, version, eol, with_length))
        expected.append(frame)
    tail = draw(st.integers(0, 3))
    out.append(b"\n" * tail)
    return version, b"".join(out), expected, heartbeats + tail


@BOUNDED
@given(streams(), st.lists(st.integers(min_value=0), max_size=12))
def test_a_stream_parses_to_its_frames_whole_or_in_pieces(stream: tuple[str, bytes, list[Frame], int],
                                                          cuts: list[int]) -> None:
    version, data, expected, heartbeats = stream
    whole = parser(version).feed(data)
    assert frames_of(whole) == expected and beats(whole) == heartbeats
    assert not any(isinstance(e, ProtocolError) for e in whole)
    pieces = feed_in_pieces(parser(version), data, cuts)
    assert frames_of(pieces) == expected and beats(pieces) == heartbeats


@BOUNDED
@given(streams(), st.binary(max_size=60))
def test_garbage_after_a_stream_cannot_take_its_frames_away(stream: tuple[str, bytes, list[Frame], int],
                                                            garbage: bytes) -> None:
    version, data, expected, _ = stream
    events = parser(version).feed(data + garbage)
    assert frames_of(events)[: len(expected)] == expected


# --- arbitrary bytes ---------------------------------------------------------------------------------

#: Bytes that look like STOMP often enough to reach deep states, and arbitrary bytes.
stomp_ish = st.lists(
    st.sampled_from([b"SEND", b"ACK", b"CONNECT", b"FOO", b"\n", b"\r\n", b"\r", b"\x00", b":", b"\\", b"\\c",
                     b"\\t", b"content-length:", b"receipt:", b"1", b"12", b"-", b"\xff", b"k", b"v"])
    | st.binary(max_size=8),
    max_size=40,
).map(b"".join)


def check_events(events: list[Event]) -> None:
    assert all(isinstance(e, Frame | Heartbeat | ProtocolError) for e in events)
    errors = [i for i, e in enumerate(events) if isinstance(e, ProtocolError)]
    assert errors in ([], [len(events) - 1]), "at most one ProtocolError, and it is the last event"
    for event in events:
        if isinstance(event, Frame):
            assert event.command in stomp.CLIENT_COMMANDS
        if isinstance(event, ProtocolError):
            assert event.message and "\n" not in event.message


@BOUNDED
@given(st.binary(max_size=200) | stomp_ish, st.lists(st.integers(min_value=0), max_size=12),
       st.sampled_from(stomp.SUPPORTED_VERSIONS), st.integers(8, 64), st.integers(0, 4), st.integers(2, 32))
def test_any_bytes_in_any_pieces_never_raise_and_pieces_change_nothing(
    data: bytes, cuts: list[int], version: str, max_frame_size: int, max_headers: int, max_header_length: int
) -> None:
    def make() -> FrameParser:
        return FrameParser(version=version, max_frame_size=max_frame_size, max_headers=max_headers,
                           max_header_length=max_header_length)

    whole = make().feed(data)
    check_events(whole)
    p = make()
    pieces = feed_in_pieces(p, data, cuts)
    check_events(pieces)
    # the same frames, the same heart-beats, and an error in one iff in the other
    assert frames_of(pieces) == frames_of(whole) and beats(pieces) == beats(whole)
    assert isinstance(pieces[-1:] and pieces[-1], ProtocolError) == isinstance(whole[-1:] and whole[-1], ProtocolError)
    if p.failed is not None:
        assert p.feed(b"ACK\nid:1\n\n\x00") == []


@BOUNDED
@given(st.binary(max_size=300))
def test_bytes_with_a_valid_prefix_never_raise(data: bytes) -> None:
    events = FrameParser(max_frame_size=128).feed(b"SEND\ndestination:/a\n\n\x00" + data)
    check_events(events)
    assert events[0] == Frame("SEND", (("destination", "/a"),))
