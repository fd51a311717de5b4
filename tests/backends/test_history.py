"""The history rules (pushgate.backends.history) on their own, without a broker or I/O.

The conformance suite checks every broker against the same rules end to end; these pin the
Python copy down case by case (the Lua copy in redis/scripts.py is held to it by that suite).
"""

from __future__ import annotations

from pushgate.backends import HistoryOptions, Publication, StreamPosition
from pushgate.backends.history import ENTRY_OVERHEAD, HistoryBuffer, select_history

E = "ep"


def pubs(*offsets: int) -> list[Publication]:
    return [Publication("c", str(o).encode(), o, E) for o in offsets]


def offsets(result: object) -> list[int]:
    return [p.offset for p in result.publications]  # type: ignore[attr-defined]


def test_without_since_all_or_the_newest_limit() -> None:
    kept, pos = pubs(3, 4, 5), StreamPosition(E, 5)
    assert offsets(select_history(kept, pos, None, None)) == [3, 4, 5]
    assert offsets(select_history(kept, pos, None, 2)) == [4, 5]
    assert offsets(select_history(kept, pos, None, 0)) == []
    assert offsets(select_history(kept, pos, None, -3)) == []  # a negative limit counts as 0
    assert select_history(kept, pos, None, None).complete


def test_since_complete_only_when_nothing_is_missing() -> None:
    kept, pos = pubs(3, 4, 5), StreamPosition(E, 5)
    ok = select_history(kept, pos, StreamPosition(E, 2), None)
    assert ok.complete and offsets(ok) == [3, 4, 5]
    page = select_history(kept, pos, StreamPosition(E, 3), 1)
    assert page.complete and offsets(page) == [4]
    assert select_history(kept, pos, StreamPosition(E, 5), None).complete  # up to date
    for since in (StreamPosition(E, 1), StreamPosition("other", 4), StreamPosition(E, 6)):
        lost = select_history(kept, pos, since, 2)
        assert not lost.complete and offsets(lost) == [3, 4], since  # what is kept, limited
    assert select_history(kept, pos, StreamPosition(E, 1), None).position == pos


def test_nothing_kept() -> None:
    pos = StreamPosition(E, 2)
    assert not select_history([], pos, StreamPosition(E, 0), None).complete
    assert select_history([], pos, StreamPosition(E, 2), None).complete


def test_buffer_counts_trims_and_drops() -> None:
    buf = HistoryBuffer("c", E)
    keep3 = HistoryOptions(size=3, ttl=60)
    for i in range(1, 6):
        assert buf.append(b"x", keep3, 0.0).offset == i
    assert offsets(buf.read(None, None, 0.0)) == [3, 4, 5]
    assert buf.nbytes == 3 * (1 + ENTRY_OVERHEAD)
    buf.append(b"x", HistoryOptions(size=0, ttl=60), 0.0)  # nothing kept, offset still counts
    result = buf.read(None, None, 0.0)
    assert offsets(result) == [] and result.position == StreamPosition(E, 6)
    assert buf.nbytes == 0


def test_buffer_expires_by_age() -> None:
    buf = HistoryBuffer("c", E)
    buf.append(b"x", HistoryOptions(size=10, ttl=1.0), 0.0)
    assert offsets(buf.read(None, None, 1.0)) == [1]  # exactly ttl old: still kept
    result = buf.read(StreamPosition(E, 0), None, 1.001)
    assert offsets(result) == [] and not result.complete and result.position.offset == 1
