"""Per-channel history settings do not depend on the path a publication took: a namespace with
``history_size = 2`` keeps 2 whether the message came through a node (HTTP API), the
:class:`~pushgate.Publisher` given the nodes' config, or ``pushgate publish --broker --config``;
and the server-wide ``history_size`` holds for channels outside any namespace. On the memory
broker and on Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pushgate
from pushgate.config import load_config

from .conftest import ServerFactory
from .helpers import timeout
from .servers import RedisServer, start_redis

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """
history_size = 3

[namespaces.tiny]
history_size = 2
"""
#: channel -> how many publications it keeps under CONFIG
KEPT = {"tiny:a": 2, "news": 3}


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "pushgate.toml"
    path.write_text(CONFIG)
    return path


async def kept(running: Any, channel: str) -> list[Any]:
    status, body = await running.api("GET", f"/api/history/{channel}")
    assert status == 200, body
    return [p["data"] for p in body["publications"]]


async def test_memory_broker_node_and_publisher_keep_the_namespace_size(make_server: ServerFactory,
                                                                        config_file: Path) -> None:
    running = await make_server(config_file=str(config_file))
    for channel, size in KEPT.items():
        for n in range(5):
            status, _ = await running.api("POST", "/api/publish", {"channel": channel, "data": n})
            assert status == 200
        assert await kept(running, channel) == list(range(5 - size, 5))

    config = load_config(file=config_file, env={})
    async with pushgate.Publisher("memory://", config=config) as pub:  # its own in-process broker
        for channel, size in KEPT.items():
            for n in range(5):
                await pub.publish(channel, n)
            history = await pub._broker.history(channel)  # no node shares a memory broker: read it here
            assert [json.loads(p.data) for p in history.publications] == list(range(5 - size, 5))


def cli_publish(*args: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHGATE_") or k.startswith("PUSHGATE_TEST_")}
    done = subprocess.run([sys.executable, "-m", "pushgate", "publish", *args], capture_output=True, text=True,
                          timeout=timeout(30), cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("path", ["node", "publisher", "cli"])
async def test_redis_every_path_keeps_the_namespace_size(make_server: ServerFactory, config_file: Path,
                                                         redis_server: RedisServer, path: str) -> None:
    prefix = f"hc{path}"
    running = await make_server(config_file=str(config_file), broker=redis_server.url, redis_prefix=prefix)
    config = load_config(file=config_file, env={}, cli={"redis_prefix": prefix})
    for channel, size in KEPT.items():
        if path == "node":
            for n in range(5):
                assert (await running.api("POST", "/api/publish", {"channel": channel, "data": n}))[0] == 200
        elif path == "publisher":
            async with pushgate.Publisher(redis_server.url, config=config) as pub:
                for n in range(5):
                    await pub.publish(channel, n)
        else:
            for n in range(5):
                cli_publish(channel, str(n), "--broker", redis_server.url, "--redis-prefix", prefix,
                            "--config", str(config_file))
        assert await kept(running, channel) == list(range(5 - size, 5)), (path, channel)
