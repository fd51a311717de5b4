"""``rediss://``: the broker's three ways to Redis (the command client, the publish pipe and the
pub/sub link) over TLS, verified against the CA the URL names.

The pip-installed servers are built without TLS, so the test puts a TLS-terminating proxy
(asyncio, on 127.0.0.1) in front of a real ``redis-server``: it accepts only TLS, so every byte
that reaches Redis came through a verified TLS connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from pushgate.backends import HistoryOptions, Publication
from pushgate.backends.redis import LinkOptions, RedisBroker, RedisConnection
from pushgate.errors import BrokerUnavailable

from ..helpers import timeout
from ..servers import RedisServer, start_redis
from ..test_tls import _key, _self_signed, _write_key
from .conftest import Recorder

OPTS = HistoryOptions(size=100, ttl=60)


class TlsProxy:
    """TLS in front, plain TCP to ``port`` behind; counts the TLS connections it carried."""

    def __init__(self, port: int, cert: Path, key: Path) -> None:
        self.port = port
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.connections = 0
        self._writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._writers += [writer, up_writer]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in self._writers:
                writer.close()
            await self.server.wait_closed()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
async def proxy(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[tuple[TlsProxy, int, Path]]:
    key = _key()
    cert = _self_signed(key, tmp_path / "cert.pem")
    tls = TlsProxy(redis_server.port, cert, _write_key(key, tmp_path / "key.pem"))
    port = await tls.start()
    yield tls, port, cert
    await tls.close()


async def test_broker_over_rediss_publishes_subscribes_and_reads_history(proxy: tuple[TlsProxy, int, Path]) -> None:
    tls, port, ca = proxy
    broker = RedisBroker(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}&ssl_cert_reqs=required", prefix="tls",
                         links=LinkOptions(ping_interval=1.0, ping_timeout=2.0))
    rec = Recorder()
    await broker.start(rec)
    try:
        assert broker.healthy
        await broker.subscribe("c")
        pos = await broker.publish("c", b'"over tls"', OPTS)  # the publish pipe
        while not isinstance(item := await rec.next(), Publication):
            pass
        assert (item.data, item.offset) == (b'"over tls"', pos.offset)  # the pub/sub link
        history = await broker.history("c")  # the command client
        assert [p.data for p in history.publications] == [b'"over tls"']
        assert tls.connections >= 3  # link, pipe and command client each came through TLS
    finally:
        await broker.close()


async def test_an_untrusted_certificate_is_broker_unavailable(proxy: tuple[TlsProxy, int, Path],
                                                               tmp_path: Path) -> None:
    _, port, _ = proxy
    other_ca = _self_signed(_key(), tmp_path / "other.pem")  # not the proxy's certificate
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={other_ca}&ssl_cert_reqs=required"
    broker = RedisBroker(RedisConnection(url, timeout=2.0), prefix="tls")
    await broker.start(None)
    try:
        with pytest.raises(BrokerUnavailable):
            await asyncio.wait_for(broker.publish("c", b"1", OPTS), timeout(10))
    finally:
        await broker.close()
