"""Hostile data at every door: refused with a clear error, never stored, everyone else keeps serving."""

from __future__ import annotations

import logging

import aiohttp
import pytest

from pushgate.app import App, ClientInfo
from pushgate.errors import ClientError
from pushgate.payload import check_data, check_json, json_depth

from .conftest import Running, ServerFactory


async def raw_api(server: Running, path: str, body: bytes) -> tuple[int, dict[str, object]]:
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession() as s, s.post(server.url + path, data=body, headers=headers) as r:
        return r.status, await r.json(content_type=None)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/publish", b'{"channel":"u8","data":"\xff"}'),
        ("/api/publish", b'{"channel":"u8","data":{"k":"ok \xc3"}}'),
        ("/api/broadcast", b'{"data":"\xc3"}'),
        ("/api/send", b'{"users":["bob"],"data":"\xed\xa0\x80"}'),  # an encoded surrogate is not UTF-8
    ],
)
async def test_invalid_utf8_through_the_api_is_refused_and_never_stored(
    server: Running, path: str, body: bytes
) -> None:
    bob = await server.client("user=bob")
    await bob.ok({"type": "subscribe", "channel": "u8"})
    status, err = await raw_api(server, path, body)
    assert status == 400, err
    assert err["error"]["code"] == "bad_request" and "UTF-8" in err["error"]["message"]  # type: ignore[index]
    await bob.nothing_more()
    assert (await bob.request({"type": "ping"}))["type"] == "pong"  # still connected
    status, hist = await server.api("GET", "/api/history/u8")
    assert status == 200 and hist["offset"] == 0 and hist["publications"] == []


async def test_deep_nesting_is_a_clear_error_without_a_traceback(
    server: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    deep = "[" * 20000 + "]" * 20000
    c = await server.client("user=a")
    assert (await c.request({"type": "ping"}))["type"] == "pong"
    await c.send_raw('{"type":"publish","channel":"n","data":' + deep + ',"id":1}')
    err = await c.next("error")
    assert err["code"] == "bad_request"
    await c.send_raw(deep)
    assert (await c.next("error"))["code"] == "bad_request"
    assert (await c.request({"type": "ping"}))["type"] == "pong"  # the connection keeps serving
    status, body = await raw_api(server, "/api/publish", b'{"channel":"n","data":' + deep.encode() + b"}")
    assert status == 400 and body["error"]["code"] == "bad_request"  # type: ignore[index]
    status, body = await server.api("POST", "/api/publish", {"channel": "n", "data": [[[[[[[[[[1]]]]]]]]]] * 1})
    assert status == 200  # ten levels are fine
    assert not [r for r in caplog.records if r.exc_info or "RecursionError" in r.getMessage()]


async def test_nesting_deeper_than_the_setting_is_refused(make_server: ServerFactory) -> None:
    server = await make_server(max_json_depth=4)
    c = await server.client("user=a")
    ok = await c.request({"type": "publish", "channel": "d", "data": [[[1]]], "id": 1})
    assert ok["type"] == "ok"
    err = await c.request({"type": "publish", "channel": "d", "data": [[[[[1]]]]], "id": 2})
    assert err["code"] == "bad_request" and "deeper than 4" in err["message"]


async def test_rpc_data_is_checked_before_the_handler_decodes_it(make_server: ServerFactory) -> None:
    app = App()

    @app.rpc("echo")
    def echo(client: ClientInfo, data: object) -> object:
        return data

    server = await make_server(app=app)
    c = await server.client("user=a")
    await c.send_raw('{"type":"rpc","method":"echo","id":7,"data":' + "[" * 5000 + "]" * 5000 + "}")
    err = await c.next("error")
    assert err["code"] == "bad_request" and err["id"] == 7


def test_payload_rules() -> None:
    assert json_depth(b"1") == 0 and json_depth(b"[1,{}]") == 2
    assert json_depth(b'{"a":"[[[[[[[["}') == 1  # brackets in strings do not count
    assert json_depth(b'["\\"[[["]') == 1  # nor after an escaped quote
    assert check_data(b'{"ok":"\xc3\xa9"}') == b'{"ok":"\xc3\xa9"}'
    for bad in (b'"\xff"', b"[" * 33 + b"]" * 33):
        with pytest.raises(ClientError, match=r"UTF-8|deeper"):
            check_data(bad)
    with pytest.raises(ClientError, match="not valid JSON"):
        check_json(b'{"a":')
