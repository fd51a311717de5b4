"""The per-channel stream state machine, driven by plain method calls (no sockets, no loop)."""

from __future__ import annotations

from pushgate.backends.broker import HistoryResult, Publication, StreamPosition
from pushgate.stream import DELIVER, SKIP, ChannelStream, FillOutcome, StartFill

E = "e1"


def pub(offset: int, epoch: str = E) -> Publication:
    return Publication("ch", b'{"n":%d}' % offset, offset, epoch)


def offsets(pubs: object) -> list[int]:
    return [p.offset for p in pubs]  # type: ignore[attr-defined]


def stream(at: int = 0, *, gap_fill: bool = True) -> ChannelStream:
    return ChannelStream(StreamPosition(E, at), gap_fill=gap_fill)


# -- live order and duplicates ----------------------------------------------------------------
def test_consecutive_publications_are_delivered_and_advance_the_position() -> None:
    s = stream(3)
    assert s.publication(pub(4)) is DELIVER
    assert s.publication(pub(5)) is DELIVER
    assert s.last == StreamPosition(E, 5)


def test_a_duplicate_or_older_publication_is_dropped() -> None:
    s = stream(3)
    assert s.publication(pub(4)) is DELIVER
    assert s.publication(pub(4)) is SKIP
    assert s.publication(pub(2)) is SKIP
    assert s.last == StreamPosition(E, 4)


def test_a_new_epoch_is_delivered_and_restarts_offsets() -> None:
    s = stream(40)
    assert s.publication(pub(1, "e2")) is DELIVER
    assert s.last == StreamPosition("e2", 1)
    assert s.publication(pub(2, "e2")) is DELIVER


# -- gaps ---------------------------------------------------------------------------------------
def test_a_single_missing_message_starts_a_fill_from_the_last_position() -> None:
    s = stream(3)
    action = s.publication(pub(5))  # 4 was lost on the way
    assert action == StartFill(StreamPosition(E, 3))
    assert s.filling
    assert s.publication(pub(6)) is SKIP  # buffered until the fill ends


def test_fill_then_live_order_is_history_first_then_buffered_without_duplicates() -> None:
    s = stream(3)
    assert isinstance(s.publication(pub(5)), StartFill)
    assert s.publication(pub(6)) is SKIP
    history = HistoryResult([pub(4), pub(5), pub(6)], StreamPosition(E, 6), complete=True)
    out = s.fill_done(history)
    assert offsets(out.deliver) == [4, 5, 6]
    assert not out.resync and not s.filling
    assert s.publication(pub(7)) is DELIVER
    assert s.publication(pub(6)) is SKIP


def test_fill_keeps_buffered_publications_newer_than_the_history_read() -> None:
    s = stream(3)
    s.publication(pub(5))
    s.publication(pub(7))
    out = s.fill_done(HistoryResult([pub(4), pub(5), pub(6)], StreamPosition(E, 6)))
    assert offsets(out.deliver) == [4, 5, 6, 7]


def test_without_history_a_gap_is_not_filled() -> None:
    s = stream(3, gap_fill=False)
    assert s.publication(pub(9)) is DELIVER
    assert not s.filling


def test_a_fill_that_history_cannot_prove_asks_the_subscribers_to_resync() -> None:
    # The 4002 path: publications after `since` were already trimmed from history.
    s = stream(3)
    s.publication(pub(50))
    s.publication(pub(51))
    out = s.fill_done(HistoryResult([], StreamPosition(E, 50), complete=False))
    assert out.resync and out.resync_at == StreamPosition(E, 49)  # 4..49 are gone for good
    assert offsets(out.deliver) == [50, 51]
    assert s.last == StreamPosition(E, 51)


def test_an_incomplete_fill_still_delivers_what_history_kept() -> None:
    s = stream(3)
    s.publication(pub(9))
    out = s.fill_done(HistoryResult([pub(7), pub(8), pub(9)], StreamPosition(E, 9), complete=False))
    assert out.resync_at == StreamPosition(E, 6) and offsets(out.deliver) == [7, 8, 9]


def test_a_failed_history_read_asks_the_subscribers_to_resync() -> None:
    s = stream(3)
    s.publication(pub(5))
    out = s.fill_done(None)
    # 4 is lost for good: the resync names the position just before what is delivered next
    assert out == FillOutcome(deliver=(pub(5),), resync_at=StreamPosition(E, 4))
    assert s.publication(pub(6)) is DELIVER


def test_a_resync_with_nothing_buffered_goes_on_from_where_history_stands() -> None:
    s = stream(3)
    s.link_restored()
    out = s.fill_done(HistoryResult([], StreamPosition("new-epoch", 0), complete=False))  # history lost
    assert out.resync_at == StreamPosition("new-epoch", 0) and out.deliver == ()
    assert s.publication(pub(1, "new-epoch")) is DELIVER


def test_link_restored_starts_one_fill_at_a_time() -> None:
    s = stream(7)
    assert s.link_restored() == StartFill(StreamPosition(E, 7), verify=True)
    assert s.link_restored() is None
    assert s.publication(pub(9)) is SKIP
    out = s.fill_done(HistoryResult([pub(8), pub(9)], StreamPosition(E, 9)))
    assert offsets(out.deliver) == [8, 9]


def test_a_link_restore_asks_to_verify_what_was_delivered_last() -> None:
    """After a link loss the node checks that the broker still holds its newest publication (a
    failover may have lost it): the fill carries that publication's position and data."""
    s = stream(7)
    assert s.publication(pub(8)) is DELIVER
    assert s.link_restored() == StartFill(StreamPosition(E, 8), verify=True, data=b'{"n":8}')
    s.fill_done(HistoryResult([], StreamPosition(E, 8)))
    # a position learnt from history (no publication seen) has no data to compare
    t = stream(3)
    t.link_restored()
    t.fill_done(HistoryResult([], StreamPosition(E, 5), complete=False))
    assert t.last == StreamPosition(E, 5) and t.last_data is None


def test_a_rewound_stream_resyncs_and_drops_old_epoch_publications_that_reuse_offsets() -> None:
    """The broker went back to offset 6 after the node delivered 8 (a failover lost 7 and 8); a
    new 7 arrived in the old epoch before the stream was reset to epoch e2. The subscribers get
    a resync into e2 and what e2 holds, never the ambiguous old-epoch 7."""
    s = stream(7)
    s.publication(pub(8))
    fill = s.link_restored()
    assert fill is not None and fill.verify
    assert s.publication(Publication("ch", b'{"n":99}', 7, E)) is SKIP  # buffered during the fill
    assert s.publication(pub(1, "e2")) is SKIP
    out = s.fill_done(HistoryResult([pub(1, "e2")], StreamPosition("e2", 1), complete=False))
    assert out.resync_at == StreamPosition("e2", 0)
    assert [(p.epoch, p.offset) for p in out.deliver] == [("e2", 1)]
    assert s.last == StreamPosition("e2", 1)


def test_nothing_missed_while_the_link_was_down_delivers_nothing_twice() -> None:
    s = stream(7)
    s.link_restored()
    out = s.fill_done(HistoryResult([], StreamPosition(E, 7)))
    assert out == FillOutcome()


# -- subscribers replaying history --------------------------------------------------------------
def test_live_publications_are_held_for_a_replaying_subscriber() -> None:
    s = stream(3)
    s.begin("a")
    assert s.publication(pub(4)) is DELIVER  # live subscribers get it now
    assert s.publication(pub(5)) is DELIVER
    assert s.is_held("a")
    # its replay from history already had 4: only 5 is still owed
    assert offsets(s.finish("a", StreamPosition(E, 4)) or []) == [5]
    assert not s.is_held("a")


def test_a_held_subscriber_whose_replay_covers_everything_gets_nothing_twice() -> None:
    s = stream(3)
    s.begin("a")
    s.publication(pub(4))
    assert s.finish("a", StreamPosition(E, 4)) == []


def test_a_held_subscriber_in_a_new_epoch_keeps_publications_of_the_other_epoch() -> None:
    s = stream(3)
    s.begin("a")
    s.publication(pub(1, "e2"))
    assert offsets(s.finish("a", StreamPosition(E, 3)) or []) == [1]


def test_cancel_forgets_a_held_subscriber() -> None:
    s = stream(3)
    s.begin("a")
    s.cancel("a")
    assert s.held == 0
    assert s.finish("a", StreamPosition(E, 3)) is None


def test_a_subscriber_finishing_during_a_fill_is_released_with_exactly_what_it_lacks() -> None:
    s = stream(3)
    s.begin("a")
    assert isinstance(s.publication(pub(6)), StartFill)  # 4 and 5 were lost
    # "a" read history up to 5 and sent that replay while the node was still filling
    assert s.finish("a", StreamPosition(E, 5)) is None
    assert s.is_held("a")
    s.publication(pub(7))
    out = s.fill_done(HistoryResult([pub(4), pub(5), pub(6)], StreamPosition(E, 6)))
    assert offsets(out.deliver) == [4, 5, 6, 7]
    assert [(sub, offsets(p)) for sub, p in out.release] == [("a", [6, 7])]
    assert not out.resync and s.held == 0


def test_a_subscriber_still_reading_history_when_the_fill_ends_stays_held() -> None:
    s = stream(3)
    s.begin("a")
    s.publication(pub(5))
    out = s.fill_done(HistoryResult([pub(4), pub(5)], StreamPosition(E, 5)))
    assert out.release == ()
    assert offsets(s.finish("a", StreamPosition(E, 4)) or []) == [5]


def test_released_subscribers_resync_too_when_the_fill_fails() -> None:
    s = stream(3)
    s.begin("a")
    s.publication(pub(6))
    assert s.finish("a", StreamPosition(E, 4)) is None
    out = s.fill_done(None)
    assert out.resync
    assert [sub for sub, _ in out.release] == ["a"]


# -- shared recovery reads (single flight) --------------------------------------------------------
def history(*offs: int, at: int | None = None, epoch: str = E) -> HistoryResult:
    return HistoryResult([pub(o, epoch) for o in offs], StreamPosition(epoch, at if at is not None else max(offs)))


def test_concurrent_recoveries_share_one_read() -> None:
    s = stream(5)
    first, start = s.shared_read(now=0.0)
    assert start
    second, start2 = s.shared_read(now=0.1)
    assert second is first and not start2  # still in flight: join it
    s.read_done(first, history(3, 4, 5), now=0.2)
    third, start3 = s.shared_read(now=1.0)
    assert third is first and not start3  # finished, still within the sharing window
    assert s.shared_read(now=0.2 + 2.5)[1]  # past the window: a new read


def test_recovery_from_a_shared_read_adds_what_was_delivered_since_it_began() -> None:
    s = stream(5)
    shared, _ = s.shared_read(now=0.0)
    s.publication(pub(6))  # delivered live while the read is in flight
    s.read_done(shared, history(4, 5), now=0.1)  # the read's snapshot ended at 5
    s.publication(pub(7))
    position, recovered, replay = s.recover(shared, StreamPosition(E, 3)) or (None, None, [])
    assert recovered and offsets(replay) == [4, 5, 6, 7] and position == StreamPosition(E, 7)
    # a subscriber that had seen more than the snapshot is served from the tail alone
    position, recovered, replay = s.recover(shared, StreamPosition(E, 6)) or (None, None, [])
    assert recovered and offsets(replay) == [7]
    # no duplicates when the snapshot already held what the tail also saw
    shared2, _ = s.shared_read(now=10.0)
    s.publication(pub(8))
    s.read_done(shared2, history(6, 7, 8), now=10.1)
    assert offsets(s.recover(shared2, StreamPosition(E, 5))[2]) == [6, 7, 8]  # type: ignore[index]


def test_recovery_from_a_shared_read_refuses_what_history_cannot_prove() -> None:
    s = stream(9)
    shared, _ = s.shared_read(now=0.0)
    s.read_done(shared, history(8, 9), now=0.1)
    assert s.recover(shared, StreamPosition(E, 2)) == (StreamPosition(E, 9), False, [])  # trimmed
    assert s.recover(shared, StreamPosition("old", 8)) == (StreamPosition(E, 9), False, [])  # other epoch
    assert s.recover(shared, StreamPosition(E, 50)) == (StreamPosition(E, 9), False, [])  # never seen
    assert s.recover(shared, StreamPosition(E, 9)) == (StreamPosition(E, 9), True, [])  # up to date


def test_a_failed_shared_read_is_not_reused() -> None:
    s = stream(1)
    shared, _ = s.shared_read(now=0.0)
    s.read_failed(shared)
    assert s.shared_read(now=0.1)[1]


def test_an_outage_or_a_failed_fill_retires_the_shared_read() -> None:
    s = stream(1)
    shared, _ = s.shared_read(now=0.0)
    s.read_done(shared, history(1), now=0.0)
    s.link_restored()
    assert s.shared_read(now=0.1)[1]


def test_an_overflowing_tail_stops_serving() -> None:
    from pushgate.stream import MAX_TAIL

    s = stream(0)
    shared, _ = s.shared_read(now=0.0)
    for i in range(1, MAX_TAIL + 2):
        s.publication(pub(i))
    s.read_done(shared, history(at=0), now=0.0)
    assert s.recover(shared, StreamPosition(E, 0)) is None


def test_best_effort_recovery_delivers_what_history_still_keeps() -> None:
    # user streams: an offline inbox hands over what it kept even when older messages are gone
    s = stream(9)
    shared, _ = s.shared_read(now=0.0)
    s.read_done(shared, history(7, 8, 9), now=0.0)
    s.publication(pub(10))
    assert s.recover(shared, StreamPosition(E, 2)) == (StreamPosition(E, 9), False, [])
    position, recovered, replay = s.recover(shared, StreamPosition(E, 2), best_effort=True) or (None, None, [])
    assert not recovered and offsets(replay) == [7, 8, 9, 10] and position == StreamPosition(E, 10)
    position, recovered, replay = s.recover(shared, StreamPosition("old", 50), best_effort=True) or (None, None, [])
    assert not recovered and offsets(replay) == [7, 8, 9, 10]
    position, recovered, replay = s.recover(shared, StreamPosition(E, 8), best_effort=True) or (None, None, [])
    assert recovered and offsets(replay) == [9, 10]
