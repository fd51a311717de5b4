"""Property tests for the JSON wire codec: ``decode_command`` never raises, whatever the bytes;
every valid command round-trips with its ``data`` untouched; deep nesting is a ``DecodeError``."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pushgate.protocol import jsonwire
from pushgate.protocol.jsonwire import DecodeError, Ping, Presence, Publish, Rpc, Send, Since, Subscribe, Unsubscribe

from .strategies import json_texts, json_values, text

BOUNDED = settings(max_examples=200, deadline=None, database=None)

request_ids = st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1) | text


def _is_result(value: object) -> bool:
    return isinstance(value, DecodeError | Subscribe | Unsubscribe | Publish | Send | Presence | Ping | Rpc) or (
        type(value).__module__ == jsonwire.__name__  # a command type added later (e.g. refresh)
    )


@BOUNDED
@given(st.binary(max_size=512))
def test_any_bytes_decode_without_raising(frame: bytes) -> None:
    result = jsonwire.decode_command(frame)
    assert _is_result(result)
    if isinstance(result, DecodeError):
        assert result.code in {"bad_json", "unknown_type", "bad_request"} and result.message


@BOUNDED
@given(st.text(max_size=256))
def test_any_text_decodes_without_raising(frame: str) -> None:
    assert _is_result(jsonwire.decode_command(frame))


@settings(max_examples=100, deadline=None, database=None)
@given(st.dictionaries(st.sampled_from(["type", "id", "channel", "data", "to", "since", "method", "epoch"]),
                       json_values, max_size=6))
def test_command_shaped_objects_decode_without_raising(obj: dict[str, Any]) -> None:
    """Near misses (right keys, wrong types) are the frames most likely to trip a decoder."""
    result = jsonwire.decode_command(json.dumps(obj).encode())
    assert _is_result(result)


@st.composite
def commands(draw: st.DrawFn) -> tuple[dict[str, Any], object, Any]:
    """A valid command as a JSON object, the struct it must decode to, and its data value."""
    kind = draw(st.sampled_from(["subscribe", "unsubscribe", "publish", "send", "presence", "ping", "rpc"]))
    rid = draw(request_ids)
    channel = draw(text)
    data, _ = draw(json_texts())
    if kind == "subscribe":
        since = draw(st.none() | st.builds(Since, text, st.integers(min_value=0, max_value=2**62)))
        obj: dict[str, Any] = {"channel": channel}
        if since is not None:
            obj["since"] = {"epoch": since.epoch, "offset": since.offset}
        expected: object = Subscribe(channel, since, rid)
    elif kind == "unsubscribe":
        obj, expected = {"channel": channel}, Unsubscribe(channel, rid)
    elif kind == "publish":
        obj, expected = {"channel": channel, "data": data}, Publish
    elif kind == "send":
        obj, expected = {"to": draw(st.lists(text, max_size=3)), "data": data}, Send
    elif kind == "presence":
        obj, expected = {"channel": channel}, Presence(channel, rid)
    elif kind == "ping":
        obj, expected = {}, Ping(rid)
    else:
        obj, expected = {"method": draw(text), "data": data}, Rpc
    obj = {"type": kind, **obj}
    if rid is not None or draw(st.booleans()):
        obj["id"] = rid
    return obj, expected, data


@BOUNDED
@given(commands(), st.booleans())
def test_valid_commands_round_trip(command: tuple[dict[str, Any], object, Any], as_text: bool) -> None:
    obj, expected, data = command
    frame = json.dumps(obj, ensure_ascii=False)
    result = jsonwire.decode_command(frame if as_text else frame.encode())
    assert not isinstance(result, DecodeError), (obj, result)
    if isinstance(expected, type):  # carries raw data: compare the fields and the data's value
        assert isinstance(result, expected)
        assert getattr(result, "id", None) == obj.get("id")
        raw = bytes(result.data)  # type: ignore[attr-defined]
        assert json.loads(raw) == data
        assert raw.decode() in frame  # the very bytes the client sent, not a re-encoding
        if isinstance(result, Send):
            assert result.to == obj["to"]
        if isinstance(result, Publish):
            assert result.channel == obj["channel"]
        if isinstance(result, Rpc):
            assert result.method == obj["method"]
    else:
        assert result == expected


@BOUNDED
@given(st.integers(min_value=5_000, max_value=60_000), st.sampled_from([b"[", b"{\"a\":"]),
       st.integers(min_value=-(2**31), max_value=2**31), st.booleans())
def test_deep_nesting_is_a_decode_error(n: int, opener: bytes, rid: int, as_data: bool) -> None:
    """Past the decoder's own nesting limit (msgspec's; it follows Python's recursion limit, 1,000
    by default and raised to about 2,000 while Hypothesis runs, hence 5,000 here) a frame is a
    ``DecodeError`` carrying the request id, never a ``RecursionError``. Shallower data that
    still nests deeper than ``max_json_depth`` decodes here and is refused by
    :func:`pushgate.payload.check_data` at the node's door (``test_fuzz_payload``)."""
    closer = b"]" if opener == b"[" else b"}"
    deep = opener * n + b"1" + closer * n
    frame = (b'{"type":"publish","id":%d,"channel":"c","data":%s}' % (rid, deep)) if as_data else deep
    result = jsonwire.decode_command(frame)
    assert isinstance(result, DecodeError) and result.code in {"bad_request", "bad_json"}
    if as_data:
        assert result.id == rid  # the reply still names the request
