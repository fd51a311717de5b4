"""Every advertised URL scheme reaches a real server; link options are one typed value."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from pushgate.backends import SUPPORTED_SCHEMES, HistoryOptions, check_url, create_stores
from pushgate.backends.redis import LinkOptions, RedisBroker, RedisConnection

from ..servers import REDIS_SERVER, RedisServer, free_port
from .conftest import Recorder

OPTS = HistoryOptions(size=10, ttl=60)


@pytest.fixture
def unix_redis(tmp_path: Path) -> Iterator[tuple[RedisServer, Path]]:
    # A short path: Unix socket paths are limited to ~107 bytes.
    sock = Path("/tmp") / f"pg-{free_port()}.sock"
    port = free_port()
    server = RedisServer(REDIS_SERVER, tmp_path / f"redis-{port}", port, ["--unixsocket", str(sock)])
    server.start()
    yield server, sock
    server.stop()
    sock.unlink(missing_ok=True)


async def _round_trip(url: str, prefix: str) -> None:
    """A broker/presence/lease trio from ``url``: publish, receive, presence and a lease."""
    broker, presence, lease = create_stores(url, prefix=prefix)
    rec = Recorder()
    await broker.start(rec)
    await presence.start("n1")
    try:
        assert broker.healthy
        await broker.subscribe("c")
        pos = await broker.publish("c", b"1", OPTS)
        got = await rec.next()
        assert (got.data, got.offset) == (b"1", pos.offset)
        await presence.add_connection("n1-a", "alice")
        assert (await presence.online()).users == 1
        assert await lease.claim_once("k", 5)
    finally:
        await presence.close()
        await broker.close()


async def test_unix_socket_scheme(unix_redis: tuple[RedisServer, Path]) -> None:
    _, sock = unix_redis
    await _round_trip(f"unix://{sock}?db=0", "ux")


async def test_valkey_scheme_is_plain_redis(redis_server: RedisServer) -> None:
    await _round_trip(redis_server.url.replace("redis://", "valkey://"), "vk")


def test_scheme_list_is_what_the_factories_accept() -> None:
    for scheme in SUPPORTED_SCHEMES:
        path = "/service" if scheme.endswith("+sentinel") else ""  # a Sentinel URL names its service
        assert check_url(f"{scheme.upper()}://h:1{path}") == scheme
        if scheme != "memory":
            conn = RedisConnection(f"{scheme}://127.0.0.1:1{path}")
            assert conn.cluster == scheme.endswith("+cluster")
            assert (conn.sentinel is not None) == scheme.endswith("+sentinel")
    with pytest.raises(ValueError, match="redis\\+cluster://"):
        check_url("kafka://x")
    with pytest.raises(ValueError):
        create_stores("kafka://x")


def test_link_options_are_one_frozen_validated_value() -> None:
    opts = LinkOptions(ping_interval=1.0, backoff_min=0.2, backoff_max=2.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.ping_interval = 2.0  # type: ignore[misc]
    for bad in ({"ping_interval": 0}, {"ping_timeout": -1}, {"backoff_min": 0},
                {"backoff_min": 3.0, "backoff_max": 2.0}, {"confirm_timeout": 0}, {"connect_timeout": 0}):
        with pytest.raises(ValueError):
            LinkOptions(**bad)  # type: ignore[arg-type]
    broker = RedisBroker("redis://127.0.0.1:1/0", links=opts)
    assert broker.link_options is opts
