"""The offset tracker: which offset of a partition may be committed when events finish out of order.

Kafka keeps one committed offset per partition: "everything before this one is done". Handlers run
concurrently (different keys in parallel, also inside one partition), so events finish in any order; committing
the highest finished offset would skip an unfinished one, and a crash would then lose it — the bug Faust and
FastStream users report. The tracker commits only the *contiguous prefix* of finished offsets: the committable
offset is the lowest offset still unfinished (or one past the last taken when everything is finished).

Pure bookkeeping, no I/O: the Kafka bus calls :meth:`OffsetTracker.taken` when it hands a record out,
:meth:`OffsetTracker.finished` on ack, :meth:`OffsetTracker.pending_commits` to commit, and
:meth:`OffsetTracker.revoke` when partitions leave this consumer (and :meth:`OffsetTracker.adopt` when one comes
back). Amortised O(1) per offset.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

__all__ = ["OffsetTracker", "PartitionOffsets"]

P = TypeVar("P", bound=Hashable)


class PartitionOffsets:
    """Offsets of one partition handed out and not yet committed, in the order they were handed out."""

    __slots__ = ("committed", "done", "outstanding", "position")

    def __init__(self) -> None:
        self.outstanding: deque[int] = deque()  # taken, ascending; the head is the lowest unfinished
        self.done: set[int] = set()  # finished but behind an unfinished one
        self.position: int | None = None  # next offset to commit (None: nothing taken yet)
        self.committed: int | None = None  # last offset handed to commit

    def taken(self, offset: int) -> None:
        out = self.outstanding
        if out and offset <= out[-1]:
            raise ValueError(f"Offset {offset} was handed out after {out[-1]}; offsets must ascend per partition.")
        if self.position is not None and offset < self.position:
            raise ValueError(f"Offset {offset} is below the finished position {self.position}.")
        out.append(offset)
        if self.position is None:
            self.position = offset

    def taken_many(self, offsets: list[int]) -> None:
        """:meth:`taken` for the ascending offsets of one fetched batch, in one call."""
        if not offsets:
            return
        first = offsets[0]
        out = self.outstanding
        if (out and first <= out[-1]) or (self.position is not None and first < self.position):
            self.taken(first)  # raises with the reason
        if len(offsets) > 1 and sorted(set(offsets)) != offsets:
            raise ValueError(f"The offsets of one batch must ascend strictly: {offsets[:10]}...")
        out.extend(offsets)
        if self.position is None:
            self.position = first

    def finished(self, offset: int) -> bool:
        """Mark ``offset`` finished; return True when the committable position moved."""
        out = self.outstanding
        if not out:
            return False
        if offset != out[0]:
            if offset > out[0]:
                self.done.add(offset)
            return False
        last = out.popleft()
        done = self.done
        while out and out[0] in done:
            last = out.popleft()
            done.discard(last)
        self.position = out[0] if out else last + 1
        if not out:
            done.clear()
        return True

    @property
    def unfinished(self) -> int:
        return len(self.outstanding) - len(self.done)

    def next_offset(self) -> int | None:
        """Where fetching resumes: one past the last offset taken (None when nothing was taken)."""
        return self.outstanding[-1] + 1 if self.outstanding else self.position

    def untake_tail(self, held: set[int]) -> int:
        """Forget the offsets taken last that are neither finished nor in ``held`` (taken, then lost before they
        were handed on): they must be fetched again from :meth:`next_offset`. Returns how many were forgotten.

        The position does not move: it is the lowest unfinished offset, and a forgotten one stays unfinished
        until it is taken again.
        """
        out, done = self.outstanding, self.done
        n = 0
        while out and out[-1] not in held and out[-1] not in done:
            out.pop()
            n += 1
        return n


class OffsetTracker(Generic[P]):
    """Per-partition :class:`PartitionOffsets`; ``P`` is the partition handle (aiokafka's TopicPartition).

    ::

        t = OffsetTracker[int]()
        for off in (10, 11, 12):
            t.taken(0, off)
        t.finished(0, 12); t.finished(0, 10)
        t.pending_commits()     # {0: 11}: 11 is unfinished, so 12 must not be committed yet
    """

    def __init__(self) -> None:
        self._parts: dict[P, PartitionOffsets] = {}

    def __repr__(self) -> str:
        return f"<OffsetTracker partitions={len(self._parts)} unfinished={self.unfinished()}>"

    def taken(self, part: P, offset: int) -> None:
        po = self._parts.get(part)
        if po is None:
            po = self._parts[part] = PartitionOffsets()
        po.taken(offset)

    def partition(self, part: P) -> PartitionOffsets:
        """The offsets of ``part`` (created empty if new): the hot paths call its methods directly."""
        po = self._parts.get(part)
        if po is None:
            po = self._parts[part] = PartitionOffsets()
        return po

    def finished(self, part: P, offset: int) -> bool:
        """Mark an offset finished; unknown partitions (revoked meanwhile) are ignored. True if it moved."""
        po = self._parts.get(part)
        return po.finished(offset) if po is not None else False

    def position(self, part: P) -> int | None:
        """The offset to commit for ``part`` (the lowest unfinished one), or None when nothing was taken."""
        po = self._parts.get(part)
        return po.position if po is not None else None

    def pending_commits(self) -> dict[P, int]:
        """Positions that moved since they were last returned here (marks them as committed)."""
        out: dict[P, int] = {}
        for part, po in self._parts.items():
            if po.position is not None and po.position != po.committed:
                out[part] = po.position
                po.committed = po.position
        return out

    def uncommit(self, positions: dict[P, int]) -> None:
        """A commit of these positions failed: return them by the next :meth:`pending_commits`."""
        for part in positions:
            po = self._parts.get(part)
            if po is not None:
                po.committed = None

    def unfinished(self, parts: Iterable[P] | None = None) -> int:
        """Offsets handed out and not finished, in ``parts`` (default: all)."""
        if parts is None:
            return sum(po.unfinished for po in self._parts.values())
        return sum(self._parts[p].unfinished for p in parts if p in self._parts)

    def revoke(self, parts: Iterable[P]) -> dict[P, PartitionOffsets]:
        """Forget ``parts`` (they now belong to another consumer); later finishes there are ignored.

        Returns their offsets, which :meth:`adopt` takes back if the same partition returns."""
        out: dict[P, PartitionOffsets] = {}
        for p in parts:
            po = self._parts.pop(p, None)
            if po is not None:
                out[p] = po
        return out

    def adopt(self, part: P, offsets: PartitionOffsets) -> None:
        """Track ``part`` with offsets kept from before (:meth:`revoke`): finishes there count again."""
        self._parts[part] = offsets

    def partitions(self) -> list[P]:
        return list(self._parts)
