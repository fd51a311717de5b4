"""The hub's write-through: the first fan-out of a loop iteration writes each socket at once;
later frames of the iteration queue and leave in one write per socket; holds stop it.

The transport here records writes instead of sending them: what is asserted is how many
``write()`` calls carry which frames, and when, which a socket cannot show (TCP joins writes).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

from pushgate.hub import Hub
from pushgate.metrics import NodeMetrics
from pushgate.protocol import wsframe
from pushgate.protocol.outgoing import Outgoing
from pushgate.web.connection import FramedConnection

from .helpers import wait_for


class Written(asyncio.Transport):
    """Records each write; ``buffered`` stands for bytes the kernel did not take."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.buffered = 0
        self.closing = False
        self.cost = 0.0  # seconds each write takes (the system call of a large fan-out)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        if self.cost:
            time.sleep(self.cost)

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def close(self) -> None:
        self.closing = True


class Framed(FramedConnection):
    __slots__ = ("codes",)

    def __init__(self, hub: Hub, metrics: NodeMetrics, limit: int = 1 << 20) -> None:
        super().__init__("c", None, None, transport=Written(), hub=hub, write_limit=limit, metrics=metrics)
        self.codes: list[int] = []

    @property
    def writes(self) -> list[bytes]:
        return cast(Written, self._transport).writes

    def _close(self, code: int, reason: str) -> None:
        self.codes.append(code)
        self.closed = True


def frame(i: int) -> bytes:
    return wsframe.server_frame(b"[%d]" % i)


def setup(n: int, **hub_options: Any) -> tuple[Hub, list[Framed]]:
    hub = Hub(**hub_options)
    metrics = NodeMetrics(hub, lambda: True)
    return hub, [Framed(hub, metrics) for _ in range(n)]


async def next_iteration() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_a_lone_fan_out_is_written_at_once_and_later_frames_of_the_iteration_batch() -> None:
    hub, conns = setup(3)
    hub.fanout(conns, Outgoing(b"[1]"))
    # written during the fan-out itself: nothing waits for the end of the loop iteration
    assert [c.writes for c in conns] == [[frame(1)]] * 3
    hub.fanout(conns, Outgoing(b"[2]"))
    hub.fanout(conns, Outgoing(b"[3]"))
    assert [c.writes for c in conns] == [[frame(1)]] * 3  # queued, in order, behind the first
    await next_iteration()
    assert [c.writes for c in conns] == [[frame(1), frame(2) + frame(3)]] * 3
    await asyncio.sleep(0.01)
    hub.fanout(conns, Outgoing(b"[4]"))  # that flush was busy (two frames a socket): [4] queues
    assert [len(c.writes) for c in conns] == [2] * 3
    await next_iteration()
    assert [c.writes[-1] for c in conns] == [frame(4)] * 3
    await asyncio.sleep(0.01)
    hub.fanout(conns, Outgoing(b"[5]"))  # after a quiet flush and a quiet moment: through again
    assert [c.writes[-1] for c in conns] == [frame(5)] * 3


async def test_frames_queued_before_a_fan_out_keep_their_place() -> None:
    hub, (conn, other) = setup(2)
    conn.queue(frame(0))  # e.g. a STOMP receipt: queued, the hub's flush is now pending
    hub.fanout((conn, other), Outgoing(b"[1]"))
    assert conn.writes == [] and other.writes == []  # nothing overtakes the queued frame
    await next_iteration()
    assert conn.writes == [frame(0) + frame(1)]
    assert other.writes == [frame(1)]


async def test_a_flush_window_holds_what_follows_a_written_through_fan_out() -> None:
    hub, (conn,) = setup(1, flush_window=0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    hub.fanout((conn,), Outgoing(b"[1]"))
    assert conn.writes == [frame(1)]
    await next_iteration()
    hub.fanout((conn,), Outgoing(b"[2]"))
    await asyncio.sleep(0.01)
    hub.fanout((conn,), Outgoing(b"[3]"))
    await wait_for(lambda: len(conn.writes) == 2, 2, what="the held flush")
    assert conn.writes[1] == frame(2) + frame(3)
    assert loop.time() - started >= 0.045


async def test_a_slow_consumer_is_cut_on_a_written_through_frame() -> None:
    hub, (conn, fine) = setup(2)
    cast(Written, conn._transport).buffered = 2 << 20  # over the 1 MiB limit after this write
    hub.fanout((conn, fine), Outgoing(b"[1]"))
    assert conn.codes == [4001]
    assert fine.writes == [frame(1)] and fine.codes == []


async def test_a_closing_transport_is_not_written() -> None:
    hub, (conn,) = setup(1)
    cast(Written, conn._transport).closing = True
    hub.fanout((conn,), Outgoing(b"[1]"))
    assert conn.writes == [] and conn.closed


async def test_a_fan_out_right_behind_the_last_write_queues() -> None:
    """A fan-out that starts within a quarter of the last one's duration after it ended queues:
    a publisher awaiting each broadcast gets its answer once the frames are queued, and what
    follows batches."""
    hub, (conn,) = setup(1)
    cast(Written, conn._transport).cost = 0.03
    hub.fanout((conn,), Outgoing(b"[1]"))
    assert conn.writes == [frame(1)]
    await next_iteration()
    hub.fanout((conn,), Outgoing(b"[2]"))
    assert conn.writes == [frame(1)]  # queued: writing filled the loop for 30 ms just now
    await wait_for(lambda: len(conn.writes) == 2, 2, what="the flush")  # right after: busy
    await asyncio.sleep(0.1)
    hub.fanout((conn,), Outgoing(b"[3]"))
    assert len(conn.writes) == 2  # the last flush was busy: this one queues too
    await wait_for(lambda: len(conn.writes) == 3, 2, what="a quiet flush")
    await asyncio.sleep(0.1)  # idle for longer than the last write took
    hub.fanout((conn,), Outgoing(b"[4]"))
    assert conn.writes[-1] == frame(4)


async def test_after_a_busy_flush_fan_outs_batch_until_a_quiet_flush() -> None:
    hub, (conn,) = setup(1, flush_pacing=0.0)  # no holds: only the busy rule is at work
    conn.queue(frame(0))
    hub.fanout((conn,), Outgoing(b"[2]"))
    hub.fanout((conn,), Outgoing(b"[3]"))
    await next_iteration()
    assert conn.writes == [frame(0) + frame(2) + frame(3)]  # two publications in one flush: busy
    await asyncio.sleep(0.05)  # idle for a while, but the last flush was busy
    hub.fanout((conn,), Outgoing(b"[4]"))
    assert len(conn.writes) == 1  # queued, not written through
    await next_iteration()
    assert conn.writes[-1] == frame(4)  # a quiet flush: one frame per socket
    await next_iteration()
    hub.fanout((conn,), Outgoing(b"[5]"))
    assert conn.writes[-1] == frame(5)  # written through again


async def test_a_steady_rate_is_written_through_even_when_writes_take_most_of_the_loop() -> None:
    """5,000 sockets at 10 msg/s on a slow stretch: fan-outs of 60-75 ms every 100. Each one
    that starts later than a quarter of the last one's duration after it is written through,
    not queued behind a pass over every socket and flushed after it."""
    hub, (conn,) = setup(1)
    cast(Written, conn._transport).cost = 0.04
    for i in range(3):
        hub.fanout((conn,), Outgoing(b"[%d]" % i))
        assert conn.writes[-1] == frame(i)  # written during the fan-out itself
        await asyncio.sleep(0.02)  # idle for half as long as the write took
    assert len(conn.writes) == 3
