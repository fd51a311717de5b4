"""protocol/outgoing.py on bytes: SSE events never cut in two by a line break in the data, and
close reasons never cut in the middle of a character."""

from __future__ import annotations

import json

import pytest

from pushgate.backends.broker import Publication
from pushgate.protocol.outgoing import MAX_CLOSE_REASON, Outgoing, close_reason, message_outgoing, sse_data


def parse_sse(stream: bytes) -> list[dict[str, str]]:
    """Events of a ``text/event-stream`` as a browser dispatches them (WHATWG HTML, "event stream
    interpretation"): lines end at CRLF, LF or CR; ``data`` fields are joined with LF; a blank
    line dispatches the event."""
    events: list[dict[str, str]] = []
    fields: dict[str, list[str]] = {}
    text = stream.decode().replace("\r\n", "\n").replace("\r", "\n")
    for line in text.split("\n"):
        if line == "":
            if "data" in fields:
                events.append({name: "\n".join(values) for name, values in fields.items()})
            fields = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        fields.setdefault(name, []).append(value.removeprefix(" "))
    return events


@pytest.mark.parametrize(
    "data",
    [
        b'{"x":\n\n1}',
        b'{"x":\r\n\r\n1}',
        b'{"x":\r\r1}',
        b'\n{"x": [1,\n 2]}\n',
        b'{"text": "two\\nlines"}',  # an escaped newline is not a line break: untouched
    ],
)
def test_a_publication_with_line_breaks_is_one_sse_event_with_the_same_json(data: bytes) -> None:
    pub = Publication("news", data, 7, "ep")
    out = message_outgoing(pub)
    events = parse_sse(out.sse())
    assert len(events) == 1
    assert events[0]["id"] == "ep:7"
    frame = json.loads(events[0]["data"])
    assert frame == {"type": "message", "channel": "news", "data": json.loads(data), "offset": 7, "epoch": "ep"}
    # the WebSocket encoding keeps the publisher's bytes exactly
    assert data in out.ws()


def test_sse_events_in_a_row_stay_apart() -> None:
    stream = b"".join(Outgoing(p).sse() for p in (b'{"a":\n1}', b'{"b":\r\n\r\n2}', b'{"c":3}'))
    assert [json.loads(e["data"]) for e in parse_sse(stream)] == [{"a": 1}, {"b": 2}, {"c": 3}]


def test_a_payload_without_line_breaks_is_encoded_as_before() -> None:
    assert Outgoing(b'{"x":1}').sse() == b'data: {"x":1}\n\n'
    assert Outgoing(b'{"x":1}', "e:1").sse() == b'id: e:1\ndata: {"x":1}\n\n'
    assert sse_data(b"[1]") == b"data: [1]\n"
    assert sse_data(b"[1,\n2]") == b"data: [1,\ndata: 2]\n"


def test_the_sse_encoding_is_made_once() -> None:
    out = Outgoing(b'{"x":\n1}')
    assert out.sse() is out.sse()
    assert out.sse_chunk() is out.sse_chunk()
    assert out.sse_chunk() == b"%x\r\n" % len(out.sse()) + out.sse() + b"\r\n"


@pytest.mark.parametrize("char", ["a", "é", "€", "😀"])
@pytest.mark.parametrize("prefix", range(4))
def test_close_reasons_are_cut_on_a_character_boundary(char: str, prefix: int) -> None:
    reason = "x" * prefix + char * 200
    data = close_reason(reason)
    assert len(data) <= MAX_CLOSE_REASON
    text = data.decode()  # valid UTF-8: the peer reads our code instead of failing with 1007
    assert reason.startswith(text)
    assert len(data) > MAX_CLOSE_REASON - len(char.encode())  # nothing more than the cut character is lost


def test_short_close_reasons_are_kept_whole() -> None:
    assert close_reason("bye") == b"bye"
    assert close_reason("é" * 61 + "x") == ("é" * 61 + "x").encode()  # exactly 123 bytes
    assert close_reason("") == b""
    assert close_reason("\ud800 lone surrogate") == b"? lone surrogate"
    assert close_reason("é" * 10, limit=5) == "éé".encode()
