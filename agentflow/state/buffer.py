"""The write-behind buffer: writes waiting for a flush, coalesced per key, in numbered generations.

Writes go into the *pending* generation. A flush takes it whole (it becomes *in flight*, and a new pending
generation opens), commits it in one backend transaction, and then settles every unit that wrote into it. The
buffer holds at most ``max_pending`` writes: a full buffer asks for a flush at once and writers wait for room.
This module does no I/O: the store's flusher commits what :meth:`WriteBuffer.take` hands it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..errors import StateError
from .unit import Unit

__all__ = ["Batch", "Seg", "WriteBuffer"]


class Seg:
    """One buffered write: the raw msgpack (None deletes), its expiry and its once-id."""

    __slots__ = ("expires_at", "once_id", "raw")

    def __init__(self, raw: bytes | None, expires_at: float | None, once_id: str | None) -> None:
        self.raw = raw
        self.expires_at = expires_at
        self.once_id = once_id


class Batch:
    """One generation taken for a flush: its writes per key, in order, and the units that wrote them."""

    __slots__ = ("count", "gen", "units", "writes")

    def __init__(self, gen: int, writes: dict[str, list[Seg]], units: list[Unit]) -> None:
        self.gen = gen
        self.writes = writes
        self.units = units
        self.count = sum(map(len, writes.values()))


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class WriteBuffer:
    """Pending and in-flight writes; ``wake`` pokes the flusher (first write, full buffer, flush requested)."""

    def __init__(self, *, max_pending: int, interval_s: float, wake: Callable[[], None]) -> None:
        self.max_pending = max_pending
        self.interval_s = interval_s
        self._wake = wake
        self.pending: dict[str, list[Seg]] = {}
        self.npending = 0
        self._units: list[Unit] = []
        self.gen = 0  # the pending generation
        self.inflight: dict[str, list[Seg]] = {}
        self.inflight_gen: int | None = None
        self._done_gen = -1
        self._gen_waiters: dict[int, list[asyncio.Future[bool]]] = {}
        self._room: list[asyncio.Future[None]] = []
        self.urgent = False
        self.last_flush_at = 0.0  # loop time the last flush started (or the store started)
        self.writes = 0
        self.coalesced = 0

    def buffered(self, key: str) -> Seg | None:
        """The newest buffered write of ``key`` (pending, else in flight), or None."""
        segs = self.pending.get(key) or self.inflight.get(key)
        return None if segs is None else segs[-1]

    def due_in(self, now: float) -> float | None:
        """Seconds until the pending writes should be flushed (0: now), or None when nothing is pending.
        Flushes start at most every ``interval_s``, unless the buffer is full or a flush was asked for."""
        if not self.pending:
            return None
        if self.urgent:
            return 0.0
        return max(0.0, self.last_flush_at + self.interval_s - now)

    async def wait_room(self) -> None:
        """Wait until the buffer has room for one more write (flushing at once when it is full)."""
        while self.npending >= self.max_pending:
            self.urgent = True
            self._wake()
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._room.append(fut)
            await fut

    def append(self, key: str, seg: Seg, unit: Unit | None) -> None:
        """Put ``seg`` in the pending generation, coalescing it with the key's last write unless either is a
        once-write, and make ``unit`` wait for that generation's flush."""
        segs = self.pending.get(key)
        if segs is None:
            if not self.pending:
                self._wake()
            self.pending[key] = [seg]
            self.npending += 1
        elif seg.once_id is None and segs[-1].once_id is None:
            segs[-1] = seg
            self.coalesced += 1
        else:
            segs.append(seg)
            self.npending += 1
        self.writes += 1
        if unit is not None:
            unit.writes += 1
            if unit.gen != self.gen:
                unit.gen = self.gen
                unit.joined()
                self._units.append(unit)
        if self.npending >= self.max_pending:
            self.urgent = True
            self._wake()

    def take(self, now: float) -> Batch:
        """Hand the pending generation to the flusher (it is in flight until :meth:`finish`)."""
        batch = Batch(self.gen, self.pending, self._units)
        self.pending, self.npending, self._units = {}, 0, []
        self.gen += 1
        self.urgent = False
        self.last_flush_at = now
        self.inflight, self.inflight_gen = batch.writes, batch.gen
        room, self._room = self._room, []
        for fut in room:
            _resolve(fut)
        return batch

    def finish(self, batch: Batch, error: StateError | None) -> None:
        """The flush of ``batch`` ended: settle its units and whoever waits for its generation."""
        self.inflight, self.inflight_gen = {}, None
        self._done_gen = batch.gen
        for unit in batch.units:
            unit.settle(error)
        for fut in self._gen_waiters.pop(batch.gen, ()):
            if not fut.done():
                fut.set_result(error is None)

    async def wait_flushed(self) -> bool:
        """Ask for a flush of everything buffered now and wait for it; False if it failed."""
        gen = self.gen if self.pending else self.inflight_gen
        if gen is None or gen <= self._done_gen:
            return True
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._gen_waiters.setdefault(gen, []).append(fut)
        self.urgent = True
        self._wake()
        return await fut

    def abort(self, error: StateError) -> int:
        """Fail everything still buffered (the store closed without flushing it); return how many writes."""
        lost = self.npending + sum(map(len, self.inflight.values()))
        for unit in self._units:
            unit.settle(error)
        self.pending, self.npending, self._units = {}, 0, []
        for waiters in self._gen_waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_result(False)
        self._gen_waiters.clear()
        room, self._room = self._room, []
        for room_fut in room:
            _resolve(room_fut)
        return lost
