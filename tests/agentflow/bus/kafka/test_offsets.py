"""The offset tracker: whatever order events finish in, the committed offset never passes an unfinished one."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentflow.bus.kafka.offsets import OffsetTracker


@st.composite
def runs(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    """Ascending offsets with gaps (compacted topics, transaction markers) and a finishing order."""
    gaps = draw(st.lists(st.integers(min_value=1, max_value=3), min_size=1, max_size=60))
    start = draw(st.integers(min_value=0, max_value=1000))
    offsets = []
    off = start
    for g in gaps:
        offsets.append(off)
        off += g
    order = draw(st.permutations(offsets))
    return offsets, list(order)


@given(runs(), st.integers(min_value=1, max_value=10))
def test_commit_never_passes_an_unfinished_offset_and_reaches_the_end(
    run: tuple[list[int], list[int]], commit_every: int
) -> None:
    offsets, order = run
    t = OffsetTracker[int]()
    for off in offsets:
        t.taken(0, off)
    finished: set[int] = set()
    committed: list[int] = []
    for i, off in enumerate(order):
        t.finished(0, off)
        finished.add(off)
        if i % commit_every == 0:
            committed.extend(t.pending_commits().values())
        pos = t.position(0)
        assert pos is not None
        # Everything below the committable position is finished ...
        assert all(o in finished for o in offsets if o < pos)
        # ... and the position is itself unfinished, or one past the last offset.
        assert pos == offsets[-1] + 1 or (pos in offsets and pos not in finished)
        assert t.unfinished() == len(offsets) - len(finished)
    committed.extend(t.pending_commits().values())
    assert committed == sorted(committed), "commits must only move forward"
    assert committed[-1] == offsets[-1] + 1
    assert t.pending_commits() == {}


@given(st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=1, max_size=80))
def test_partitions_are_independent(ops: list[tuple[int, bool]]) -> None:
    t = OffsetTracker[int]()
    nxt = dict.fromkeys(range(4), 0)
    open_: dict[int, list[int]] = {p: [] for p in range(4)}
    for part, finish_newest in ops:
        t.taken(part, nxt[part])
        open_[part].append(nxt[part])
        nxt[part] += 1
        if finish_newest and open_[part]:
            t.finished(part, open_[part].pop())  # finish out of order: the newest first
    for part in range(4):
        pos = t.position(part)
        if pos is None:
            assert nxt[part] == 0
        elif open_[part]:
            assert pos == min(open_[part])
        else:
            assert pos == nxt[part]


def test_example_out_of_order() -> None:
    t = OffsetTracker[str]()
    for off in (10, 11, 12):
        t.taken("p", off)
    assert t.pending_commits() == {"p": 10}
    assert t.finished("p", 12) is False
    assert t.pending_commits() == {}
    assert t.finished("p", 10) is True
    assert t.pending_commits() == {"p": 11}
    t.finished("p", 11)
    assert t.pending_commits() == {"p": 13}
    assert repr(t) == "<OffsetTracker partitions=1 unfinished=0>"


def test_revocation_drops_state_and_ignores_late_finishes() -> None:
    t = OffsetTracker[int]()
    t.taken(0, 5)
    t.taken(1, 7)
    t.revoke([0])
    assert t.position(0) is None
    assert t.finished(0, 5) is False, "a finish after revocation is ignored"
    assert t.partitions() == [1]
    assert t.unfinished() == 1
    # A partition assigned again starts fresh from wherever the group's committed offset is.
    t.taken(0, 3)
    assert t.position(0) == 3


def test_failed_commit_is_returned_again() -> None:
    t = OffsetTracker[int]()
    t.taken(0, 0)
    t.finished(0, 0)
    pending = t.pending_commits()
    assert pending == {0: 1}
    t.uncommit(pending)
    assert t.pending_commits() == {0: 1}


def test_offsets_must_ascend() -> None:
    t = OffsetTracker[int]()
    t.taken(0, 4)
    with pytest.raises(ValueError, match="ascend"):
        t.taken(0, 4)


@given(runs(), st.integers(min_value=1, max_value=20))
def test_batches_taken_at_once_track_like_single_offsets(run: tuple[list[int], list[int]], size: int) -> None:
    offsets, order = run
    one, many = OffsetTracker[int](), OffsetTracker[int]()
    for off in offsets:
        one.taken(0, off)
    for i in range(0, len(offsets), size):
        many.partition(0).taken_many(offsets[i : i + size])
    for off in order:
        assert one.finished(0, off) == many.partition(0).finished(off)
        assert one.position(0) == many.position(0)
    assert many.pending_commits() == {0: offsets[-1] + 1}


def test_a_batch_must_ascend_strictly_and_follow_what_was_taken() -> None:
    po = OffsetTracker[int]().partition(0)
    po.taken_many([5, 6, 9])
    for bad in ([9, 10], [7, 8], [10, 10], [12, 11]):
        with pytest.raises(ValueError):
            po.taken_many(bad)
    po.taken_many([10, 12])
    assert list(po.outstanding) == [5, 6, 9, 10, 12]


@given(runs(), st.data())
def test_forgetting_the_lost_tail_and_taking_it_again_never_passes_an_unfinished_offset(
    run: tuple[list[int], list[int]], data: st.DataObject
) -> None:
    # The fetch loop failed after taking a batch: some offsets were handed on (in flight or finished), the rest
    # were lost. untake_tail forgets the lost tail, next_offset says where fetching resumes, and taking them again
    # from there ends like a run that never failed.
    offsets, order = run
    t = OffsetTracker[int]()
    po = t.partition(0)
    po.taken_many(offsets)
    handed = data.draw(st.integers(min_value=0, max_value=len(offsets)), label="handed on")
    finished = [o for o in order if o in offsets[:handed]][: data.draw(st.integers(0, handed), label="finished")]
    for o in finished:
        po.finished(o)
    po.untake_tail(set(offsets[:handed]))
    resume = po.next_offset()
    assert resume is not None
    again = [o for o in offsets if o >= resume]
    assert again == offsets[handed:]
    position = t.position(0)
    assert position is not None and position <= min(set(offsets) - set(finished), default=offsets[-1] + 1)
    po.taken_many(again)
    for o in offsets:
        if o not in finished:
            po.finished(o)
    assert t.position(0) == offsets[-1] + 1


def test_revoked_offsets_are_given_back_and_adopted_again() -> None:
    t = OffsetTracker[int]()
    for off in (10, 11, 12):
        t.taken(0, off)
    t.finished(0, 11)
    kept = t.revoke([0, 1])
    assert list(kept) == [0] and t.partitions() == []
    kept[0].finished(10)  # a running event finished while its partition was away
    t.adopt(0, kept[0])
    assert t.position(0) == 12 and kept[0].next_offset() == 13
    assert t.pending_commits() == {0: 12}
