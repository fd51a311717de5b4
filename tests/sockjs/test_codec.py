"""SockJS framing without sockets: frames, bodies, the escapes, and the once-per-frame cache."""

from __future__ import annotations

import json

import pytest

from pushgate.protocol import wsframe
from pushgate.web.sockjs_codec import (
    BodyError,
    MessageCache,
    close_frame,
    json_string,
    message_frame,
    parse_send_body,
    parse_ws_message,
    valid_id,
    ws_payload,
)


def test_frames() -> None:
    assert message_frame([b'"a"']) == b'a["a"]'
    assert message_frame([b'"a"', b'"b"']) == b'a["a","b"]'
    assert close_frame(3000, "Go away!") == b'c[3000,"Go away!"]'
    assert close_frame(2010, "Another connection still open") == b'c[2010,"Another connection still open"]'


def test_json_string_escapes_what_browsers_mangle() -> None:
    text = "MESSAGE\nx:\"y\"\n\n\u2028\u200d\u2060\ufff0é\x00"
    literal = json_string(text)
    assert literal.isascii() is False  # é stays as it is
    for char in ("\u2028", "\u200d", "\u2060", "\ufff0", "\x00", "\n"):
        assert char.encode() not in literal
    assert b"\\u2028" in literal and b"\\u0000" in literal
    assert json.loads(literal) == text


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70000])
def test_ws_payload_undoes_server_framing(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    assert ws_payload(wsframe.server_frame(payload)) == payload


def test_send_bodies() -> None:
    assert parse_send_body(b'["a","b"]') == ["a", "b"]
    assert parse_send_body(b"[]") == []
    for body, message in ((b"", "Payload expected."), (b'["a', "Broken JSON encoding."),
                          (b'"a"', "Payload must be a JSON array of strings."), (b"[1]", "Payload must")):
        with pytest.raises(BodyError, match=message.rstrip(".")):
            parse_send_body(body)


def test_websocket_messages() -> None:
    assert parse_ws_message("") == []
    assert parse_ws_message('"one"') == ["one"]
    assert parse_ws_message('["a","b"]') == ["a", "b"]
    with pytest.raises(BodyError):
        parse_ws_message('["a')
    with pytest.raises(BodyError):
        parse_ws_message("{}")


def test_ids() -> None:
    assert valid_id("000") and valid_id("_") and valid_id("abc-d_e%20")
    assert not valid_id("") and not valid_id("a.b") and not valid_id("x" * 129)


def test_message_cache_escapes_a_shared_frame_once_and_stays_bounded() -> None:
    cache = MessageCache(max_bytes=1000)
    framed = wsframe.server_frame(b"MESSAGE\ndestination:/topic/a\n\n{}\x00")
    first = cache.literal(framed)
    assert cache.literal(framed) is first  # the second subscriber gets the same bytes object
    assert json.loads(first) == "MESSAGE\ndestination:/topic/a\n\n{}\x00"
    for i in range(100):
        cache.literal(wsframe.server_frame(b"RECEIPT\nreceipt-id:%d\n\n\x00" % i))
    assert 0 < len(cache) < 40  # oldest entries went first
    huge = wsframe.server_frame(b"x" * 2000)
    assert json.loads(cache.literal(huge)) == "x" * 2000  # too big to keep, still converted
