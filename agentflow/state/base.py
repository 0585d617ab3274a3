"""The state backend contract: small enough that another database (Postgres) is one more module.

A backend stores opaque bytes under string keys, each with a **version** and an optional expiry, and offers
four operations:

* :meth:`StateBackend.get` — the record of a key (value, version, expiry), or None when absent or expired.
* :meth:`StateBackend.commit` — apply a list of :class:`Write` in **one transaction**, in order. A write may be
  conditional (``expected_version``: the version the key must have, 0 meaning absent) and may carry a
  ``once_id``: when that id was already recorded, the write is skipped as a duplicate; otherwise the id is
  recorded in the same transaction (kept for ``once_ttl_s``). A skipped write does not abort the others. Each
  write gets a :class:`WriteResult`.
* :meth:`StateBackend.is_applied` — whether a once-id is recorded.
* :meth:`StateBackend.purge_expired` — drop expired records and once-ids (a no-op where the database expires
  them itself).

Versions come from one counter per backend (per database), so they only grow, across keys and across deletes
and expiry: a version read once can never match a later value of the same key (no ABA). Expiry is wall-clock
time (``time.time()``), since several processes share it.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import ClassVar, Final, Literal

import msgspec

from ..lifecycle import Lifecycle, State

__all__ = [
    "APPLIED",
    "CONFLICT",
    "DUPLICATE",
    "BackendStatistics",
    "Record",
    "StateBackend",
    "Write",
    "WriteResult",
]

APPLIED: Final = "applied"
CONFLICT: Final = "conflict"
DUPLICATE: Final = "duplicate"


class Record(msgspec.Struct, frozen=True, gc=False):
    """One stored value: its bytes, its version and its expiry (Unix time, None for never)."""

    value: bytes
    version: int
    expires_at: float | None = None


class Write(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """One write of a commit. ``value=None`` deletes the key.

    ``expected_version``: None writes unconditionally; 0 requires the key to be absent; n requires version n.
    ``once_id``: skip the write if this id is recorded, else record it with the write.
    """

    key: str
    value: bytes | None
    expires_at: float | None = None
    expected_version: int | None = None
    once_id: str | None = None


class WriteResult(msgspec.Struct, frozen=True, gc=False):
    """What became of one write: ``applied`` (``version`` is the new version; a delete uses one up too),
    ``conflict`` (``version`` is the one found, 0 when absent) or ``duplicate`` (its once-id was recorded)."""

    status: Literal["applied", "conflict", "duplicate"]
    version: int = 0


class BackendStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Counts since the backend started: operations, writes by outcome, and failures."""

    backend: str
    state: str
    gets: int
    commits: int
    writes_applied: int
    conflicts: int
    duplicates: int
    purged: int
    errors: int


class StateBackend(Lifecycle, abc.ABC):
    """Base of the state backends. Subclasses implement ``_open``, ``_close``, ``_get``, ``_commit``,
    ``_is_applied`` and ``_purge``; the lifecycle is :class:`~agentflow.lifecycle.Lifecycle`'s (start once,
    idempotent shielded ``aclose``, async context manager) and this class keeps the counts::

        async with SQLiteBackend("state.db") as backend:
            [result] = await backend.commit([Write(key="k", value=b"v")])
            record = await backend.get("k")     # Record(value=b"v", version=result.version)
    """

    name: ClassVar[str]

    def __init__(self, *, once_ttl_s: float) -> None:
        if once_ttl_s <= 0:
            raise ValueError("once_ttl_s must be greater than 0.")
        self.once_ttl_s = once_ttl_s
        self._gets = 0
        self._commits = 0
        self._applied = 0
        self._conflicts = 0
        self._duplicates = 0
        self._purged = 0
        self._errors = 0

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self._describe()} state={self.state.value} gets={self._gets} "
            f"commits={self._commits} writes={self._applied} conflicts={self._conflicts} "
            f"duplicates={self._duplicates}>"
        )

    def _describe(self) -> str:
        """Where the data lives, for ``repr`` and error messages (never a credential)."""
        return self.name

    def _kind(self) -> str:
        return f"{type(self).__name__} ({self._describe()})"

    def _check(self) -> None:
        if self._lifecycle is not State.RUNNING:
            self._check_running("use the state backend")

    async def get(self, key: str) -> Record | None:
        """The record of ``key``, or None when it is absent or expired."""
        self._check()
        self._gets += 1
        try:
            return await self._get(key)
        except BaseException:
            self._errors += 1
            raise

    async def commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        """Apply ``writes`` in order in one transaction; one result per write (see the module docstring)."""
        self._check()
        if not writes:
            return []
        try:
            results = await self._commit(writes)
        except BaseException:
            self._errors += 1
            raise
        self._count(results)
        return results

    def _count(self, results: Sequence[WriteResult]) -> None:
        self._commits += 1
        for r in results:
            if r.status == APPLIED:
                self._applied += 1
            elif r.status == CONFLICT:
                self._conflicts += 1
            else:
                self._duplicates += 1

    async def is_applied(self, once_id: str) -> bool:
        """True when a write with ``once_id`` was committed (within ``once_ttl_s``)."""
        self._check()
        try:
            return await self._is_applied(once_id)
        except BaseException:
            self._errors += 1
            raise

    async def purge_expired(self) -> int:
        """Drop expired records and once-ids; return how many went (0 where the database expires them)."""
        self._check()
        try:
            n = await self._purge()
        except BaseException:
            self._errors += 1
            raise
        self._purged += n
        return n

    def statistics(self) -> BackendStatistics:
        return BackendStatistics(
            backend=self.name,
            state=self.state.value,
            gets=self._gets,
            commits=self._commits,
            writes_applied=self._applied,
            conflicts=self._conflicts,
            duplicates=self._duplicates,
            purged=self._purged,
            errors=self._errors,
        )

    @abc.abstractmethod
    async def _open(self) -> None: ...

    @abc.abstractmethod
    async def _close(self) -> None:
        """Release everything ``_open`` took; also called after a failed ``_open``, so it must cope with a
        half-open backend."""

    @abc.abstractmethod
    async def _get(self, key: str) -> Record | None: ...

    @abc.abstractmethod
    async def _commit(self, writes: Sequence[Write]) -> list[WriteResult]: ...

    @abc.abstractmethod
    async def _is_applied(self, once_id: str) -> bool: ...

    @abc.abstractmethod
    async def _purge(self) -> int: ...
