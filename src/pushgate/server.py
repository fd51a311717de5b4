"""The aiohttp application and process lifecycle: one port for HTTP API, WebSocket, SSE and static files.

:class:`Server` is what tests and embedding code start; :func:`serve` is what ``pushgate serve``
runs: uvloop, signal handling and the graceful drain (``/readyz`` → 503, new connections
refused, open ones closed with 1012 in paced batches over ``drain_period``, then exit 0).
``serve_workers`` runs K such processes on one port with SO_REUSEPORT. The routes themselves
are :func:`pushgate.web.build_app`'s: this module is only the composition root and the process.

The listening socket is guarded here, before any route runs (a client controls all of it):

- ``handshake_timeout``: from accept, a client has this long to finish the TLS handshake and
  deliver one complete request head; a half request line or a header trickled byte by byte is
  cut off (:class:`~pushgate.web.lean.LeanFront`, the listening socket's protocol factory, which
  also answers plain ``/ws`` upgrades itself and hands every other request to aiohttp).
- ``keepalive_timeout``: an idle keep-alive connection is closed; a later request's head must
  arrive within it too (aiohttp's own timer, which partial data does not reset). Upgraded
  WebSockets and streaming responses are handlers still running, which neither timer touches.
- malformed HTTP is answered 400 by aiohttp and logged as one DEBUG line, never an ERROR
  traceback (:class:`HttpLog`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .app import App
from .auth import startup_warnings
from .config import Config, strip_flags
from .errors import ConfigError, StartupError
from .logs import ACCESS_LOGGER, access_log_class
from .node import Node
from .web.app import build_app
from .web.lean import LeanFront, echo_path_enabled

log = logging.getLogger("pushgate")
http_log = logging.getLogger("pushgate.http")


class HttpLog(logging.LoggerAdapter[logging.Logger]):
    """The logger aiohttp's request handlers write to, with the client's faults made quiet.

    aiohttp logs a request it cannot parse (garbage request line, bad or oversize header,
    broken chunking) with ``logger.exception``: an ERROR and a traceback per bad request, so
    anyone with a socket can fill the log. Those (:class:`HttpProcessingError`) become one DEBUG
    line with the peer and the reason; everything else, a real 500 included, passes unchanged.
    """

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if isinstance(exc, HttpProcessingError):
            peer = args[0] if args else "?"
            reason = (exc.message or type(exc).__name__).strip().splitlines()[0][:160]
            self.logger.debug("bad HTTP request from %s: %s %d %r", peer, type(exc).__name__, exc.code, reason)
            return
        super().log(level, msg, *args, **kwargs)


def tls_context(config: Config) -> ssl.SSLContext | None:
    """The server TLS context for ``tls_cert``/``tls_key`` (None without TLS), or a one-line
    :class:`ConfigError` naming the setting at fault: checked before the node starts, so a bad
    certificate never leaves a half-started process."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    for key, path in (("tls_cert", config.tls_cert), ("tls_key", config.tls_key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(key, f"cannot read {path}: {exc.strerror or exc}") from exc

    def no_password() -> bytes:
        raise ConfigError("tls_key", f"{config.tls_key} is encrypted; give an unencrypted PEM key")

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key, password=no_password)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise ConfigError("tls_key", f"{config.tls_key} is not the private key of {config.tls_cert}") from exc
        raise ConfigError("tls_cert", f"cannot load {config.tls_cert} / {config.tls_key} as PEM certificate "
                                      f"chain and key ({exc.reason or exc})") from exc
    return context


class Server:
    """A node plus its HTTP listener. ``await start()`` → ``port``; ``await stop()``."""

    def __init__(self, config: Config, *, app: App | None = None, node: Node | None = None) -> None:
        self.config = config
        self.node = node or Node(config, app=app)
        self.web_app = build_app(self.node)
        self.runner: web.AppRunner | None = None
        self.port = config.port
        self._listener: asyncio.AbstractServer | None = None
        self._front: LeanFront | None = None

    async def start(self, *, reuse_port: bool = False) -> int:
        """Bind, start the node, then accept: a taken port fails before the node says it started
        (:class:`StartupError`, one line), and no client is accepted by a node not yet started."""
        context = tls_context(self.config)  # a bad certificate fails before anything starts
        try:
            self.port = await self._listen(context, reuse_port)
        except OSError as exc:
            await self._close_listener()
            where = f"{self.config.host}:{self.config.port}"
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise StartupError(f"cannot listen on {where}: {reason.lower()}") from exc
        try:
            await self.node.start()
        except BaseException:
            await self._close_listener()
            with contextlib.suppress(Exception):
                await self.node.stop()  # close what the half-started node opened (broker pools)
            raise
        assert self._listener is not None
        await self._listener.start_serving()
        _announce(self.config, self.node, self.port)
        return self.port

    async def _close_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        if self._front is not None:
            self._front.close()
            self._front = None

    async def _listen(self, context: ssl.SSLContext | None, reuse_port: bool) -> int:
        """Serve the application on ``host:port`` (https and wss too with ``context``).

        The socket is opened here rather than through ``web.TCPSite`` so that its protocol
        factory can be :class:`~pushgate.web.lean.LeanFront`; ``runner.cleanup`` still shuts
        the connections aiohttp serves, and the front closes its own.
        """
        config = self.config
        access = {"access_log": logging.getLogger(ACCESS_LOGGER),
                  "access_log_class": access_log_class(config.trusted_proxies)} \
            if config.access_log else {"access_log": None}
        self.runner = web.AppRunner(self.web_app, handle_signals=False, shutdown_timeout=2.0,
                                    keepalive_timeout=config.keepalive_timeout, logger=HttpLog(http_log), **access)
        await self.runner.setup()
        assert self.runner.server is not None
        self._front = LeanFront(self.node, self.runner.server, echo_path=echo_path_enabled())
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            self._front, config.host, config.port, ssl=context,
            ssl_handshake_timeout=config.handshake_timeout if context else None,
            backlog=4096, reuse_port=reuse_port or None, start_serving=False,
        )
        return int(self._listener.sockets[0].getsockname()[1]) if self._listener.sockets else config.port

    async def stop(self, *, drain: bool = True) -> None:
        if drain:
            await self.node.drain()
        if self._listener is not None:
            self._listener.close()  # stop accepting; open connections are the runner's to shut
            self._listener = None
        await self.node.stop()
        if self._front is not None:
            self._front.close()
            self._front = None
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


def _announce(config: Config, node: Node, port: int) -> None:
    scheme = "https" if config.tls_cert else "http"
    log.info("pushgate node %s listening on %s://%s:%d (ws: /ws, sse: /sse, api: /api)",
             node.id, scheme, config.host, port)
    for warning in startup_warnings(config):  # weak secrets, risky production choices: loud, never silent
        log.warning("%s", warning)
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
    """Run ``config.workers`` processes on one port (SO_REUSEPORT), each a node of the cluster.

    The first worker starts alone: a start-up error (port taken, broker unreachable) is then
    printed once, by it, and is this process's exit code, instead of once per worker. The
    others start when it accepts connections. Every worker gets SIGTERM if this process dies,
    even by SIGKILL (Linux ``PR_SET_PDEATHSIG``), so no worker outlives its supervisor.
    """
    base_id = config.node_id or f"{os.uname().nodename}-{os.getpid()}"
    child_argv = strip_flags(argv, {"--workers", "--node-id"})
    children: list[subprocess.Popen[bytes]] = []
    stopping: list[int] = []

    def spawn(i: int) -> None:
        env = dict(os.environ, PUSHGATE_WORKERS="1", PUSHGATE_NODE_ID=f"{base_id}-w{i + 1}",
                   PUSHGATE_REUSE_PORT="1")
        children.append(subprocess.Popen([sys.executable, "-m", "pushgate", *child_argv], env=env,
                                         preexec_fn=_die_with_parent))

    def forward(signum: int, frame: object) -> None:
        stopping.append(signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    spawn(0)
    if not _wait_listening(children[0], config):
        return children[0].wait()
    for i in range(1, config.workers):
        if not stopping:
            spawn(i)
    codes = [child.wait() for child in children]
    return max(codes, default=0)


WORKER_START_TIMEOUT = 60.0  # seconds the first worker may take to listen (broker connect included)


def _wait_listening(child: subprocess.Popen[bytes], config: Config) -> bool:
    """True once ``child`` accepts connections on the port; False if it exited first."""
    host = "127.0.0.1" if config.host in ("", "0.0.0.0") else "::1" if config.host == "::" else config.host
    deadline = time.monotonic() + WORKER_START_TIMEOUT
    while time.monotonic() < deadline:
        if child.poll() is not None:
            return False
        try:
            with socket.create_connection((host, config.port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return child.poll() is None


def _die_with_parent() -> None:
    """In a worker, before exec: ask the kernel for SIGTERM when the supervisor dies (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
