"""The memory broker's history stays bounded and is freed when it expires, read or not.

Issue 7, item 3: 3,000 publishes of 60 KB to 3,000 channels with a 5 s ttl grew a node by
~180 MB for good (expiry was lazy per channel, the stream table never shrank). Here the bounds
are held by the broker's own accounting (``history_bytes``, ``history_channels``); the
MemoryHistory cases drive time by hand, the broker cases wait for the sweep task with a bounded
poll, and one case measures a fresh process's RSS in the issue's scenario.
"""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
import textwrap

import pytest

from pushgate.backends import HistoryOptions, MemoryBroker, StreamPosition
from pushgate.backends.history import ENTRY_OVERHEAD
from pushgate.backends.history_memory import MIN_POSITIONS, MemoryHistory

from .conftest import ServerFactory
from .helpers import timeout, wait_for

KEEP = HistoryOptions(size=10, ttl=60)
E = "ep"


def offsets(history: MemoryHistory, channel: str, now: float = 0.0) -> list[int]:
    return [p.offset for p in history.read(channel, None, None, now).publications]


# --- MemoryHistory, time by hand -------------------------------------------------------------


def test_channel_bound_evicts_least_recently_published() -> None:
    h = MemoryHistory(E, max_channels=3)
    for channel in ("a", "b", "c", "a", "d"):  # b is now the least recently published
        h.append(channel, b"1", KEEP, 0.0)
        assert h.channels <= 3
    assert h.channels == 3
    assert offsets(h, "b") == [] and offsets(h, "a") == [1, 2]
    # b's position outlived its history: a client behind it learns it missed something
    assert h.position("b") == StreamPosition(E, 1)
    assert not h.read("b", StreamPosition(E, 0), None, 0.0).complete
    assert h.read("b", StreamPosition(E, 1), None, 0.0).complete  # up to date: nothing missed
    assert h.evicted == 1
    assert h.append("b", b"2", KEEP, 0.0).offset == 2  # offsets go on counting


def test_byte_bound_evicts_oldest_entries_first() -> None:
    entry = 100 + ENTRY_OVERHEAD
    h = MemoryHistory(E, max_bytes=5 * entry)
    data = b"x" * 100
    for t in range(12):  # channels a, b, c in turn, one entry per time step
        h.append("abc"[t % 3], data, KEEP, float(t))
        assert h.bytes <= 5 * entry
    assert h.bytes == 5 * entry
    # the five newest (t = 7..11) are kept: a@9, b@7, b@10, c@8, c@11
    assert offsets(h, "a", 11.0) == [4]
    assert offsets(h, "b", 11.0) == [3, 4]
    assert offsets(h, "c", 11.0) == [3, 4]
    assert h.evicted == 7
    big = MemoryHistory(E, max_bytes=entry)
    big.append("x", data + b"y", KEEP, 0.0)  # larger than the whole bound: not kept at all
    assert big.bytes == 0 and big.channels == 0 and big.position("x").offset == 1


def test_sweep_frees_expired_history_without_reads() -> None:
    h = MemoryHistory(E)
    short = HistoryOptions(size=10, ttl=5.0)
    for i in range(100):
        h.append(f"ch{i}", b"x" * 1000, short, float(i % 3))
    assert h.channels == 100 and h.bytes == 100 * (1000 + ENTRY_OVERHEAD)
    assert h.sweep(6.5) is False  # entries of t=0 and t=1 (deadlines 5, 6) have expired
    assert h.channels == 33 and h.bytes == 33 * (1000 + ENTRY_OVERHEAD)
    h.sweep(7.5)
    assert h.channels == 0 and h.bytes == 0 and h.positions == 100
    # Rule 5: the position is kept, so a returning client is told, not silently reset.
    result = h.read("ch0", StreamPosition(E, 0), None, 7.5)
    assert not result.complete and result.position == StreamPosition(E, 1)


def test_sweep_works_in_slices() -> None:
    h = MemoryHistory(E)
    for i in range(50):
        h.append(f"ch{i}", b"1", HistoryOptions(size=1, ttl=1.0), 0.0)
    assert h.sweep(2.0, budget=20) is True  # more to do
    assert h.channels == 30
    while h.sweep(2.0, budget=20):
        pass
    assert h.channels == 0


def test_expiry_follows_a_shorter_ttl() -> None:
    h = MemoryHistory(E)
    h.append("c", b"1", HistoryOptions(size=10, ttl=100.0), 0.0)
    h.append("c", b"2", HistoryOptions(size=10, ttl=1.0), 0.0)  # the channel's ttl shrank
    h.sweep(1.5)
    assert h.channels == 0 and h.bytes == 0


def test_heaps_do_not_outgrow_the_channels() -> None:
    h = MemoryHistory(E, max_channels=10)
    one = HistoryOptions(size=1, ttl=60)
    for i in range(20_000):
        h.append(f"ch{i % 50}", b"1", one, i * 1e-3)  # churn: 50 channels through 10 slots
        h.append("hot", b"1", one, i * 1e-3)  # one channel trimmed by size on every publish
    assert h.channels == 10
    assert len(h._expiry) <= 2 * 10 + 1024 + 1 and len(h._ages) <= 2 * 10 + 1024 + 1
    assert h.bytes == 10 * (1 + ENTRY_OVERHEAD)


def test_forgotten_positions_move_to_a_new_epoch() -> None:
    pinned = {"subscribed"}
    h = MemoryHistory(E, max_channels=10, pinned=pinned)
    nothing = HistoryOptions(size=0, ttl=60)
    h.touch("subscribed")
    old = StreamPosition(E, h.append("first", b"1", nothing, 0.0).offset)
    for i in range(2 * MIN_POSITIONS):
        h.append(f"ch{i}", b"1", nothing, 0.0)
        assert h.positions <= MIN_POSITIONS
    assert h.epoch != E
    assert h.position("subscribed") == StreamPosition(E, 0)  # pinned: never forgotten
    # "first" was forgotten; published again it starts over in the new epoch, and the old
    # position is recognised as stale even once the new offsets pass it.
    for _ in range(3):
        pub = h.append("first", b"1", nothing, 0.0)
    assert pub.epoch == h.epoch and pub.offset == 3
    assert not h.read("first", old, None, 0.0).complete


# --- MemoryBroker: the sweep task and the bounds ----------------------------------------------


async def test_broker_sweep_frees_history_nobody_reads() -> None:
    broker = MemoryBroker(sweep_interval=0.05)
    await broker.start(None)
    try:
        short = HistoryOptions(size=10, ttl=0.2)
        positions = [await broker.publish(f"ch{i}", b'"' + b"x" * 1000 + b'"', short) for i in range(200)]
        assert broker.history_channels == 200 and broker.history_bytes > 200_000
        await wait_for(lambda: broker.history_bytes == 0, 5.0, what="the sweep to free expired history")
        assert broker.history_channels == 0 and broker.history_positions == 200
        result = await broker.history("ch7", since=StreamPosition(positions[7].epoch, 0))
        assert not result.complete and result.position == positions[7]
    finally:
        await broker.close()


async def test_broker_stays_within_its_bounds() -> None:
    max_bytes = 20 * (1000 + ENTRY_OVERHEAD)
    broker = MemoryBroker(history_max_channels=5, history_max_bytes=max_bytes)
    data = b'"' + b"x" * 998 + b'"'
    for i in range(300):  # 40 channels through 5 slots: each is evicted before it comes back
        await broker.publish(f"ch{i % 40}", data, KEEP)
        assert broker.history_channels <= 5 and broker.history_bytes <= max_bytes
    assert broker.history_channels == 5 and broker.history_bytes == 5 * (1000 + ENTRY_OVERHEAD)
    for i in range(300):  # 5 channels x 10 kept would be 50 entries: the byte bound holds 20
        await broker.publish(f"hot{i % 5}", data, KEEP)
        assert broker.history_channels <= 5 and broker.history_bytes <= max_bytes
    assert broker.history_channels == 5 and broker.history_bytes == max_bytes
    assert [p.offset for p in (await broker.history("hot4")).publications] == [57, 58, 59, 60]


async def test_subscriber_back_after_eviction_is_not_recovered(make_server: ServerFactory) -> None:
    server = await make_server(history_max_channels=2)
    c = await server.client("user=a")
    ok = await c.ok({"type": "subscribe", "channel": "evicted"})
    await server.node.publish_json("evicted", 1)
    seen = await c.next("message")
    await c.close()
    await server.node.publish_json("evicted", 2)  # missed by the client
    for other in ("b", "c"):  # two more channels with history: "evicted" loses its history
        await server.node.publish_json(other, 0)
    assert server.node.broker.history_channels == 2
    c2 = await server.client("user=a")
    since = {"epoch": ok["epoch"], "offset": seen["offset"]}
    reply = await c2.ok({"type": "subscribe", "channel": "evicted", "since": since})
    assert reply["recovered"] is False and reply["offset"] == 2 and reply["epoch"] == ok["epoch"]
    await server.node.publish_json("evicted", 3)
    assert (await c2.next("message"))["data"] == 3


# --- the scenario, measured --------------------------------------------------------------

_RSS_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, os, sys, time
    from pushgate.backends import HistoryOptions, MemoryBroker

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    async def main():
        broker = MemoryBroker(sweep_interval=0.1)
        await broker.start(None)
        data = b'"' + b"x" * (60 * 1024 - 2) + b'"'
        base = rss()
        for i in range(3000):
            await broker.publish(f"ch{i}", data[:-1] + data[-1:], HistoryOptions(size=100, ttl=1.0))  # a copy each
        peak = rss()
        deadline = time.monotonic() + float(sys.argv[1])
        while broker.history_bytes and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        print(json.dumps({"base": base, "peak": peak, "after": rss(), "left": broker.history_bytes}))
        await broker.close()

    asyncio.run(main())
    """
)


def test_rss_returns_after_expiry_in_a_fresh_process() -> None:
    """3,000 x 60 KB to 3,000 channels, ttl 1 s: the memory comes back without any reads.

    Returning freed pages to the system is glibc's ``malloc_trim`` (the sweep calls it after a
    large expiry); elsewhere the memory is only reusable, so the RSS check needs glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        pytest.skip("needs glibc")
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(timeout(10.0))],
        capture_output=True, text=True, timeout=timeout(60.0), check=True,
    )
    m = json.loads(out.stdout)
    grown = m["peak"] - m["base"]
    assert m["left"] == 0
    assert grown > 150 * 1024 * 1024, m  # the scenario really held ~180 MB
    assert m["after"] - m["base"] < grown * 0.25, m  # and most of it went back to the system
