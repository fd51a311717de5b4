"""pushgate nodes on a real 3-shard Valkey Cluster: sharded pub/sub end to end."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from ..conftest import Process
from ..helpers import direct_body
from ..servers import ValkeyCluster, start_valkey_cluster
from .test_cluster import Clients, api


@pytest.fixture(scope="module")
def valkey_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyCluster]:
    cluster = start_valkey_cluster(tmp_path_factory.mktemp("valkey"), shards=3)
    yield cluster
    cluster.stop()


async def test_nodes_on_valkey_cluster_use_sharded_pubsub(valkey_cluster: ValkeyCluster,
                                                          spawn_node: Callable[..., Process],
                                                          tmp_path: Path) -> None:
    def node(name: str) -> Process:
        return spawn_node("--broker", valkey_cluster.url, "--node-id", name, "--redis-prefix", "vk",
                          "--node-ttl", "3")

    n1, n2 = node("n1"), node("n2")
    clients = Clients()
    try:
        channels = [f"room{i}" for i in range(12)]  # spread over the three shards' slots
        sub = await clients.connect(n1, "alice")
        for ch in channels:
            await sub.ok({"type": "subscribe", "channel": ch})
        pub = await clients.connect(n2, "bob")
        for ch in channels:
            await pub.ok({"type": "publish", "channel": ch, "data": ch})
        got = {(await sub.next("message"))["data"] for _ in channels}
        assert got == set(channels)

        # every channel topic lives on exactly one shard, as a shard channel
        shard_topics: list[bytes] = []
        shards_used = 0
        for port in valkey_cluster.ports:
            r = redis.Redis(port=port)
            here = r.execute_command("PUBSUB", "SHARDCHANNELS", "vk:c:*")
            shards_used += bool(here)
            shard_topics += here
            assert r.execute_command("PUBSUB", "CHANNELS", "vk:c:*") == []
            r.close()
        user_streams = [f"vk:c:{{!u:{u}}}".encode() for u in ("alice", "bob")]  # each user's stream too
        assert sorted(shard_topics) == sorted([*(f"vk:c:{{{ch}}}".encode() for ch in channels), *user_streams])
        assert shards_used == 3  # the twelve channels spread over all three shards

        # users, presence and online counts work across nodes on the cluster too
        await pub.ok({"type": "send", "to": ["alice"], "data": "hi"})
        assert direct_body(await sub.next("direct")) == {"type": "direct", "from": "bob", "data": "hi"}
        _, online = await api(n2, "GET", "/api/online")
        assert online["users"] == 2 and set(online["nodes"]) == {"n1", "n2"}
        _, presence = await api(n2, "GET", "/api/presence/room3")
        assert presence["users"] == ["alice"]
        ok = await pub.ok({"type": "subscribe", "channel": "room0", "since": {"epoch": "x", "offset": 0}})
        assert ok["recovered"] is False and ok["offset"] == 1
    finally:
        await clients.close()
