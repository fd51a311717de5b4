"""Link loss on a single Redis: the broker reports it, resubscribes everything, and recovers.

These tests kill the pub/sub connection, restart the server (with appendonly, so history
survives) and freeze it (SIGSTOP: TCP stays up, nothing answers), and wait for
``on_link_state(False)`` then ``(True)`` before checking that delivery resumes.
"""

from __future__ import annotations

from pathlib import Path

from redis.asyncio import Redis

from pushgate.backends import HistoryOptions, StreamPosition, UserMessage

from ..servers import RedisServer, start_redis
from .conftest import Backend, Recorder

OPTS = HistoryOptions(size=10, ttl=60)


async def _delivery_works(backend: Backend, rec: Recorder, channel: str) -> None:
    other, _ = await backend.broker()  # publish from another node to prove the round trip
    pos = await other.publish(channel, b'"after"', OPTS)
    got = await rec.next()
    assert (got.channel, got.data, got.offset) == (channel, b'"after"', pos.offset)


async def test_client_kill_pubsub(redis_backend: Backend, redis_server: RedisServer) -> None:
    broker, rec = await redis_backend.broker()
    await broker.subscribe("c")
    await broker.subscribe_user("alice")
    assert broker.healthy
    admin = Redis.from_url(redis_server.url)
    try:
        killed = await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        assert killed >= 1
    finally:
        await admin.aclose()
    assert await rec.next_link() is False
    assert not broker.healthy or rec.links.qsize() > 0  # may already be back
    assert await rec.next_link() is True
    assert broker.healthy
    await _delivery_works(redis_backend, rec, "c")
    other, _ = await redis_backend.broker()
    await other.send_to_users(["alice"], UserMessage("direct", data=b"1"))
    assert (await rec.next())[0] == "alice"


async def test_server_restart_with_appendonly(own_redis: RedisServer) -> None:
    backend = Backend("redis", own_redis.url, own_redis)
    try:
        broker, rec = await backend.broker()
        await broker.subscribe("c")
        before = await broker.publish("c", b"1", OPTS)
        assert (await rec.next()).offset == 1

        own_redis.stop()
        assert await rec.next_link() is False
        assert not broker.healthy
        own_redis.start()
        assert await rec.next_link() is True
        assert broker.healthy

        # The AOF kept meta and history: same epoch, offsets continue, recovery is complete.
        result = await broker.history("c", since=StreamPosition(before.epoch, 0))
        assert result.complete and [p.data for p in result.publications] == [b"1"]
        await _delivery_works(backend, rec, "c")
    finally:
        await backend.close()


async def test_silently_dead_link_is_detected(own_redis: RedisServer) -> None:
    backend = Backend("redis", own_redis.url, own_redis)
    try:
        broker, rec = await backend.broker(ping_interval=0.2, ping_timeout=0.3)
        await broker.subscribe("c")
        own_redis.pause()  # sockets stay open, nothing answers: only the PING notices
        try:
            assert await rec.next_link(5.0) is False
            assert not broker.healthy
        finally:
            own_redis.resume()
        assert await rec.next_link() is True
        await _delivery_works(backend, rec, "c")
    finally:
        await backend.close()


async def test_start_while_down_then_up(own_redis: RedisServer) -> None:
    own_redis.stop()
    backend = Backend("redis", own_redis.url, own_redis)
    try:
        broker, rec = await backend.broker(start_timeout=0.3)
        assert not broker.healthy
        assert await rec.next_link() is False
        await broker.subscribe("c")  # recorded, subscribed once the link is up
        own_redis.start()
        assert await rec.next_link() is True
        await _delivery_works(backend, rec, "c")
    finally:
        await backend.close()


async def test_crash_without_persistence_means_new_epoch(tmp_path: Path) -> None:
    server = start_redis(tmp_path, appendonly=False)
    backend = Backend("redis", server.url, server)
    try:
        broker, rec = await backend.broker()
        presence = await backend.presence("n1")
        await presence.add_connection("n1-a", "alice")
        await presence.join("room", "n1-a", "alice")
        await broker.subscribe("c")
        before = await broker.publish("c", b"1", OPTS)
        assert (await rec.next()).offset == before.offset

        server.kill()  # SIGKILL, no AOF: every key is gone
        assert await rec.next_link() is False
        server.restart()
        assert await rec.next_link() is True

        after = await broker.position("c")
        assert after.epoch != before.epoch and after.offset == 0
        assert not (await broker.history("c", since=before)).complete
        await _delivery_works(backend, rec, "c")

        # Presence heals on the next heartbeat.
        assert (await presence.presence("room")).connections == 0
        await presence.heartbeat()
        assert (await presence.presence("room")).users == ["alice"]
    finally:
        await backend.close()
        server.stop()
