"""Chaos behind the real front: 3 nodes on Valkey behind nginx (``pushgate nginx-config``'s output),
a few hundred clients, a publisher at a few hundred messages per second, one node killed with
SIGKILL and another drained with SIGTERM while it runs; in the ``sentinel`` run the nodes use
``redis+sentinel://`` (1 primary + 1 replica + 3 sentinels) and, last, the Redis primary is killed
with SIGKILL: the sentinels promote the replica and the nodes follow it, with no client
disconnected.

What a Redis failover can lose (writes the dead primary acknowledged before its replica had
them) cannot be delivered; the nodes notice that the stream went back and tell the clients
in-band (a ``resync`` into a new epoch). The accounting: every number a client kept is in order
and once; a number it lacks is allowed only where a ``resync`` of that stream came between its
neighbours (``Stats.resync_marks``), and the report counts those. Without Sentinel no resync is
allowed at all.

Every client follows one sequenced channel and its own user stream (direct messages, sequenced
per group of users). At the end every client must hold every number of both sequences exactly
once and in order — through nginx's failover, the clients' ``since`` / ``user_since`` recovery and
the publisher's retries with ``idempotency_key``. The test prints reconnect time p50/p99, the
messages recovered, and the survivors' CPU during each reconnect wave.

Slow (about a minute of wall time, a few hundred sockets): marked ``chaos``, skipped unless
``PUSHGATE_TEST_CHAOS=1`` (``.ci/run`` runs it in its own bounded step).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pushgate.nginx import NginxOptions

from ..conftest import Process
from ..helpers import timeout, wait_for
from ..servers import SentinelGroup
from .conftest import Nginx, node_factory
from .rawclient import RawClient

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]

CLIENTS = int(os.environ.get("PUSHGATE_TEST_CHAOS_CLIENTS", "300"))
CHANNELS = 10
GROUPS = 10  # direct messages: one send per tick to one group of users (CLIENTS / GROUPS users)
TICK = 0.05  # a tick: one publish to every channel + one send = 11 requests, 200 publications/s
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


@dataclass
class Wave:
    """CPU of the surviving nodes (percent of one core) while a reconnect wave lands on them."""

    name: str
    seconds: float
    cpu: dict[str, float]


class CpuMeter:
    def __init__(self, nodes: dict[str, Process]) -> None:
        self.nodes = nodes
        self.start = time.monotonic()
        self.before = {n: cpu_seconds(p.proc.pid) for n, p in nodes.items()}

    def wave(self, name: str) -> Wave:
        wall = time.monotonic() - self.start
        return Wave(name, wall, {n: 100 * (cpu_seconds(p.proc.pid) - self.before[n]) / wall
                                 for n, p in self.nodes.items() if p.proc.poll() is None})


class Publisher:
    """Numbered publications per channel and numbered sends per group of users, each retried
    (same ``idempotency_key``) through nginx's internal server until a node accepts it."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base
        self.channel_n = [0] * CHANNELS
        self.group_k = [0] * GROUPS
        self.retries = 0
        self.ok_at = 0.0  # when a request was last accepted
        self.failed_at = 0.0  # when a request last failed
        self.stopping = False

    async def _post(self, path: str, body: dict[str, Any]) -> None:
        deadline = time.monotonic() + timeout(30)
        while True:
            try:
                async with self.session.post(self.base + path, json=body,
                                             timeout=aiohttp.ClientTimeout(total=3)) as r:
                    if r.status == 200:
                        self.ok_at = time.monotonic()
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            self.retries += 1
            self.failed_at = time.monotonic()
            assert time.monotonic() < deadline, f"{path} {body['idempotency_key']} not accepted within 30 s"
            await asyncio.sleep(0.05)

    async def _channel(self, c: int) -> None:
        n = self.channel_n[c] + 1
        await self._post("/api/publish", {"channel": f"ch{c}", "data": {"n": n}, "idempotency_key": f"ch{c}-{n}"})
        self.channel_n[c] = n

    async def _group(self, g: int, users: list[str]) -> None:
        k = self.group_k[g] + 1
        await self._post("/api/send", {"users": users, "data": {"k": k}, "idempotency_key": f"g{g}-{k}"})
        self.group_k[g] = k

    async def run(self, groups: list[list[str]]) -> None:
        """One tick every TICK; a channel (or group) has one request in flight at a time, so
        each sequence is published in order."""
        busy: dict[int, asyncio.Task[None]] = {}
        for tick in itertools.count():
            if self.stopping:
                break
            started = time.monotonic()
            for c in range(CHANNELS):
                if c not in busy or busy[c].done():
                    busy[c] = asyncio.create_task(self._channel(c))
            g = tick % GROUPS
            if CHANNELS + g not in busy or busy[CHANNELS + g].done():
                busy[CHANNELS + g] = asyncio.create_task(self._group(g, groups[g]))
            for task in busy.values():
                if task.done() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            await asyncio.sleep(max(0.0, TICK - (time.monotonic() - started)))
        await asyncio.gather(*busy.values())


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def phase_line(name: str, phases: list[tuple[float, float, float]]) -> str:
    cells = []
    for i, label in enumerate(("loss->TCP connected", "->welcome", "->subscribed")):
        values = [p[i] for p in phases]
        cells.append(f"{label} {pct(values, 0.5):.3f}/{pct(values, 0.99):.3f}s")
    return f"  after {name}, phases p50/p99: " + ", ".join(cells)


def unexplained(seen: list[int], marks: set[int], last: int) -> tuple[list[int], int]:
    """Numbers 1..last missing from ``seen`` (kept in order) where no resync came (``marks``: how
    many numbers were kept when each resync arrived), and how many missing ones a resync explains."""
    missing: list[int] = []
    explained = 0
    expected = 1
    for i, v in enumerate([*seen, last + 1]):
        if v > expected:
            if i in marks:
                explained += v - expected
            else:
                missing += range(expected, v)
        expected = max(expected, v + 1)
    return missing, explained


Front = tuple[dict[str, Process], Nginx, Callable[..., Process], SentinelGroup | None]


@pytest.fixture(params=["valkey", "sentinel"])
def nodes_and_front(request: pytest.FixtureRequest, spawn_node: Callable[..., Process],
                    start_nginx: Callable[[NginxOptions], Nginx]) -> Iterator[Front]:
    group: SentinelGroup | None = None
    if request.param == "sentinel":
        group = request.getfixturevalue("sentinel_group")
        url = group.url
    else:
        url = request.getfixturevalue("valkey").url
    ha_node = node_factory(spawn_node, url)
    args = ("--drain-period", "2", "--history-size", "2000", "--user-history-size", "2000",
            "--max-connections-per-user", "0")

    def node(name: str, port: int | None = None) -> Process:
        return ha_node(name, *args, wait=False, port=port)

    nodes = {f"n{i}": node(f"n{i}") for i in (1, 2, 3)}
    for p in nodes.values():
        p.wait_ready()
    nginx = start_nginx(NginxOptions(upstreams=[f"127.0.0.1:{p.port}" for p in nodes.values()]))
    yield nodes, nginx, node, group


async def test_chaos_through_nginx(nodes_and_front: Front) -> None:
    nodes, nginx, restart, group = nodes_and_front
    host, port = nginx.public.removeprefix("http://").split(":")
    users = [f"u{i}" for i in range(CLIENTS)]
    clients = [RawClient(host, int(port), u, f"ch{i % CHANNELS}") for i, u in enumerate(users)]
    groups = [users[g::GROUPS] for g in range(GROUPS)]
    for i, c in enumerate(clients):
        c.start(delay=i * 0.005)  # a gentle start: this is not the test
    session = aiohttp.ClientSession()
    publisher = Publisher(session, nginx.internal)
    pub: asyncio.Task[None] | None = None
    waves: list[Wave] = []
    try:
        await wait_for(lambda: all(c.connected for c in clients), seconds=60, what="every client subscribed")
        spread = {n: sum(c.stats.nodes[-1] == n for c in clients) for n in nodes}
        assert all(spread.values()), spread
        pub = asyncio.create_task(publisher.run(groups))
        await wait_for(lambda: min(publisher.channel_n) >= 10, seconds=30, what="publishing under way")
        meter = CpuMeter(nodes)
        await wait_for(lambda: min(publisher.channel_n) >= 50, seconds=30, what="a steady stretch")
        waves.append(meter.wave("steady publishing, no failure"))

        # -- SIGKILL n1: nginx drops its clients, they reconnect (jittered) to n2 and n3
        victims = [c for c in clients if c.stats.nodes[-1] == "n1"]
        meter = CpuMeter({n: p for n, p in nodes.items() if n != "n1"})
        nodes["n1"].kill()
        await wait_for(lambda: all(c.connected and c.stats.nodes[-1] != "n1" for c in clients), seconds=60,
                       what="n1's clients back on live nodes")
        waves.append(meter.wave(f"SIGKILL n1 ({len(victims)} clients)"))
        killed_reconnects = [c.stats.reconnects[-1] for c in victims if c.stats.reconnects]
        killed_phases = [c.stats.phases[-1] for c in victims if c.stats.phases]

        nodes["n1"] = restart("n1b", port=nodes["n1"].port)  # back on the same port
        await asyncio.to_thread(nodes["n1"].wait_ready)
        # no pause: the WebSocket upstream keeps no failure marks, so least_conn sends the next
        # wave to the restarted (empty) node at once

        # -- SIGTERM n2: paced drain over 2 s with 1012; its clients reconnect at once (jittered)
        drained = [c for c in clients if c.stats.nodes[-1] == "n2"]
        before = {id(c): len(c.stats.reconnects) for c in drained}
        meter = CpuMeter({n: p for n, p in nodes.items() if n != "n2"})
        nodes["n2"].proc.send_signal(15)
        await wait_for(lambda: all(c.connected and c.stats.nodes[-1] != "n2" for c in clients), seconds=60,
                       what="n2's clients back on live nodes")
        waves.append(meter.wave(f"SIGTERM n2 ({len(drained)} clients)"))
        landed = {n: sum(c.stats.nodes[-1] == n for c in drained) for n in ("n1b", "n3")}
        drained_reconnects = [c.stats.reconnects[-1] for c in drained if len(c.stats.reconnects) > before[id(c)]]
        drained_phases = [c.stats.phases[-1] for c in drained if len(c.stats.reconnects) > before[id(c)]]
        assert await asyncio.to_thread(nodes["n2"].terminate) == 0

        failover_line = "  no Redis failover in this run (plain Valkey)"
        if group is not None:
            # -- SIGKILL the Redis primary: the sentinels promote the replica, every node's pipe and
            # links follow it; the clients stay connected (nodes keep their sockets while the
            # broker is away), the publisher retries its 503s with the same idempotency keys
            at = min(publisher.channel_n)
            await wait_for(lambda: min(publisher.channel_n) >= at + 20, seconds=30, what="publishing before failover")
            reconnects_before = sum(len(c.stats.reconnects) for c in clients)
            old = group.primary()
            old.kill()
            killed = time.monotonic()
            await asyncio.to_thread(group.wait_failover, old.port)
            await wait_for(lambda: publisher.failed_at > killed and publisher.ok_at > publisher.failed_at,
                           seconds=60, what="publishing through the new primary")
            back = publisher.ok_at - killed
            at = min(publisher.channel_n)
            await wait_for(lambda: min(publisher.channel_n) >= at + 20, seconds=30, what="publishing after failover")
            dropped = sum(len(c.stats.reconnects) for c in clients) - reconnects_before
            failover_line = (f"  Redis primary SIGKILL: kill -> publishing again {back:.2f}s; clients reconnected "
                             f"during the failover {dropped}")
            assert dropped == 0 and all(c.connected for c in clients), failover_line

        at = min(publisher.channel_n)
        await wait_for(lambda: min(publisher.channel_n) >= at + 40, seconds=30, what="publishing after the chaos")
        publisher.stopping = True
        await asyncio.wait_for(pub, timeout(60))

        def complete(c: RawClient) -> bool:
            ch = int(c.channel[2:])
            g = int(c.user[1:]) % GROUPS
            return (len(c.stats.channel_seen) >= publisher.channel_n[ch]
                    and len(c.stats.direct_seen) >= publisher.group_k[g])

        try:
            await wait_for(lambda: all(map(complete, clients)), seconds=30, what="every client caught up")
        except AssertionError:
            pass  # the per-client check below says who is missing what
        bad = []
        lost_to_failover = 0
        for c in clients:
            want_ch = list(range(1, publisher.channel_n[int(c.channel[2:])] + 1))
            want_dm = list(range(1, publisher.group_k[int(c.user[1:]) % GROUPS] + 1))
            if group is not None and c.stats.resyncs and not any(f.get("type") == "error" for f in c.stats.resyncs):
                # a resync is accepted for what the Redis failover lost, and only there
                marks_ch = {n for kind, n in c.stats.resync_marks if kind == "channel"}
                marks_dm = {n for kind, n in c.stats.resync_marks if kind == "user"}
                miss_ch, lost_ch_n = unexplained(c.stats.channel_seen, marks_ch, len(want_ch))
                miss_dm, lost_dm_n = unexplained(c.stats.direct_seen, marks_dm, len(want_dm))
                in_order = (c.stats.channel_seen == sorted(set(c.stats.channel_seen))
                            and c.stats.direct_seen == sorted(set(c.stats.direct_seen)))
                if in_order and not miss_ch and not miss_dm:
                    lost_to_failover += lost_ch_n + lost_dm_n
                    continue
            if c.stats.channel_seen != want_ch or c.stats.direct_seen != want_dm or c.stats.resyncs:
                lost_ch = sorted(set(want_ch) - set(c.stats.channel_seen))[:10]
                lost_dm = sorted(set(want_dm) - set(c.stats.direct_seen))[:10]
                bad.append(f"{c.user} on {c.stats.nodes}: channel lost {lost_ch} "
                           f"dup/out-of-order {c.stats.channel_seen != sorted(set(c.stats.channel_seen))}; "
                           f"direct lost {lost_dm}; resyncs/errors {c.stats.resyncs[:2]}")
        all_reconnects = [r for c in clients for r in c.stats.reconnects]
        resynced = sum(1 for c in clients if c.stats.resyncs)
        report = [
            f"\nchaos through nginx ({'sentinel' if group else 'valkey'}): {CLIENTS} clients, "
            f"{CHANNELS} channels x {max(publisher.channel_n)} publications, "
            f"{GROUPS} user groups x {max(publisher.group_k)} sends, "
            f"{sum(publisher.channel_n) + sum(publisher.group_k)} requests, publisher retries {publisher.retries}",
            f"  reconnect after SIGKILL: n={len(killed_reconnects)} p50 {pct(killed_reconnects, 0.5):.3f}s "
            f"p99 {pct(killed_reconnects, 0.99):.3f}s max {max(killed_reconnects, default=0):.3f}s",
            f"  reconnect after SIGTERM: n={len(drained_reconnects)} p50 {pct(drained_reconnects, 0.5):.3f}s "
            f"p99 {pct(drained_reconnects, 0.99):.3f}s max {max(drained_reconnects, default=0):.3f}s",
            phase_line("SIGKILL", killed_phases),
            phase_line("SIGTERM", drained_phases),
            f"  all reconnects: n={len(all_reconnects)} mean {statistics.fmean(all_reconnects or [0]):.3f}s",
            f"  recovered: channel {sum(c.stats.recovered_channel for c in clients)} messages, "
            f"direct {sum(c.stats.recovered_direct for c in clients)}; recoveries not whole "
            f"{sum(c.stats.not_recovered for c in clients)}; duplicates dropped "
            f"{sum(c.stats.duplicates for c in clients)}; handshakes refused {sum(c.stats.refused for c in clients)}",
            f"  n2's clients landed on {landed} (n1b restarted after SIGKILL, n3 holding its share and n1's)",
            failover_line,
            f"  clients told to resync {resynced}; messages the failover lost (accounted by a resync) "
            f"{lost_to_failover}",
            *(f"  CPU during {w.name}, {w.seconds:.1f}s: "
              + ", ".join(f"{n} {v:.0f}%" for n, v in w.cpu.items()) for w in waves),
            f"  {len(bad)} clients incomplete" + ("".join(f"\n    {b}" for b in bad[:10])),
        ]
        print("\n".join(report))
        out = os.environ.get("PUSHGATE_TEST_CHAOS_REPORT")
        if out:
            with open(out, "a") as f:  # one report per run (valkey, sentinel)
                f.write("\n".join(report) + "\n")
        assert not bad, "\n".join(report)
        assert killed_reconnects and drained_reconnects, "the chaos reached the clients"
    finally:
        publisher.stopping = True
        if pub is not None and not pub.done():
            pub.cancel()
            await asyncio.gather(pub, return_exceptions=True)
        for c in clients:
            c.stop()
        await session.close()
