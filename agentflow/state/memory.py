"""The in-process state backend: a dict, the embedded default. Nothing survives the process.

Its operations never wait, so the state store calls the synchronous :meth:`MemoryBackend.get_nowait` and
:meth:`MemoryBackend.commit_nowait` directly: writes are applied at once (no write-behind buffer, nothing to
flush) and a memory ``get`` costs a dict lookup and a decode.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence

from ..lifecycle import RUNNING
from .base import APPLIED, CONFLICT, DUPLICATE, Record, StateBackend, Write, WriteResult

__all__ = ["MemoryBackend"]

_DUPLICATE = WriteResult(DUPLICATE)


class MemoryBackend(StateBackend):
    """State in a dict of this process::

    async with MemoryBackend() as backend:
        await backend.commit([Write(key="k", value=b"v")])
    """

    name = "memory"

    def __init__(self, *, once_ttl_s: float = 7 * 24 * 3600.0) -> None:
        super().__init__(once_ttl_s=once_ttl_s)
        self._data: dict[str, Record] = {}
        self._once: dict[str, float] = {}  # once-id -> expiry
        self._versions = itertools.count(1)

    def _describe(self) -> str:
        return f"memory keys={len(self._data)} once_ids={len(self._once)}"

    async def _open(self) -> None:
        pass

    async def _close(self) -> None:
        self._data.clear()
        self._once.clear()

    def get_nowait(self, key: str) -> Record | None:
        """:meth:`get` without a coroutine: the record of ``key``, or None when absent or expired."""
        if self._lifecycle is not RUNNING:
            self._check()
        self._gets += 1
        rec = self._data.get(key)
        # A record without expiry is the answer as it is; one with an expiry goes through _lookup's check.
        return rec if rec is None or rec.expires_at is None else self._lookup(key)

    def commit_nowait(self, writes: Sequence[Write]) -> list[WriteResult]:
        """:meth:`commit` without a coroutine; the same rules, applied at once."""
        if self._lifecycle is not RUNNING:
            self._check()
        results = self._apply(writes)
        self._count(results)
        return results

    def _lookup(self, key: str) -> Record | None:
        rec = self._data.get(key)
        if rec is not None and rec.expires_at is not None and rec.expires_at <= time.time():
            del self._data[key]
            return None
        return rec

    def _apply(self, writes: Sequence[Write]) -> list[WriteResult]:
        data = self._data
        once = self._once
        now = time.time()
        results: list[WriteResult] = []
        for w in writes:
            if w.once_id is not None:
                seen = once.get(w.once_id)
                if seen is not None and seen > now:
                    results.append(_DUPLICATE)
                    continue
            if w.expected_version is not None:
                rec = data.get(w.key)
                current = 0 if rec is None or (rec.expires_at is not None and rec.expires_at <= now) else rec.version
                if current != w.expected_version:
                    results.append(WriteResult(CONFLICT, current))
                    continue
            version = next(self._versions)
            if w.value is None:
                data.pop(w.key, None)
            else:
                data[w.key] = Record(w.value, version, w.expires_at)
            if w.once_id is not None:
                once[w.once_id] = now + self.once_ttl_s
            results.append(WriteResult(APPLIED, version))
        return results

    async def _get(self, key: str) -> Record | None:
        return self._lookup(key)

    async def _commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        return self._apply(writes)

    async def _is_applied(self, once_id: str) -> bool:
        seen = self._once.get(once_id)
        return seen is not None and seen > time.time()

    async def _purge(self) -> int:
        # In slices, yielding between them, so a large dict never holds the event loop for long.
        now = time.time()
        purged = 0
        for key in _slices(list(self._data)):
            for k in key:
                rec = self._data.get(k)
                if rec is not None and rec.expires_at is not None and rec.expires_at <= now:
                    del self._data[k]
                    purged += 1
            await asyncio.sleep(0)
        for ids in _slices(list(self._once)):
            for i in ids:
                expiry = self._once.get(i)
                if expiry is not None and expiry <= now:
                    del self._once[i]
                    purged += 1
            await asyncio.sleep(0)
        return purged


def _slices(items: list[str], size: int = 10_000) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
