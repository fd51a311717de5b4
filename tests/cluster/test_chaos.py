"""Chaos: 3 real nodes + Redis, clients behind a round-robin front, nodes and Redis failing.

What issue 8 asks to prove, with the project's own Python client (``pushgate.client.Client``,
which reconnects with backoff + jitter, recovers channels with ``since`` and its user stream with
``user_since``, and drops duplicates):

1. While a publisher sends a numbered sequence of channel messages and of direct messages to every
   user, one node is killed with SIGKILL and another drained with SIGTERM (both come back later,
   on the same ports). Every client ends with every number exactly once and in order, channel and
   direct separately. A publish that failed while a node died is retried on a live node with the
   same ``idempotency_key``, so a retry of a publish that did land is not applied twice.
2. Redis restarts without persistence (same port, empty data). No client connection closes,
   every client is told in-band to ``resync`` its channel (and its user stream), and the
   sequences go on in the new epoch with nothing delivered twice.

The clients connect through :class:`RoundRobinFront` (a TCP proxy in front of the nodes that skips
dead upstreams, as a load balancer would): the Python client takes one URL. Every wait is bounded;
the only sleeps are the publisher's pacing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pushgate.client import Client, Direct, Message, Position, Resync, State, StateChange, Welcome

from ..conftest import Process
from ..helpers import timeout, wait_for
from ..servers import RedisServer, start_redis

CHANNEL = "chaos"
USERS = [f"u{i}" for i in range(6)]  # one client each; the front spreads them over the nodes
PACE = 0.03  # seconds between the publisher's ticks (one channel publish + one send per tick)
PHASE1 = 240  # numbers of each sequence published around the node failures
PHASE2 = 60  # numbers published after the Redis restart


# -- the front: a TCP round-robin proxy that skips dead upstreams -----------------------------------


class RoundRobinFront:
    """Each new connection goes to the next upstream that accepts a TCP connection; bytes are
    piped both ways and when either side closes, both are closed (a dead node drops its clients)."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self._next = itertools.count()
        self._pipes: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/ws"

    async def _accept(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        start = next(self._next)
        for k in range(len(self.ports)):
            port = self.ports[(start + k) % len(self.ports)]
            try:
                u_reader, u_writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1.0)
                break
            except (OSError, TimeoutError):
                continue
        else:
            c_writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        try:
            await asyncio.gather(self._pipe(c_reader, u_writer), self._pipe(u_reader, c_writer))
        finally:
            self._pipes.discard(task)
            for w in (c_writer, u_writer):
                w.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()  # EOF or error on one side ends the other side too

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)


# -- what each client saw ---------------------------------------------------------------------------


@dataclass
class Seen:
    user: str
    client: Client
    channel: list[int] = field(default_factory=list)  # the "n" of every message, in arrival order
    direct: list[int] = field(default_factory=list)
    resyncs: list[Resync] = field(default_factory=list)
    disconnects: int = 0  # state changes to DISCONNECTED after the first connect: reconnects
    nodes: list[str] = field(default_factory=list)  # the node of every welcome

    def on_welcome(self, welcome: Welcome) -> None:
        self.nodes.append(welcome.node)

    def on_message(self, msg: Message) -> None:
        self.channel.append(msg.data["n"])

    def on_direct(self, d: Direct) -> None:
        self.direct.append(d.data["n"])

    def on_state(self, change: StateChange) -> None:
        if change.state is State.DISCONNECTED:
            self.disconnects += 1


def tally(got: list[int], upto: int) -> tuple[int, int, int, bool]:
    """(delivered, lost, duplicated) of the numbers 1..upto in ``got``, and whether in order."""
    expected = set(range(1, upto + 1))
    delivered = len(set(got) & expected)
    return delivered, upto - delivered, len(got) - len(set(got)), got == sorted(got)


# -- the publisher: numbered sequences, retried on a live node with the same key ----------------------


class Publisher:
    def __init__(self, session: aiohttp.ClientSession, ports: list[int]) -> None:
        self.session = session
        self.ports = ports
        self.rr = itertools.count()
        self.published = 0  # both sequences are complete up to here
        self.retries = 0
        self.gate = asyncio.Event()  # cleared: hold before the next number (nothing in flight)
        self.gate.set()
        self.idle = asyncio.Event()

    async def _post(self, path: str, body: dict[str, Any]) -> None:
        """POST until a node accepts it, moving to the next node after every failure."""
        deadline = time.monotonic() + timeout(30)
        while True:
            port = self.ports[next(self.rr) % len(self.ports)]
            try:
                async with self.session.post(f"http://127.0.0.1:{port}{path}", json=body,
                                             timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            self.retries += 1
            assert time.monotonic() < deadline, f"{path} {body['idempotency_key']} not accepted within 30 s"

    async def run(self, upto: int) -> None:
        for n in range(self.published + 1, upto + 1):
            if not self.gate.is_set():
                self.idle.set()
                await asyncio.wait_for(self.gate.wait(), timeout(30))
                self.idle.clear()
            await self._post("/api/publish", {"channel": CHANNEL, "data": {"n": n}, "idempotency_key": f"ch-{n}"})
            await self._post("/api/send", {"users": USERS, "data": {"n": n}, "idempotency_key": f"dm-{n}"})
            self.published = n
            await asyncio.sleep(PACE)  # pacing: the only sleep


def describe(counts: dict[str, tuple[Any, Any]]) -> str:
    return "\n".join(f"  {user}: channel (delivered, lost, duplicated, in order) = {c}, direct = {d}"
                     for user, (c, d) in counts.items())


def position(s: Seen) -> Position:
    sub = s.client.subscription(CHANNEL)
    assert sub is not None and sub.position is not None
    return sub.position


# -- the test -----------------------------------------------------------------------------------------


@pytest.fixture
def bare_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server without persistence (``--save ''``, no AOF): a restart loses everything."""
    server = start_redis(tmp_path, appendonly=False)
    yield server
    server.kill()


async def test_chaos_kill_drain_and_redis_restart(spawn_node: Callable[..., Process],
                                                  bare_redis: RedisServer) -> None:
    def node(node_id: str, port: int | None = None) -> Process:
        return spawn_node("--broker", bare_redis.url, "--node-id", node_id, "--node-ttl", "3",
                          "--lease-ttl", "2", "--drain-period", "0.3", "--log-level", "warning",
                          port=port, wait=False)

    nodes = [node(f"n{i}") for i in (1, 2, 3)]
    await asyncio.gather(*(asyncio.to_thread(n.wait_ready) for n in nodes))
    ports = [n.port for n in nodes]
    front = RoundRobinFront(ports)
    url = await front.start()
    seen: list[Seen] = []
    session = aiohttp.ClientSession()
    publisher = Publisher(session, ports)
    pub_task: asyncio.Task[None] | None = None
    try:
        for user in USERS:
            client = Client(url, user=user, min_delay=0.1, max_delay=1.0, now_jitter=0.5, request_timeout=5)
            s = Seen(user, client)
            client.on("direct", s.on_direct)
            client.on("state", s.on_state)
            client.on("resync", s.resyncs.append)
            client.on("welcome", s.on_welcome)
            seen.append(s)
            async with asyncio.timeout(timeout(10)):
                await client.connect()
                await client.subscribe(CHANNEL, handler=s.on_message)
        def welcomed_on(s: Seen) -> str | None:
            return s.client.welcome.node if s.client.welcome else None

        on_node = {n: sum(welcomed_on(s) == n for s in seen) for n in ("n1", "n2", "n3")}
        assert all(on_node.values()), f"the front should spread the clients: {on_node}"

        def caught_up(upto: int) -> Callable[[], bool]:
            return lambda: all(len(set(s.channel)) >= upto and len(set(s.direct)) >= upto for s in seen)

        # -- phase 1: SIGKILL n1, SIGTERM (drain) n2, both come back; the publisher never stops
        pub_task = asyncio.create_task(publisher.run(PHASE1))
        await wait_for(lambda: publisher.published >= 30, seconds=15, what="publishing to start")
        nodes[0].kill()
        await wait_for(lambda: all(s.client.state is State.CONNECTED and welcomed_on(s) != "n1" for s in seen),
                       seconds=15, what="n1's clients to reconnect elsewhere")
        at_kill = publisher.published
        await wait_for(lambda: publisher.published >= at_kill + 30, seconds=15, what="publishing after the kill")
        nodes[0] = node("n1b", port=ports[0])  # n1 comes back (a new process on the same port)
        await asyncio.to_thread(nodes[0].wait_ready)
        await asyncio.to_thread(nodes[1].terminate)  # drain n2: 1012 to every client, then exit 0
        nodes[1] = node("n2b", port=ports[1])
        await asyncio.to_thread(nodes[1].wait_ready)
        await asyncio.wait_for(pub_task, timeout(60))
        await wait_for(caught_up(PHASE1), seconds=20, what="every client to get the whole of phase 1")
        counts = {s.user: (tally(s.channel, PHASE1), tally(s.direct, PHASE1)) for s in seen}
        report = describe(counts)
        print(f"\nphase 1 (SIGKILL n1, SIGTERM n2): {PHASE1} of each sequence, "
              f"{publisher.retries} publisher retries, reconnects {[s.disconnects for s in seen]}\n{report}")
        perfect = (PHASE1, 0, 0, True)
        assert all(c == perfect and d == perfect for c, d in counts.values()), f"phase 1:\n{report}"
        assert sum(s.disconnects for s in seen) >= on_node["n1"] + on_node["n2"], "the chaos reached the clients"

        # -- phase 2: Redis restarts empty; connections stay, everyone resyncs in-band
        reconnects = [s.disconnects for s in seen]
        spread = sorted({welcomed_on(s) or "-" for s in seen})
        epochs = [position(s).epoch for s in seen]
        resyncs = [len(s.resyncs) for s in seen]
        publisher.gate.clear()
        pub_task = asyncio.create_task(publisher.run(PHASE1 + PHASE2))
        await asyncio.wait_for(publisher.idle.wait(), timeout(10))  # nothing in flight at the crash
        bare_redis.stop()
        bare_redis.start()  # same port, empty data: every stream gets a new epoch
        publisher.gate.set()
        await asyncio.wait_for(pub_task, timeout(60))
        total = PHASE1 + PHASE2
        await wait_for(caught_up(total), seconds=20, what="every client to get the whole of phase 2")
        await wait_for(lambda: all({r.stream for r in s.resyncs[n:]} == {"channel", "user"}
                                   for s, n in zip(seen, resyncs, strict=True)),
                       seconds=10, what="a channel and a user-stream resync on every client")
        counts = {s.user: (tally(s.channel, total), tally(s.direct, total)) for s in seen}
        new = [s.resyncs[n:] for s, n in zip(seen, resyncs, strict=True)]
        report = describe(counts)
        closed = [s.disconnects - n for s, n in zip(seen, reconnects, strict=True)]
        print(f"phase 2 (Redis restart, no persistence; clients on {spread}): {total} of each sequence in all, "
              f"connections closed "
              f"{closed}, resyncs channel {[sum(r.channel == CHANNEL for r in x) for x in new]} "
              f"user {[sum(r.stream == 'user' for r in x) for x in new]}\n{report}")
        assert closed == [0] * len(seen), f"connections closed by the Redis restart: {closed}"
        perfect = (total, 0, 0, True)
        assert all(c == perfect and d == perfect for c, d in counts.values()), f"phase 2:\n{report}"
        assert all(position(s).epoch != e for s, e in zip(seen, epochs, strict=True)), "no new epoch"
    finally:
        if pub_task is not None:
            pub_task.cancel()
            await asyncio.gather(pub_task, return_exceptions=True)
        await asyncio.gather(*(s.client.close() for s in seen), return_exceptions=True)
        await session.close()
        await front.close()
