"""The JSON codec on bytes: decoding never raises, encoding is exact."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import msgspec
import pytest

from pushgate.protocol import jsonwire, wsframe
from pushgate.protocol.jsonwire import DecodeError, Ping, Publish, Rpc, Send, Since, Subscribe, Unsubscribe


def test_decodes_every_command() -> None:
    assert jsonwire.decode_command(b'{"type":"subscribe","channel":"news","id":1}') == Subscribe("news", None, 1)
    sub = jsonwire.decode_command(b'{"type":"subscribe","channel":"a","since":{"epoch":"e","offset":4}}')
    assert sub == Subscribe("a", Since("e", 4))
    assert jsonwire.decode_command('{"type":"unsubscribe","channel":"a","id":"x"}') == Unsubscribe("a", "x")
    pub = jsonwire.decode_command(b'{"type":"publish","channel":"a","data":{"k": [1, 2]}}')
    assert isinstance(pub, Publish) and bytes(pub.data) == b'{"k": [1, 2]}'
    send = jsonwire.decode_command(b'{"type":"send","to":["bob"],"data":"hi","from":"mallory"}')
    assert isinstance(send, Send) and send.to == ["bob"] and not hasattr(send, "from_")
    assert jsonwire.decode_command(b'{"type":"ping","id":3}') == Ping(3)
    rpc = jsonwire.decode_command(b'{"type":"rpc","method":"echo"}')
    assert isinstance(rpc, Rpc) and bytes(rpc.data) == b"null"


@pytest.mark.parametrize(
    ("frame", "code", "rid"),
    [
        (b"not json", "bad_json", None),
        (b"", "bad_json", None),
        (b"\xff\xfe", "bad_json", None),
        (b"[1,2]", "bad_request", None),
        (b'{"id":5}', "bad_request", 5),
        (b'{"type":"zap","id":"q"}', "unknown_type", "q"),
        (b'{"type":"subscribe","id":9}', "bad_request", 9),
        (b'{"type":"subscribe","channel":7,"id":9}', "bad_request", 9),
        (b'{"type":"send","to":"bob","data":1}', "bad_request", None),
        (b'{"type":"subscribe","channel":"a","since":{"epoch":"e"}}', "bad_request", None),
        (b'{"type":"ping","id":true}', "bad_request", None),
    ],
)
def test_bad_frames_become_errors_not_exceptions(frame: bytes, code: str, rid: object) -> None:
    result = jsonwire.decode_command(frame)
    assert isinstance(result, DecodeError)
    assert (result.code, result.id) == (code, rid)
    assert result.message


def test_message_frame_passes_data_through_unchanged() -> None:
    data = b'{"b": 1,   "a": "\\u00e9"}'
    frame = jsonwire.message_frame('ch"1', data, 42, "ep")
    assert data in frame
    assert json.loads(frame) == {"type": "message", "channel": 'ch"1', "data": {"b": 1, "a": "é"},
                                 "offset": 42, "epoch": "ep"}


def test_server_frames() -> None:
    assert json.loads(jsonwire.direct_frame(None, b"1")) == {"type": "direct", "from": None, "data": 1}
    assert json.loads(jsonwire.direct_frame("al", b"[]")) == {"type": "direct", "from": "al", "data": []}
    assert json.loads(jsonwire.broadcast_frame(b'"x"')) == {"type": "broadcast", "data": "x"}
    assert json.loads(jsonwire.ok_frame(3, {"data": msgspec.Raw(b"[1]")})) == {"id": 3, "type": "ok", "data": [1]}
    assert json.loads(jsonwire.error_frame(None, "bad_json", "m")) == {"type": "error", "code": "bad_json",
                                                                       "message": "m"}
    assert json.loads(jsonwire.pong_frame(None)) == {"type": "pong"}
    assert json.loads(jsonwire.pong_frame("p")) == {"id": "p", "type": "pong"}


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_server_frame_lengths(size: int) -> None:
    payload = b"x" * size
    frame = wsframe.server_frame(payload)
    assert frame[0] == 0x81  # FIN + text
    assert frame[1] & 0x80 == 0  # server frames are unmasked (RFC 6455 §5.1)
    if size < 126:
        assert frame[1] == size and frame[2:] == payload
    elif size < 65536:
        assert frame[1] == 126 and int.from_bytes(frame[2:4], "big") == size and frame[4:] == payload
    else:
        assert frame[1] == 127 and int.from_bytes(frame[2:10], "big") == size and frame[10:] == payload


def test_close_frame() -> None:
    frame = wsframe.close_frame(4001, "slow")
    assert frame[0] == 0x88 and frame[1] == 6 and frame[2:4] == (4001).to_bytes(2, "big") and frame[4:] == b"slow"
    assert len(wsframe.close_frame(1000, "x" * 300)) == 2 + 125


def test_protocol_package_does_no_io() -> None:
    """Sans-I/O: nothing under protocol/ imports asyncio, sockets or aiohttp."""
    root = Path(jsonwire.__file__).parent
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not names & {"asyncio", "socket", "aiohttp", "uvloop"}, path
