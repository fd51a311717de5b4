"""The SockJS session rules with fake receivers and short timers (no sockets)."""

from __future__ import annotations

import asyncio

from pushgate.web.sockjs_session import SockJsOptions, SockJsSession

from ..helpers import wait_for


class FakeReceiver:
    def __init__(self, *, polling: bool = False, congested: bool = False) -> None:
        self.frames: list[bytes] = []
        self.ended = False
        self.polling = polling
        self.is_congested = congested

    def send(self, frames: list[bytes]) -> bool:
        self.frames.extend(frames)
        return not self.polling

    def end(self) -> None:
        self.ended = True

    def congested(self) -> bool:
        return self.is_congested


class Events:
    def __init__(self) -> None:
        self.closed: list[SockJsSession] = []
        self.gone: list[SockJsSession] = []


def make(options: SockJsOptions | None = None, write_limit: int = 1000) -> tuple[SockJsSession, Events]:
    events = Events()
    session = SockJsSession("s", options or SockJsOptions(heartbeat=60, disconnect_delay=60), write_limit=write_limit,
                            on_closed=events.closed.append, on_gone=events.gone.append)
    return session, events


async def test_open_then_messages_then_close() -> None:
    session, events = make()
    r = FakeReceiver()
    session.attach(r)
    assert r.frames == [b"o"]
    assert session.send_messages([b'"x"', b'"y"'])
    assert r.frames[-1] == b'a["x","y"]'
    session.close(3000, "Go away!")
    assert r.frames[-1] == b'c[3000,"Go away!"]' and r.ended
    assert events.closed == [session] and not events.gone


async def test_queued_messages_wait_for_the_next_request_and_go_before_the_close() -> None:
    session, _ = make()
    poll = FakeReceiver(polling=True)
    session.attach(poll)
    assert poll.frames == [b"o"] and poll.ended and not session.receiving
    session.send_messages([b'"1"'])
    session.send_messages([b'"2"'])
    session.close(4500, "bye")
    late = FakeReceiver()
    session.attach(late)
    assert late.frames == [b'a["1","2"]', b'c[4500,"bye"]'] and late.ended
    again = FakeReceiver()
    session.attach(again)
    assert again.frames == [b'c[4500,"bye"]']


async def test_a_second_receiver_gets_2010_and_the_first_stays() -> None:
    session, _ = make()
    first, second = FakeReceiver(), FakeReceiver()
    session.attach(first)
    session.attach(second)
    assert second.frames == [b'c[2010,"Another connection still open"]'] and second.ended
    assert not first.ended and session.receiving
    session.send_messages([b'"z"'])
    assert first.frames[-1] == b'a["z"]'


async def test_heartbeat_only_when_idle() -> None:
    session, _ = make(SockJsOptions(heartbeat=0.05, disconnect_delay=60))
    r = FakeReceiver()
    session.attach(r)
    await wait_for(lambda: r.frames.count(b"h") >= 2, what="heartbeats")
    session.close(1000, "done")


async def test_no_receiver_for_disconnect_delay_ends_and_forgets_the_session() -> None:
    session, events = make(SockJsOptions(heartbeat=60, disconnect_delay=0.05))
    r = FakeReceiver()
    session.attach(r)
    await asyncio.sleep(0.1)
    assert not session.closed  # a request is open: no timeout
    session.detach(r)
    await wait_for(lambda: bool(events.gone), what="session forgotten")
    assert events.closed == [session] and session.close_code == 1002


async def test_a_closed_session_is_forgotten_disconnect_delay_later() -> None:
    session, events = make(SockJsOptions(heartbeat=60, disconnect_delay=0.05))
    session.close(3000, "Go away!")
    assert events.closed == [session] and not events.gone
    await wait_for(lambda: bool(events.gone), what="session forgotten")


async def test_bounds_report_a_slow_consumer() -> None:
    session, _ = make(write_limit=10)
    assert session.send_messages([b'"12345"'])
    assert not session.send_messages([b'"67890"'])  # 14 bytes wait: over the limit
    congested, fresh = FakeReceiver(congested=True), make()[0]
    fresh.attach(congested)
    assert not fresh.send_messages([b'"x"'])


async def test_forget_ends_the_open_request() -> None:
    session, events = make()
    r = FakeReceiver()
    session.attach(r)
    session.forget()
    assert r.ended and events.closed == [session] and events.gone == [session]
