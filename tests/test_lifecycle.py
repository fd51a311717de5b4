"""Process lifecycle: graceful drain on SIGTERM, WebSocket heartbeats, the connection limit, and
how ``pushgate serve`` reports bad configuration."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from pushgate.config import SCALAR_FIELDS
from pushgate.errors import CloseCode

from .conftest import Process, ServerFactory
from .helpers import WsClient, timeout, wait_for

ROOT = Path(__file__).resolve().parents[1]


# -- graceful drain ------------------------------------------------------------------------------

async def test_sigterm_drains_gracefully(spawn_node: Callable[..., Process]) -> None:
    period, n = 1.0, 20
    node = spawn_node("--drain-period", str(period))
    clients = [await WsClient.connect(f"{node.ws_url}?user=u{i}") for i in range(n)]
    closed_at: dict[int, float] = {}

    async def watch(i: int, client: WsClient) -> None:
        await client.closed.wait()
        closed_at[i] = time.monotonic()

    watchers = [asyncio.create_task(watch(i, c)) for i, c in enumerate(clients)]
    session = aiohttp.ClientSession()
    try:
        async with session.get(node.url + "/readyz") as r:
            assert r.status == 200

        signalled = time.monotonic()
        node.proc.send_signal(signal.SIGTERM)

        async def not_ready() -> bool:
            async with session.get(node.url + "/readyz") as r:
                return r.status == 503 and (await r.json())["reason"] == "draining"

        await wait_for(not_ready, seconds=3, what="/readyz 503 while draining")
        # while draining, new connections are refused with 503 (the load balancer sends them elsewhere)
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await session.ws_connect(f"{node.ws_url}?user=late")
        assert info.value.status == 503
        assert len(closed_at) < n  # refused while the drain was still under way

        await asyncio.wait_for(asyncio.gather(*watchers), timeout(period + 10))
        assert [c.close_code for c in clients] == [CloseCode.SERVICE_RESTART] * n

        code = await asyncio.to_thread(node.proc.wait, timeout(20))
        assert code == 0, node.log()
    finally:
        await session.close()
        for c in clients:
            await c.close()

    times = sorted(closed_at.values())
    spread = times[-1] - times[0]
    assert spread >= 0.4 * period, f"closes not paced: spread {spread:.3f}s over {period}s"
    assert times[-1] - signalled <= period + timeout(3)


async def test_drain_without_connections_exits_at_once(spawn_node: Callable[..., Process]) -> None:
    node = spawn_node("--drain-period", "30")
    started = time.monotonic()
    assert await asyncio.to_thread(node.terminate) == 0
    assert time.monotonic() - started < timeout(10)  # nothing to pace: no 30 s wait


# -- heartbeats ----------------------------------------------------------------------------------

async def test_peer_that_never_answers_pings_is_closed(make_server: ServerFactory) -> None:
    interval = 0.3
    running = await make_server(ping_interval=interval)
    normal = await running.client("user=normal")
    async with aiohttp.ClientSession() as session:
        silent = await session.ws_connect(f"{running.ws_url}?user=silent", autoping=False)
        polite = await session.ws_connect(f"{running.ws_url}?user=polite", autoping=False)
        assert (await running.api("GET", "/api/online"))[1]["connections"] == 3

        async def never_answer() -> list[aiohttp.WSMsgType]:
            seen = []
            while True:
                msg = await silent.receive()
                seen.append(msg.type)
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                                aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    return seen

        async def answer_pings(count: int) -> None:
            answered = 0
            while answered < count:
                msg = await polite.receive()
                if msg.type is aiohttp.WSMsgType.PING:
                    await polite.pong(msg.data)
                    answered += 1
                assert msg.type in (aiohttp.WSMsgType.PING, aiohttp.WSMsgType.TEXT), msg

        answering = asyncio.create_task(answer_pings(4))
        seen = await asyncio.wait_for(never_answer(), timeout(5))
        assert aiohttp.WSMsgType.PING in seen  # it was pinged, and dropped for not answering

        async def silent_gone() -> bool:
            return bool((await running.api("GET", "/api/online"))[1]["users"] == 2)

        await wait_for(silent_gone, seconds=5, what="silent peer unregistered")
        # peers that answer stay across several ping intervals
        await asyncio.wait_for(answering, timeout(5 * interval + 3))
        assert not polite.closed
        assert (await normal.request({"type": "ping"}))["type"] == "pong"
        assert not normal.closed.is_set()
        status, online = await running.api("GET", "/api/online")
        assert status == 200 and (online["connections"], online["users"]) == (2, 2)
        await polite.close()


# -- connection limit ----------------------------------------------------------------------------

async def test_connection_limit_closes_with_4003(make_server: ServerFactory) -> None:
    running = await make_server(max_connections=2)
    first = await running.client("user=a")
    await running.client("user=b")
    async with aiohttp.ClientSession() as session:
        third = await session.ws_connect(f"{running.ws_url}?user=c")
        msg = await asyncio.wait_for(third.receive(), timeout(5))
        assert msg.type is aiohttp.WSMsgType.CLOSE, msg  # no welcome: closed straight away
        assert msg.data == CloseCode.CONNECTION_LIMIT
        await third.close()
        assert (await running.api("GET", "/api/online"))[1]["connections"] == 2

        # a freed slot can be taken again
        await first.close()
        await wait_for(lambda: len(running.node.hub.connections) == 1, what="slot freed")
        again = await running.client("user=c")
        assert again.welcome["user"] == "c"


# -- pushgate serve: configuration errors --------------------------------------------------------

def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pushgate", "serve", *args],
        capture_output=True, text=True, timeout=timeout(30), cwd=ROOT,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("PUSHGATE_")}, **(env or {})},
    )


@pytest.mark.parametrize(
    ("args", "env", "key"),
    [
        (["--port", "notanumber"], {}, "port"),
        ([], {"PUSHGATE_PORT": "99999"}, "port"),
        (["--port", "0", "--ping-interval", "0"], {}, "ping_interval"),
        (["--port", "0", "--max-connections", "-1"], {}, "max_connections"),
        (["--port", "0", "--broker", "nats://x"], {}, "broker"),
        (["--port", "0", "--jwt-public-key", "/nonexistent/key.pem"], {}, "jwt_public_key"),
    ],
)
def test_bad_setting_exits_2_naming_the_key(args: list[str], env: dict[str, str], key: str) -> None:
    done = serve(*args, env=env)
    assert done.returncode == 2, done.stderr
    assert f"config {key}:" in done.stderr
    assert "Traceback" not in done.stderr


def test_workers_with_memory_broker_exits_2() -> None:
    done = serve("--port", "8765", "--workers", "2")
    assert done.returncode == 2, done.stderr
    assert "workers" in done.stderr and "redis" in done.stderr.lower()


def test_help_lists_every_scalar_setting() -> None:
    done = serve("--help")
    assert done.returncode == 0
    flat = " ".join(done.stdout.split())
    for f in SCALAR_FIELDS:
        flag = "--" + f.name.replace("_", "-")
        assert flag in flat, flag
        assert f"PUSHGATE_{f.name.upper()}" in flat, f.name
    assert "--config" in flat


# -- start-up announcements ------------------------------------------------------------------------

async def test_weak_secrets_are_announced_loudly(make_server: ServerFactory,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="pushgate"):
        await make_server(jwt_secret="change-me")
    warnings = [r.getMessage() for r in caplog.records if r.name == "pushgate" and r.levelno == logging.WARNING]
    assert any(w.startswith("WEAK SECRET") and "sign tokens" in w for w in warnings), warnings


async def test_tls_node_announces_https(make_server: ServerFactory, caplog: pytest.LogCaptureFixture,
                                        tmp_path: Path) -> None:
    from .test_tls import _key, _self_signed, _write_key

    key = _key()
    cert, key_path = _self_signed(key, tmp_path / "c.pem"), _write_key(key, tmp_path / "k.pem")
    with caplog.at_level(logging.INFO, logger="pushgate"):
        srv = await make_server(tls_cert=str(cert), tls_key=str(key_path))
    assert f"listening on https://127.0.0.1:{srv.server.port}" in caplog.text
