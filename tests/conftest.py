"""Fixtures: real pushgate servers on free ports (in-process and as subprocesses), test clients."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pushgate.app import App
from pushgate.config import load_config
from pushgate.server import Server

from .helpers import WsClient, free_port, timeout


@dataclass
class Running:
    """A started server: base ``url`` (http://...) and ``ws_url``."""

    server: Server
    url: str
    ws_url: str
    clients: list[WsClient] = field(default_factory=list)

    @property
    def node(self) -> Any:
        return self.server.node

    async def client(self, query: str = "", **kwargs: Any) -> WsClient:
        c = await WsClient.connect(self.ws_url + (f"?{query}" if query else ""), **kwargs)
        self.clients.append(c)
        return c

    async def api(self, method: str, path: str, json: Any = None, headers: dict[str, str] | None = None
                  ) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as s, s.request(method, self.url + path, json=json,
                                                           headers=headers) as r:
            body = await r.json(content_type=None) if r.content_type == "application/json" else await r.text()
            return r.status, body


ServerFactory = Callable[..., Awaitable[Running]]


@pytest.fixture
async def make_server() -> AsyncIterator[ServerFactory]:
    """Start in-process servers on free ports: ``await make_server(history_size=5, app=App())``."""
    started: list[Running] = []
    loop_errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    # fail the test on any unhandled exception in the event loop (the uvloop/aiohttp habit)
    loop.set_exception_handler(lambda _loop, ctx: loop_errors.append(ctx))

    async def factory(*, app: App | None = None, config_file: str | None = None, **settings: Any) -> Running:
        settings.setdefault("port", 0)
        settings.setdefault("host", "127.0.0.1")
        settings.setdefault("drain_period", 0.2)
        config = load_config(file=config_file, env={}, cli=settings)
        server = Server(config, app=app)
        port = await server.start()
        running = Running(server, f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/ws")
        started.append(running)
        return running

    yield factory
    for running in started:
        for c in running.clients:
            await c.close()
        await running.server.stop(drain=False)
    loop.set_exception_handler(None)
    assert not loop_errors, f"unhandled exceptions in the event loop: {loop_errors}"


@pytest.fixture
async def server(make_server: ServerFactory) -> Running:
    return await make_server()


class Process:
    """A pushgate node running as its own process (stopped by PID at teardown)."""

    def __init__(self, args: list[str], port: int, env: dict[str, str] | None = None,
                 log_path: Path | None = None) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}/ws"
        self.log_path = log_path
        out = open(log_path, "wb") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pushgate", "serve", "--port", str(port), *args],
            env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, seconds: float = 15.0) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout(seconds)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"pushgate exited with {self.proc.returncode}: {self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"pushgate on {self.port} not ready: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text()[-4000:] if self.log_path and self.log_path.exists() else ""

    def terminate(self, seconds: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout(seconds))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout(10))


@pytest.fixture
def spawn_node(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    """Start pushgate nodes as subprocesses: ``spawn_node("--broker", url, "--node-id", "n1")``."""
    procs: list[Process] = []

    def factory(*args: str, env: dict[str, str] | None = None, port: int | None = None,
                wait: bool = True) -> Process:
        port = port or free_port()
        p = Process(list(args), port, env, tmp_path / f"node-{port}-{len(procs)}.log")
        procs.append(p)
        if wait:
            p.wait_ready()
        return p

    yield factory
    for p in procs:
        p.kill()


@pytest.fixture
def pushgate_server(spawn_node: Callable[..., Process]) -> Process:
    """One single-node server in its own process (memory broker)."""
    return spawn_node()
