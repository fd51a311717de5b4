"""Fixtures: real pushgate servers with the SockJS endpoint mounted on every STOMP path."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from pushgate.app import App
from pushgate.config import load_config
from pushgate.server import Server
from pushgate.web.app import SOCKJS_KEY
from pushgate.web.sockjs import SockJsEndpoint, SockJsOptions

from ..conftest import Running
from ..helpers import timeout


@dataclass
class SockJsRunning:
    """A started server (``running``) and its SockJS endpoint; ``base`` is ``http://.../stomp``."""

    running: Running
    endpoint: SockJsEndpoint
    base: str

    @property
    def node(self) -> Any:
        return self.running.node

    async def api(self, method: str, path: str, json: Any = None) -> tuple[int, Any]:
        return await self.running.api(method, path, json)


SockJsFactory = Callable[..., Awaitable[SockJsRunning]]

#: short timers so the tests wait for events, not for the protocol's 25 s / 5 s defaults
FAST = SockJsOptions(heartbeat=timeout(25.0), disconnect_delay=timeout(1.0))


@pytest.fixture
async def make_sockjs() -> AsyncIterator[SockJsFactory]:
    """``await make_sockjs(options=SockJsOptions(...), app=App(), routes=[...], **settings)``: a server
    on a free port whose SockJS endpoint (mounted by build_app) runs with ``options`` (passed as the
    ``sockjs_*`` settings), plus ``routes`` of the test's own."""
    started: list[Server] = []
    loop_errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, ctx: loop_errors.append(ctx))

    async def factory(*, options: SockJsOptions = FAST, app: App | None = None, routes: Sequence[web.RouteDef] = (),
                      **settings: Any) -> SockJsRunning:
        settings.setdefault("port", 0)
        settings.setdefault("host", "127.0.0.1")
        settings.setdefault("drain_period", 0.2)
        settings.setdefault("sockjs_heartbeat", options.heartbeat)
        settings.setdefault("sockjs_disconnect_delay", options.disconnect_delay)
        settings.setdefault("sockjs_response_limit", options.response_limit)
        settings.setdefault("sockjs_max_pending_sessions", options.max_unadmitted_sessions)
        config = load_config(env={}, cli=settings)
        server = Server(config, app=app)
        endpoint = server.web_app[SOCKJS_KEY]  # mounted by build_app, from the settings above
        server.web_app.add_routes(routes)
        port = await server.start()
        started.append(server)
        url = f"http://127.0.0.1:{port}"
        running = Running(server, url, f"ws://127.0.0.1:{port}/ws")
        return SockJsRunning(running, endpoint, url + config.stomp_paths[0])

    yield factory
    for server in started:
        await server.stop(drain=False)
    loop.set_exception_handler(None)
    assert not loop_errors, loop_errors


@pytest.fixture
async def sockjs(make_sockjs: SockJsFactory) -> SockJsRunning:
    return await make_sockjs()
