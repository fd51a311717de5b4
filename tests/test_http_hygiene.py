"""Malformed HTTP is the client's fault: a 400, and at most one short log line, never an ERROR
traceback (issue 7, item 11). Raw bytes on a real server, every log record captured."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from .conftest import ServerFactory
from .helpers import timeout

GARBAGE = {
    "binary junk": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
    "bad method": b"G\x01T / HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad version": b"GET / HTTP/9\r\nHost: x\r\n\r\n",
    "header without colon": b"GET /healthz HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
    "space before colon": b"GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n",
    "oversize header": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
    "oversize request line": b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "too many headers": b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(300)) + b"\r\n",
    "bad content-length": b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    "two content-lengths": b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "bad chunk size": (b"POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                       b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"),
    "nul in path": b"GET /heal\x00thz HTTP/1.1\r\nHost: x\r\n\r\n",
    "empty content-length": b"GET /api/channels HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\r\n",
}


async def _exchange(url: str, data: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        chunks = []
        while chunk := await asyncio.wait_for(reader.read(65536), timeout(5)):
            chunks.append(chunk)
        return b"".join(chunks)
    except ConnectionResetError:  # the server may close before reading all of an oversize head
        return b"".join(chunks)
    finally:
        writer.close()


@pytest.mark.parametrize("name", list(GARBAGE))
async def test_malformed_http_is_a_400_and_one_quiet_line(make_server: ServerFactory, name: str,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    srv = await make_server(handshake_timeout=5)
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        reply = await _exchange(srv.url, GARBAGE[name])
        # the node still serves (and anything it would log about the bad request is logged by now)
        assert b" 200 " in (await _exchange(srv.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    if reply:
        status = reply.split(b"\r\n", 1)[0].split(b" ")
        assert status[0].startswith(b"HTTP/1.") and status[1].startswith(b"4"), reply[:200]
        # the same error shape as every other refusal: {"error": {"code": ..., "message": ...}}
        head, _, body = reply.partition(b"\r\n\r\n")
        assert b"content-type: application/json" in head.lower(), reply[:300]
        error = json.loads(body)["error"]
        assert error["code"] and error["message"], error
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not noisy, [(r.name, r.levelname, r.getMessage()[:200]) for r in noisy]
    about_it = [r for r in caplog.records if r.name.startswith(("aiohttp", "pushgate.http"))]
    assert len(about_it) <= 1, [r.getMessage() for r in about_it]
    for record in about_it:
        assert "\n" not in record.getMessage() and len(record.getMessage()) < 400


async def test_a_real_server_error_still_logs_a_traceback(make_server: ServerFactory,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """Only the client's faults are quieted: a bug in a handler keeps its ERROR and traceback."""
    from pushgate.server import HttpLog, http_log

    logger = HttpLog(http_log)
    with caplog.at_level(logging.DEBUG, logger="pushgate.http"):
        try:
            raise RuntimeError("handler bug")
        except RuntimeError as exc:
            logger.exception("Error handling request from %s", "127.0.0.1", exc_info=exc)
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None
