"""Garbage collection and write batching: the GC policy in a real node process, the flush window.

The policy is process-wide (``gc.freeze``), so its tests run a node in its own process and read
what it did from ``/metrics`` and its log, never from this test process's collector.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable

import aiohttp
import pytest

from pushgate.gcprobe import GcPolicy
from pushgate.hub import Hub
from pushgate.protocol.outgoing import Outgoing
from pushgate.web.connection import Connection

from .conftest import Process
from .helpers import timeout


def metrics(node: Process) -> dict[str, float]:
    with urllib.request.urlopen(node.url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in text.splitlines()
                                     if line and not line.startswith("#"))}


async def wait_until(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + timeout(seconds)
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def open_clients(url: str, n: int) -> tuple[aiohttp.ClientSession, list[aiohttp.ClientWebSocketResponse]]:
    session = aiohttp.ClientSession()
    clients = [await session.ws_connect(url) for _ in range(n)]
    for ws in clients:
        welcome = await ws.receive_json(timeout=timeout(10))
        assert welcome["type"] == "welcome"
    return session, clients


async def test_node_freezes_after_start_and_every_refreeze_connections(spawn_node: Callable[..., Process]) -> None:
    node = spawn_node("--gc-refreeze-connections", "20")
    frozen_at_start = metrics(node)["pushgate_gc_frozen_objects"]
    assert frozen_at_start > 10_000  # modules, the app and the node: frozen once started

    session, clients = await open_clients(node.ws_url, 30)
    try:
        # the 20th connection froze everything alive, connections included, at once
        assert metrics(node)["pushgate_gc_frozen_objects"] > frozen_at_start
        assert 0 < metrics(node)["pushgate_gc_pause_max_seconds"] < 5
    finally:
        for ws in clients:
            await ws.close()
        await session.close()


class Cyclic:
    """Stands for a closed connection's objects that reference each other (a cycle)."""

    def __init__(self) -> None:
        self.me = self


async def test_policy_reclaims_the_cyclic_garbage_of_closed_connections_once_it_is_worth_it(
        caplog: pytest.LogCaptureFixture) -> None:
    import gc
    import logging

    policy = GcPolicy(enabled=True, refreeze_connections=3, garbage_share=1e-9)
    try:
        kept = [Cyclic() for _ in range(3)]
        for _ in kept:
            policy.connected()
        assert policy.freezes == 1 and gc.get_freeze_count() > 0  # the 3rd connection froze
        kept.clear()  # three "connections" close: their cycles are frozen garbage now
        with caplog.at_level(logging.INFO, logger="pushgate.gcprobe"):
            for _ in range(3):
                policy.disconnected(2.0)
            await wait_until(lambda: policy.reclaims == 1, 5, "the reclaim after 3 closes")
        found = int(caplog.text.split("closed connections: ")[1].split()[0])
        assert found >= 3  # the unfrozen collection found the cycles the closes left
        assert policy.garbage == 0.0
    finally:
        policy.stop()


async def test_policy_does_not_pause_for_connections_that_leave_no_garbage(
        monkeypatch: pytest.MonkeyPatch) -> None:
    walks = count_freeze_walks(monkeypatch)
    policy = GcPolicy(enabled=True, refreeze_connections=3, garbage_share=1e-9)
    try:
        for _ in range(3):
            policy.connected()
        for _ in range(50):
            policy.disconnected(0.0)  # the lean WebSocket's estimate: freed by reference counting
        await asyncio.sleep(1.0)  # past the reclaim delay: a reclaim would have run by now
        assert policy.reclaims == 0
        # Counting the frozen objects walks all of them (O(n) per call): a wave of closes that
        # leaves no garbage never pays for it (once per close made 5,000 closes cost seconds).
        assert walks() == 0
    finally:
        policy.stop()


def count_freeze_walks(monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """Count calls of gc.get_freeze_count from now on (each walks the permanent generation)."""
    import gc

    calls = [0]
    real = gc.get_freeze_count

    def counted() -> int:
        calls[0] += 1
        return real()

    monkeypatch.setattr(gc, "get_freeze_count", counted)
    return lambda: calls[0]


async def test_policy_counts_the_frozen_objects_at_most_once_per_freeze(monkeypatch: pytest.MonkeyPatch) -> None:
    walks = count_freeze_walks(monkeypatch)
    policy = GcPolicy(enabled=True, refreeze_connections=3, garbage_share=0.99)  # never due in this test
    try:
        for _ in range(3):
            policy.connected()
        for _ in range(500):
            policy.disconnected(1.0)  # garbage below 99 % of the frozen objects: checked on every close
        assert policy.reclaims == 0
        assert walks() == 1
    finally:
        policy.stop()


async def test_gc_freeze_off_freezes_nothing(spawn_node: Callable[..., Process]) -> None:
    node = spawn_node("--gc-freeze", "false", "--gc-refreeze-connections", "2")
    session, clients = await open_clients(node.ws_url, 4)
    try:
        await asyncio.sleep(1.0)  # past the burst quiet time: a freeze would have happened by now
        assert metrics(node)["pushgate_gc_frozen_objects"] == 0
    finally:
        for ws in clients:
            await ws.close()
        await session.close()


class Recorder(Connection):
    """A connection that records, like WsConnection, what one flush writes; a flush can be made
    to take ``cost`` seconds, as writing to many sockets does."""

    def __init__(self, hub: Hub, cost: float = 0.0) -> None:
        super().__init__("c1", None)
        self.hub = hub
        self.cost = cost
        self.pending: list[bytes] = []
        self.writes: list[tuple[float, list[bytes]]] = []

    def send(self, out: Outgoing) -> None:
        if not self.pending:
            self.hub.want_flush(self)
        self.pending.append(out.ws())

    def flush(self) -> None:
        self.writes.append((time.monotonic(), self.pending))
        self.pending = []
        if self.cost:
            time.sleep(self.cost)  # the stand-in for the write system calls of a large fan-out

    def _close(self, code: int, reason: str) -> None:
        self.closed = True


async def publish_spread(hub: Hub, conn: Recorder, n: int, gap: float) -> float:
    started = time.monotonic()
    for i in range(n):
        hub.fanout((conn,), Outgoing(b'{"i":%d}' % i))
        await asyncio.sleep(gap)
    return started


async def test_flush_window_holds_frames_after_a_flush_and_sends_them_in_one_write() -> None:
    hub = Hub(flush_window=0.05)
    conn = Recorder(hub)
    await publish_spread(hub, conn, 3, 0.005)  # 3 frames within 15 ms < 50 ms
    await wait_until(lambda: len(conn.writes) == 2, 2, "two flushes")
    (first, frames1), (second, frames2) = conn.writes
    assert len(frames1) == 1  # after a quiet period the first frame leaves at once: no added latency
    assert len(frames2) == 2  # the next two were held for the window and left in one write
    assert second - first >= 0.045


async def test_pacing_holds_the_next_flush_only_after_a_busy_one() -> None:
    hub = Hub(flush_pacing=1.0)
    conn = Recorder(hub, cost=0.04)  # every flush takes 40 ms
    # one frame per flush and the loop often idle (a 40 ms flush every 70 ms): nothing is held
    await publish_spread(hub, conn, 2, 0.07)
    await wait_until(lambda: len(conn.writes) == 2, 2, "two flushes")
    assert conn.writes[1][0] - conn.writes[0][0] < 0.085
    await asyncio.sleep(0.1)
    # a frame every 44 ms: the second flush starts 4 ms after a 40 ms one (writing fills 90 %
    # of the loop): busy, so the third waits 40 ms after the second ended, not 4
    conn.writes.clear()
    await publish_spread(hub, conn, 3, 0.044)
    await wait_until(lambda: sum(len(f) for _, f in conn.writes) == 3, 2, "all three frames")
    assert [len(f) for _, f in conn.writes] == [1, 1, 1]
    assert conn.writes[2][0] - conn.writes[1][0] >= 0.075  # 40 ms flush + 40 ms hold
    await asyncio.sleep(0.2)
    # two frames in one flush (busy): the next flush waits as long as that one took
    conn.writes.clear()
    hub.fanout((conn,), Outgoing(b"[1]"))
    hub.fanout((conn,), Outgoing(b"[2]"))
    await publish_spread(hub, conn, 3, 0.004)
    await wait_until(lambda: sum(len(f) for _, f in conn.writes) == 5, 2, "all five frames")
    # the first flush took these two and the spread's first; the two that came during the hold left together
    assert [len(f) for _, f in conn.writes] == [3, 2]
    assert conn.writes[1][0] - conn.writes[0][0] >= 0.075  # 40 ms flush + 40 ms hold


async def test_without_a_window_or_pacing_every_loop_iteration_flushes() -> None:
    hub = Hub(flush_pacing=0.0)
    conn = Recorder(hub, cost=0.002)
    await publish_spread(hub, conn, 3, 0.005)
    await wait_until(lambda: len(conn.writes) == 3, 2, "three flushes")
    assert [len(frames) for _, frames in conn.writes] == [1, 1, 1]


async def test_flush_settings_are_bounded_by_config() -> None:
    from pushgate.config import ConfigError, load_config

    assert load_config(env={}, cli={"flush_window": 0.002}).flush_window == 0.002
    for key, value in (("flush_window", 1.0), ("flush_pacing", 100.0), ("flush_pacing", -1.0)):
        with pytest.raises(ConfigError) as info:
            load_config(env={}, cli={key: value})
        assert info.value.key == key
