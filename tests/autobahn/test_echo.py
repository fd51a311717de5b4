"""The conformance echo endpoint: present only under ``PUSHGATE_TEST_ECHO=1``, echoes text and
binary messages through the server's frame writer, and answers an invalid close code with 1002.
(``run.py`` beside this file drives the Autobahn|Testsuite against it.)"""

from __future__ import annotations

import aiohttp
import pytest

from pushgate.protocol.wsframe import peer_close_code_valid
from pushgate.web.app import ECHO_PATH, TEST_ECHO_ENV

from ..conftest import ServerFactory
from ..helpers import timeout


async def test_absent_without_the_flag(make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TEST_ECHO_ENV, raising=False)
    srv = await make_server()
    async with aiohttp.ClientSession() as s, s.get(srv.url + ECHO_PATH) as r:
        assert r.status == 404


async def test_echoes_text_and_binary(make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TEST_ECHO_ENV, "1")
    srv = await make_server(max_message_size=70_000)
    async with aiohttp.ClientSession() as s, s.ws_connect(srv.url + ECHO_PATH) as ws:
        for text in ["", "héllo", "x" * 125, "y" * 126, "z" * 65536]:
            await ws.send_str(text)
            assert await ws.receive_str(timeout=timeout(5)) == text
        await ws.send_bytes(b"\x00\xff" * 30_000)
        assert await ws.receive_bytes(timeout=timeout(5)) == b"\x00\xff" * 30_000
        # the server's normal limit applies: too big is closed with 1009
        await ws.send_bytes(b"a" * 70_001)
        msg = await ws.receive(timeout=timeout(5))
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1009


@pytest.mark.parametrize(("sent", "answer"), [(1000, 1000), (4001, 1000), (1006, 1002), (1015, 1002), (5000, 1002)])
async def test_close_codes(make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch, sent: int, answer: int) -> None:
    monkeypatch.setenv(TEST_ECHO_ENV, "1")
    srv = await make_server()
    async with aiohttp.ClientSession() as s, s.ws_connect(srv.url + ECHO_PATH) as ws:
        await ws.close(code=sent)
        assert ws.close_code == answer


def test_valid_close_codes_follow_rfc6455() -> None:
    assert [c for c in range(1000, 1016) if peer_close_code_valid(c)] == [1000, 1001, 1002, 1003, *range(1007, 1015)]
    assert peer_close_code_valid(0)  # a close frame without a code
    assert not peer_close_code_valid(999) and not peer_close_code_valid(2999)
    assert peer_close_code_valid(3000) and peer_close_code_valid(4999) and not peer_close_code_valid(5000)
