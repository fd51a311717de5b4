"""Redis/Valkey Sentinel: ``redis+sentinel://`` URLs, and a broker that follows its primary
through a failover, on real servers (1 primary + 1 replica + 3 sentinels, ``valkey-server``).

The failover here is real: ``SENTINEL FAILOVER`` (the old primary stays up and becomes a
replica: the publish pipe gets READONLY, a pub/sub link still subscribed there would hear
nothing published on the new primary). The primary killed with SIGKILL, under two nodes and a
WebSocket client, is tests/ha/test_sentinel_failover.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from pushgate.backends import HistoryOptions, Publication, StreamPosition, check_url
from pushgate.backends.redis import LinkOptions, RedisBroker, RedisConnection
from pushgate.backends.validation import SentinelURL, parse_sentinel_url
from pushgate.config import ConfigError, load_config
from pushgate.errors import BrokerUnavailable

from ..helpers import timeout
from ..servers import SentinelGroup, start_sentinel_group
from .conftest import Recorder

OPTS = HistoryOptions(size=100, ttl=60)


# --- URLs ----------------------------------------------------------------------------------------


def test_sentinel_url_form() -> None:
    url = parse_sentinel_url(
        "redis+sentinel://app:s%3Acret@10.0.0.1:26379,10.0.0.2,[::1]:26380/mymaster/2"
        "?sentinel_password=sp&sentinel_username=su"
    )
    assert url == SentinelURL(
        sentinels=(("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 26380)),
        service="mymaster", db=2, username="app", password="s:cret",
        sentinel_username="su", sentinel_password="sp", tls=False,
    )
    assert "s:cret" not in repr(url) and "sp" not in repr(url).replace("tls", "")
    assert parse_sentinel_url("rediss+sentinel://h/m").tls
    assert parse_sentinel_url("VALKEY+SENTINEL://h:1/m/").sentinels == (("h", 1),)
    for scheme in ("redis+sentinel", "rediss+sentinel", "valkey+sentinel"):
        assert check_url(f"{scheme}://h:26379/m") == scheme
        conn = RedisConnection(f"{scheme}://h:26379/m")
        assert conn.sentinel is not None and not conn.cluster


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel:///mymaster", "needs the sentinels"),
        ("redis+sentinel://h1,,h2/mymaster", "needs the sentinels"),
        ("redis+sentinel://h1:26379", "needs the service name"),
        ("redis+sentinel://h1:26379/", "needs the service name"),
        ("redis+sentinel://h1:0/m", "bad sentinel port"),
        ("redis+sentinel://h1:70000/m", "bad sentinel port"),
        ("redis+sentinel://h1:port/m", "bad sentinel port"),
        ("redis+sentinel://::1:26379/m", "IPv6"),
        ("redis+sentinel://h1/m/zero", "must be a number"),
        ("redis+sentinel://h1/m/0/extra", "/<service>[/<db>]"),
        ("redis+sentinel://h1/m?sentinel_pasword=x", "unknown parameter"),
    ],
)
def test_bad_sentinel_url_is_a_clear_config_error(url: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={}, cli={"broker": url})
    assert info.value.key == "broker"
    assert says in str(info.value)


def test_bad_sentinel_url_is_one_line_from_the_command_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "pushgate", "config", "--broker", "redis+sentinel://h1:99999/m"],
                         capture_output=True, text=True, timeout=timeout(30), cwd=tmp_path)
    assert out.returncode != 0
    assert "bad sentinel port" in out.stderr and "Traceback" not in out.stderr


async def test_no_sentinel_answering_is_broker_unavailable() -> None:
    from ..servers import free_port

    conn = RedisConnection(f"redis+sentinel://127.0.0.1:{free_port()},127.0.0.1:{free_port()}/m", timeout=2.0)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="no primary for 'm'"):
        await conn.resolve()
    assert time.monotonic() - started < timeout(2.5)
    await conn.close_if_unused()


# --- real failovers ------------------------------------------------------------------------------


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelGroup]:
    group = start_sentinel_group(tmp_path)
    yield group
    group.stop()


async def _broker(url: str, prefix: str) -> tuple[RedisBroker, Recorder]:
    rec = Recorder()
    broker = RedisBroker(url, prefix=prefix, links=LinkOptions(ping_interval=0.5, ping_timeout=1.0,
                                                                backoff_min=0.05, backoff_max=0.5))
    await broker.start(rec)
    return broker, rec


async def _publish_until_accepted(broker: RedisBroker, channel: str, data: bytes, seconds: float = 20.0
                                  ) -> tuple[StreamPosition, float]:
    """Publish, retrying while the broker is unavailable (a failover in progress), with the same
    idempotency key; returns the position and how long it took."""
    started = time.monotonic()
    deadline = started + timeout(seconds)
    key = f"k-{data.decode().strip(chr(34))}"
    while True:
        try:
            return await broker.publish(channel, data, OPTS, idempotency_key=key), time.monotonic() - started
        except BrokerUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def _next_publication(rec: Recorder, seconds: float = 10.0) -> Publication:
    while True:
        item = await rec.next(seconds)
        if isinstance(item, Publication):
            return item


async def test_graceful_failover_readonly_and_demoted_link(sentinels: SentinelGroup) -> None:
    """``SENTINEL FAILOVER``: the old primary stays up as a replica. The link, still connected
    to it, notices that the sentinels name another primary (its check on the ping cycle; the
    sentinels also kill normal and pub/sub clients when they reconfigure the old primary, and a
    pipe that still reaches it gets READONLY: whichever comes first) and moves; a publication
    after the failover reaches the subscriber. The pipe's READONLY path on its own is the next
    test, deterministic."""
    broker, rec = await _broker(sentinels.url, "s2")
    try:
        await broker.subscribe("c")
        await broker.publish("c", b'"a"', OPTS)
        assert (await _next_publication(rec)).data == b'"a"'
        old = sentinels.primary()
        with redis.Redis(port=sentinels.sentinels[0].port) as s:
            s.execute_command("SENTINEL", "FAILOVER", sentinels.service)
        sentinels.wait_failover(old.port)

        def demoted() -> bool:
            with redis.Redis(port=old.port) as admin:
                return bool(admin.execute_command("ROLE")[0] == b"slave")

        from ..helpers import wait_for

        await wait_for(demoted, 20, what="the old primary to become a replica")
        assert old.proc is not None and old.proc.poll() is None  # still up
        assert await rec.next_link(10) is False  # the link left the demoted server
        pos, _ = await _publish_until_accepted(broker, "c", b'"b"')
        assert await rec.next_link(20) is True
        after = await broker.publish("c", b'"c"', OPTS)
        got = await _next_publication(rec)
        if got.data == b'"b"':
            got = await _next_publication(rec)
        assert (got.data, got.offset) == (b'"c"', after.offset)
        assert after.offset == pos.offset + 1
    finally:
        await broker.close()


async def test_readonly_reply_drops_the_pipe_and_it_reconnects(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                                               ) -> None:
    """The publish pipe's READONLY path, deterministically: its server becomes a replica
    (``REPLICAOF``, as a demoted primary) while the pipe is connected. The publication fails
    with BrokerUnavailable (one warning line, no traceback) and the connection is dropped, so the
    next connect asks where the primary is; once the server is a primary again, publishing works."""
    from ..servers import VALKEY_SERVER, RedisServer, free_port

    servers = []
    for _ in range(2):
        port = free_port()
        server = RedisServer(VALKEY_SERVER, tmp_path / f"v{port}", port, ["--appendonly", "no"])
        server.start()
        servers.append(server)
    primary, other = servers
    broker = RedisBroker(primary.url, prefix="ro", links=LinkOptions(backoff_min=0.05, backoff_max=0.2))
    await broker.start(None)
    try:
        await broker.publish("c", b"1", OPTS)
        with redis.Redis(port=primary.port) as admin:
            admin.execute_command("REPLICAOF", "127.0.0.1", str(other.port))
            with pytest.raises(BrokerUnavailable, match="READONLY"):
                await broker.publish("c", b"2", OPTS)
            assert any("is a replica now (READONLY" in r.getMessage() for r in caplog.records)
            assert not any(r.exc_info for r in caplog.records)
            admin.execute_command("REPLICAOF", "NO", "ONE")
        pos, _ = await _publish_until_accepted(broker, "c", b"3", seconds=10)
        assert pos.offset >= 1
        (pipe,) = broker.publish_pipes
        assert pipe.in_flight == 0
    finally:
        await broker.close()
        for server in servers:
            server.kill()


async def test_a_lost_primary_is_watched_until_the_sentinels_name_another(sentinels: SentinelGroup) -> None:
    """The pipes and links back off between reconnects; the watch (started by the first failed
    connect) tells them at once when the sentinels name a new primary, so the end of their
    backoff does not decide when publishing resumes."""
    conn = RedisConnection(sentinels.url, timeout=2.0)
    moved: list[float] = []
    conn.add_primary_listener(lambda: moved.append(time.monotonic()))
    try:
        desc = await conn.resolve()
        old = sentinels.primary()
        assert getattr(desc, "port", None) == old.port
        old.kill()
        conn.watch_primary()
        conn.watch_primary()  # one watch at a time: the second call adds none
        from ..helpers import wait_for

        await wait_for(lambda: bool(moved), 30, what="the watch to see the new primary")
        _, port = await conn.primary_address()
        assert port != old.port
        await wait_for(lambda: conn._primary_watch is None, 5, what="the watch to end")
        assert len(moved) == 1
    finally:
        await conn.close_if_unused()


async def test_a_link_waiting_to_reconnect_goes_at_once_when_the_primary_moved() -> None:
    from pushgate.backends.redis.link import PubSubLink

    from ..helpers import wait_for
    from ..servers import free_port

    conn = RedisConnection(f"redis://127.0.0.1:{free_port()}")  # nothing listens there
    attempts: list[float] = []

    async def factory() -> Any:
        attempts.append(time.monotonic())
        return conn.pubsub_connection()

    link = PubSubLink("t", factory, sharded=False, on_message=lambda topic, payload: None,
                      on_state=lambda: None, options=LinkOptions(backoff_min=600.0, backoff_max=600.0))
    link.start()
    try:
        await wait_for(lambda: link._first_attempt.is_set(), 5, what="the first connect to fail")
        await asyncio.sleep(0.3)
        assert len(attempts) == 1  # pausing: up to 600 s
        link.retry_now()
        await wait_for(lambda: len(attempts) == 2, 5, what="the retry")
    finally:
        await link.close()
