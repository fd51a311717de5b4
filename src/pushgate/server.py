"""The aiohttp application and process lifecycle: one port for HTTP API, WebSocket, SSE and static files.

:class:`Server` is what tests and embedding code start; :func:`serve` is what ``pushgate serve``
runs: uvloop, signal handling and the graceful drain (``/readyz`` → 503, new connections
refused, open ones closed with 1012 in paced batches over ``drain_period``, then exit 0).
``serve_workers`` runs K such processes on one port with SO_REUSEPORT. The routes themselves
are :func:`pushgate.web.build_app`'s: this module is only the composition root and the process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys

from aiohttp import web

from .app import App
from .config import Config
from .node import Node
from .web.app import build_app

log = logging.getLogger("pushgate")


class Server:
    """A node plus its HTTP listener. ``await start()`` → ``port``; ``await stop()``."""

    def __init__(self, config: Config, *, app: App | None = None, node: Node | None = None) -> None:
        self.config = config
        self.node = node or Node(config, app=app)
        self.web_app = build_app(self.node)
        self.runner: web.AppRunner | None = None
        self.port = config.port

    async def start(self, *, reuse_port: bool = False) -> int:
        await self.node.start()
        self.runner = web.AppRunner(self.web_app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.config.host, self.config.port, reuse_port=reuse_port or None,
                           backlog=4096)
        await site.start()
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        _announce(self.config, self.node, self.port)
        return self.port

    async def stop(self, *, drain: bool = True) -> None:
        if drain:
            await self.node.drain()
        await self.node.stop()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


def _announce(config: Config, node: Node, port: int) -> None:
    log.info("pushgate node %s listening on http://%s:%d (ws: /ws, sse: /sse, api: /api)",
             node.id, config.host, port)
    if not config.jwt_enabled:
        log.warning("DEV MODE: no JWT key configured; clients name themselves with ?user=<id>. "
                    "Set --jwt-secret or --jwt-public-key in production.")
    if not config.api_key:
        log.warning("no API key configured: only loopback clients may call /api (set --api-key)")
    if not config.allowed_origins:
        log.info("no allowed_origins configured: WebSocket connections from any Origin are accepted")


async def serve(config: Config, app: App | None = None) -> int:
    """Run one node until SIGTERM/SIGINT, then drain gracefully; returns the exit code."""
    server = Server(config, app=app)
    await server.start(reuse_port=os.environ.get("PUSHGATE_REUSE_PORT") == "1")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("signal received: draining %d connections over %.1fs", len(server.node.hub.connections),
             config.drain_period)
    await server.stop(drain=True)
    log.info("node %s stopped", server.node.id)
    return 0


def serve_workers(config: Config, argv: list[str]) -> int:
    """Run ``config.workers`` processes on one port (SO_REUSEPORT), each a node of the cluster."""
    base_id = config.node_id or f"{os.uname().nodename}-{os.getpid()}"
    children: list[subprocess.Popen[bytes]] = []
    for i in range(config.workers):
        env = dict(os.environ, PUSHGATE_WORKERS="1", PUSHGATE_NODE_ID=f"{base_id}-w{i + 1}",
                   PUSHGATE_REUSE_PORT="1")
        child_argv = _strip_flags(argv, {"--workers", "--node-id"})
        children.append(subprocess.Popen([sys.executable, "-m", "pushgate", *child_argv], env=env))

    def forward(signum: int, frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    return max(codes, default=0)


def _strip_flags(argv: list[str], flags: set[str]) -> list[str]:
    """Drop ``--flag value`` and ``--flag=value`` pairs (the children get them via env)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in flags:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out
