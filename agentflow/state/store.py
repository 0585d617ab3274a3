"""The state store: a cache and a write-behind buffer in front of a backend, and the units that tell a worker
when an event's writes are durable.

* **Values** are msgpack, limited to ``max_state_bytes``, optionally compressed (:mod:`.codec`).
* **Write-behind.** ``set`` and ``delete`` go to a buffer (:mod:`.buffer`), coalesced per key (the last write
  wins; a ``once=True`` write keeps its own place, so its once-id is checked with exactly its value). A flush
  commits the whole buffer in one backend transaction. Flushes start at most every ``flush_interval_ms``: a
  write waits at most that long for its flush to begin, and none after a quiet spell (with the default 0, the
  first write flushes at once and the writes arriving while it commits go together in the next). A full buffer
  (``max_pending_writes``) is flushed at once and writers wait; so is the buffer on :meth:`StateStore.flush`
  and on close. Reads see the buffer first (read-your-writes).
* **Units and durability.** Every write belongs to a :class:`~agentflow.state.unit.Unit` — one event's
  writes. ``await unit.committed()`` returns only once every flush holding the unit's writes is committed, and
  raises :class:`~agentflow.errors.StateUnavailableError` if one failed; a worker acknowledges the event only
  after it.
* **update** is read-modify-write with a version check (:meth:`StateStore.update`).
* **Effectively once.** ``once=True`` records a once-id (the unit's scope — agent and event id —, the key and
  the write's position in the attempt) in the same transaction as the write; a redelivered event that makes
  the same write finds its id and is skipped.
* **The cache** (:mod:`.cache`: ``state_cache_size`` entries, each trusted for ``state_cache_ttl_s``) holds
  committed values with their versions. It is exact for the keys only this process writes (an event key's
  state, owned by the worker its partition is assigned to); a key other processes write may read stale for up
  to ``state_cache_ttl_s``, and ``update`` never trusts it past a conflict.

The memory backend takes writes synchronously: there the store applies each write at once (no buffer, no cache
in front of a dict) and units are committed as soon as their writes return.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Mapping
from types import GeneratorType
from typing import Any, Final

import msgspec

from .. import tracing as _tracing
from ..components import ComponentSample, HistSample
from ..config import StateConfig
from ..errors import LifecycleError, StateConflictError, StateError, StateUnavailableError
from ..lifecycle import RUNNING, Lifecycle, State
from ..metrics import Pow2Histogram
from .base import APPLIED, DUPLICATE, BackendStatistics, StateBackend, Write, WriteResult
from .buffer import Batch, Seg, WriteBuffer
from .cache import StateCache
from .codec import StateCodec, show_key
from .memory import MemoryBackend
from .unit import Unit

__all__ = ["MISSING", "StateStore", "StoreStatistics"]

logger = logging.getLogger(__name__)

#: What :meth:`StateStore.get` returns for a key without a value (None is a value one can store).
MISSING: Final = msgspec.UNSET


class StoreStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Live counts of a state store and its backend.

    ``writes`` counts buffered writes (``set``, ``delete``, an ``update`` behind a buffered write),
    ``coalesced`` those absorbed by a later write to the same key before a flush, ``flushed_writes`` the writes
    the flushes committed; ``duplicates`` counts once-writes skipped because their event's write was applied.
    """

    backend: str
    state: str
    cached: int
    cache_size: int
    cache_hits: int
    cache_misses: int
    pending: int
    inflight: int
    writes: int
    coalesced: int
    flushes: int
    flushed_writes: int
    flush_failures: int
    failed_writes: int
    updates: int
    update_conflicts: int
    duplicates: int
    compressed: int
    backend_stats: BackendStatistics


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class StateStore(Lifecycle):
    """Cache, write-behind buffer and codec in front of a :class:`StateBackend`; see the module docstring.

    Builds its backend from ``config`` (and closes it) unless one is passed, which must be started and is left
    open::

        async with StateStore(StateConfig(backend="sqlite", path="state.db")) as store:
            unit = store.unit(scope="counter:evt-1")
            await store.set("counter:k", 1, unit=unit)
            await unit.committed()
    """

    def __init__(
        self,
        config: StateConfig | None = None,
        *,
        backend: StateBackend | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        cfg = config or StateConfig()
        self.config = cfg
        self._owns_backend = backend is None
        if backend is None:
            from . import create_backend  # the package builds backends, as agentflow.bus builds buses

            backend = create_backend(cfg, env=env)
        self._backend = backend
        self._direct = self._backend if isinstance(self._backend, MemoryBackend) else None
        self.codec = StateCodec(
            max_state_bytes=cfg.max_state_bytes,
            compress_from_bytes=cfg.compression_threshold_bytes if cfg.enable_state_compression else None,
        )
        self._default_ttl_s = cfg.default_ttl_s
        self._cache = StateCache(max_entries=cfg.state_cache_size, ttl_s=cfg.state_cache_ttl_s)
        self._buffer = WriteBuffer(
            max_pending=cfg.max_pending_writes, interval_s=cfg.flush_interval_ms / 1000, wake=self._wake
        )
        self._wakeup: asyncio.Future[None] | None = None
        self._epoch = 0  # bumped by every commit and invalidation: a backend read that spans one is not cached
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._flushes = self._flushed = self._flush_failures = self._failed_writes = 0
        #: How long each flush's commit took (the profile report's state row).
        self.flush_durations = Pow2Histogram()
        self._updates = self._conflicts = self._duplicates = 0

    def __repr__(self) -> str:
        b = self._buffer
        return (
            f"<StateStore backend={self._backend.name} state={self.state.value} cached={len(self._cache)}/"
            f"{self._cache.max_entries} pending={b.npending} inflight={len(b.inflight)} flushes={self._flushes} "
            f"writes={b.writes} conflicts={self._conflicts} failed_writes={self._failed_writes}>"
        )

    @property
    def backend(self) -> StateBackend:
        return self._backend

    # -- lifecycle ---------------------------------------------------------------------------------------------

    async def _open(self) -> None:
        """Start the backend (when the store made it) and the flusher; a store starts once."""
        self._loop = asyncio.get_running_loop()
        if self._owns_backend:
            await self._backend.start()
        elif self._backend.state is not State.RUNNING:
            raise LifecycleError(
                f"The backend passed to the StateStore is {self._backend.state.value}; start it first (the "
                "store closes only backends it made itself)."
            )
        self._stack = contextlib.AsyncExitStack()
        tg = await self._stack.enter_async_context(asyncio.TaskGroup())
        tg.create_task(self._run(), name=f"agentflow-state-flush-{self._backend.name}")

    async def _close(self) -> None:
        """Flush what is buffered, stop the flusher, close the backend the store made (shielded: the cleanup
        finishes even when the caller is cancelled)."""
        self._wake()
        try:
            if self._stack is not None:
                await self._stack.aclose()  # the flusher commits what is buffered, then returns
        finally:
            lost = self._buffer.abort(
                StateUnavailableError("The StateStore closed before these writes were committed.")
            )
            if lost:
                self._failed_writes += lost
                logger.error("state store closed with %d writes not committed", lost)
            if self._owns_backend:
                await self._backend.aclose()

    def _check(self) -> None:
        if self._lifecycle is not RUNNING:
            self._check_running("read or write state")

    def unit(self, scope: str | None = None) -> Unit:
        """A new unit for one event's writes; ``scope`` (agent and event id) is needed for ``once=True``."""
        return Unit(scope)

    def decoder_for(self, tp: Any) -> msgspec.msgpack.Decoder[Any]:
        """The decoder for values of type ``tp`` (built once per type)."""
        return self.codec.decoder_for(tp)

    def _expiry(self, ttl_s: float | None) -> float | None:
        ttl = self._default_ttl_s if ttl_s is None else ttl_s
        if ttl is None:
            return None
        if ttl <= 0:
            raise ValueError(f"ttl_s must be greater than 0, got {ttl}.")
        return time.time() + ttl

    # -- reads -------------------------------------------------------------------------------------------------

    async def get(
        self,
        key: str,
        decoder: msgspec.msgpack.Decoder[Any] | None = None,
        default: Any = MISSING,
        *,
        fresh: bool = False,
    ) -> Any:
        """The value of ``key`` decoded (untyped, or with ``decoder``), or ``default`` (:data:`MISSING`).

        ``fresh`` skips the cache (this process's own buffered writes are still seen): for keys other processes
        write, when a read must not be up to ``state_cache_ttl_s`` old.
        """
        if self._lifecycle is not RUNNING:
            self._check()
        direct = self._direct
        if direct is not None:
            rec = direct.get_nowait(key)
            return default if rec is None else self.codec.load(key, rec.value, decoder)
        raw = await self._read(key, fresh)
        return default if raw is None else self.codec.decode(key, raw, decoder)

    async def _read(self, key: str, fresh: bool = False) -> bytes | None:
        seg = self._buffer.buffered(key)
        if seg is None:
            entry = None if fresh else self._cache.lookup(key)
            if entry is not None:
                return entry[0]
            raw, _ = await self._fetch(key)
            seg = self._buffer.buffered(key)  # a write may have arrived while the backend answered
            if seg is None:
                return raw
        return None if seg.expires_at is not None and seg.expires_at <= time.time() else seg.raw

    async def _fetch(self, key: str) -> tuple[bytes | None, int]:
        """Read ``key`` from the backend and cache it, unless a commit completed meanwhile."""
        epoch = self._epoch
        rec = await self._backend.get(key)
        if rec is None:
            raw, version, expires_at = None, 0, None
        else:
            raw, version, expires_at = self.codec.unpack(key, rec.value), rec.version, rec.expires_at
        if epoch == self._epoch and self._buffer.buffered(key) is None:
            self._cache.put(key, raw, version, expires_at, version)
        return raw, version

    def invalidate(self, keys: list[str] | None = None) -> None:
        """Forget cached values (all, or of ``keys``), e.g. when this process stops owning some keys."""
        if keys is None:
            self._cache.clear()
        else:
            for key in keys:
                self._cache.pop(key)
        self._epoch += 1

    # -- writes ------------------------------------------------------------------------------------------------

    async def set(
        self, key: str, value: Any, ttl_s: float | None = None, unit: Unit | None = None, once: bool = False
    ) -> None:
        """Write ``value`` under ``key`` (behind; durable when ``unit.committed()`` returns)."""
        if self._lifecycle is not RUNNING:
            self._check()
        raw = self.codec.encode(key, value)
        expires_at = None if ttl_s is None and self._default_ttl_s is None else self._expiry(ttl_s)
        if self._direct is not None:
            self._write_direct(self._direct, key, raw, expires_at, unit, once)
        else:
            await self._write(key, raw, expires_at, unit, once)

    async def delete(self, key: str, unit: Unit | None = None, once: bool = False) -> None:
        """Delete ``key`` (behind, like ``set``)."""
        if self._lifecycle is not RUNNING:
            self._check()
        if self._direct is not None:
            self._write_direct(self._direct, key, None, None, unit, once)
        else:
            await self._write(key, None, None, unit, once)

    def _write_direct(
        self,
        direct: MemoryBackend,
        key: str,
        raw: bytes | None,
        expires_at: float | None,
        unit: Unit | None,
        once: bool,
    ) -> None:
        """A write to the memory backend: applied at once, nothing buffered (no coroutine: it never waits)."""
        once_id = None if not once else _once_id(key, unit)
        stored = None if raw is None else self.codec.pack(raw)
        [result] = direct.commit_nowait([Write(key=key, value=stored, expires_at=expires_at, once_id=once_id)])
        self._buffer.writes += 1
        if unit is not None:
            unit.writes += 1
        if result.status == DUPLICATE:
            self._duplicates += 1

    async def _write(
        self, key: str, raw: bytes | None, expires_at: float | None, unit: Unit | None, once: bool
    ) -> None:
        once_id = None if not once else _once_id(key, unit)
        if once_id is not None and await self._backend.is_applied(once_id):
            self._duplicates += 1  # a redelivered event: its write is already in; nothing to buffer
            return
        await self._make_room()
        self._buffer.append(key, Seg(raw, expires_at, once_id), unit)

    async def _make_room(self) -> None:
        await self._buffer.wait_room()
        if self._lifecycle is not RUNNING:
            self._check()

    async def update(
        self,
        key: str,
        fn: Callable[[Any], Any],
        decoder: msgspec.msgpack.Decoder[Any] | None = None,
        default: Any = None,
        ttl_s: float | None = None,
        unit: Unit | None = None,
        once: bool = False,
    ) -> Any:
        """Read-modify-write ``key`` with a version check; return the value written.

        ``fn`` gets the current value (``default`` when there is none) and returns the new one (it may be a
        coroutine function). Normally the new value is committed at once, on condition that the key still has
        the version read; on a conflict it is read again from the backend and ``fn`` applied again, at most
        ``max_update_attempts`` times, then StateConflictError. When this store still buffers a write of the
        key, the update reads that write and goes into the buffer behind it: a buffered write replaces whatever
        the backend holds, so only another write of the key by this store while ``fn`` runs is a conflict.
        With ``once=True``, an event whose update was already applied gets the stored value back.
        """
        if self._lifecycle is not RUNNING:
            self._check()
        once_id = None if not once else _once_id(key, unit)
        self._updates += 1
        buffer = self._buffer
        codec = self.codec
        fresh = False
        direct = self._direct
        attempts = self.config.max_update_attempts
        for _ in range(attempts):
            seg = None if direct is not None else buffer.buffered(key)
            if seg is not None and once_id is not None:
                if await self._backend.is_applied(once_id):
                    self._duplicates += 1
                    return await self.get(key, decoder, default=default)
                seg = buffer.buffered(key)  # the check let other tasks run
            if seg is not None:
                live = seg.raw is not None and (seg.expires_at is None or seg.expires_at > time.time())
                current = codec.decode(key, seg.raw, decoder) if live and seg.raw is not None else default
                new = fn(current)
                if type(new) not in _PLAIN and _is_awaitable(new):
                    new = await new
                new_raw = codec.encode(key, new)
                await self._make_room()
                if buffer.buffered(key) is seg:
                    buffer.append(key, Seg(new_raw, self._expiry(ttl_s), once_id), unit)
                    return new
                self._conflicts += 1  # another write of this key came in while fn ran
                continue
            # The memory backend answers at once: no coroutine for its read and its commit.
            if direct is not None:
                rec = direct.get_nowait(key)
                version = 0 if rec is None else rec.version
                current = default if rec is None else codec.load(key, rec.value, decoder)
            else:
                raw, version = await self._versioned(key, fresh)
                current = default if raw is None else codec.decode(key, raw, decoder)
            new = fn(current)
            if type(new) not in _PLAIN and _is_awaitable(new):
                new = await new
            new_raw = codec.encode(key, new)
            if direct is None and buffer.buffered(key) is not None:
                self._conflicts += 1  # a write of this store came in while fn ran: update behind it
                continue
            expires_at = None if ttl_s is None and self._default_ttl_s is None else self._expiry(ttl_s)
            write = Write(
                key=key, value=codec.pack(new_raw), expires_at=expires_at, expected_version=version, once_id=once_id
            )
            result = direct.commit_nowait([write])[0] if direct is not None else await self._commit_one(write)
            if result.status == APPLIED:
                if unit is not None:
                    unit.writes += 1
                if direct is None:
                    self._cache.put(key, new_raw, result.version, expires_at, result.version)
                return new
            self.invalidate([key])
            if result.status == DUPLICATE:
                self._duplicates += 1
                return await self.get(key, decoder, default=default)
            self._conflicts += 1
            fresh = True
        raise StateConflictError(
            f"update of state key {show_key(key)} lost to other writers {attempts} times in a row "
            "(max_update_attempts of [memory]); the key is written by many processes at once: spread the writes "
            "over several keys, or raise max_update_attempts.",
            key=key,
            attempts=attempts,
        )

    async def _versioned(self, key: str, fresh: bool) -> tuple[bytes | None, int]:
        if not fresh:
            entry = self._cache.lookup(key)
            if entry is not None:
                return entry[0], entry[1]
        return await self._fetch(key)

    async def _commit_one(self, write: Write) -> WriteResult:
        [result] = await self._backend.commit([write])
        self._epoch += 1
        return result

    async def flush(self) -> None:
        """Commit everything buffered now; raise StateUnavailableError if that commit failed."""
        self._check()
        if not await self._buffer.wait_flushed():
            raise StateUnavailableError(
                "The state flush failed, so the buffered writes were not committed (their units report it); see "
                "the log for the backend's error."
            )

    # -- the flusher -------------------------------------------------------------------------------------------

    def _wake(self) -> None:
        fut = self._wakeup
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def _sleep_until(self, deadline: float) -> None:
        loop = self._loop
        assert loop is not None
        fut: asyncio.Future[None] = loop.create_future()
        self._wakeup = fut
        timer = loop.call_at(deadline, _resolve, fut)
        try:
            await fut
        finally:
            timer.cancel()
            self._wakeup = None

    async def _run(self) -> None:
        loop = self._loop
        assert loop is not None
        purge_every = self.config.purge_interval_s
        next_purge = loop.time() + purge_every
        self._buffer.last_flush_at = loop.time()
        while True:
            now = loop.time()
            due = self._buffer.due_in(now)
            if due is not None:
                if due > 0 and self._lifecycle is State.RUNNING:
                    await self._sleep_until(min(now + due, next_purge))
                else:
                    await self._flush(self._buffer.take(now))
            elif self._lifecycle is not RUNNING:
                return
            elif now >= next_purge:
                await self._purge()
                next_purge = loop.time() + purge_every
            else:
                await self._sleep_until(next_purge)

    async def _purge(self) -> None:
        try:
            await self._backend.purge_expired()
        except Exception:
            logger.warning("purging expired state failed; trying again later", exc_info=True)

    async def _flush(self, batch: Batch) -> None:
        pack = self.codec.pack
        error: StateError | None = None
        t0 = time.perf_counter()
        try:
            writes = [
                Write(key=key, value=None if s.raw is None else pack(s.raw), expires_at=s.expires_at, once_id=s.once_id)
                for key, segs in batch.writes.items()
                for s in segs
            ]
            results = await self._backend.commit(writes)
        except Exception as exc:
            error = (
                exc
                if isinstance(exc, StateError)
                else StateUnavailableError(f"The state flush failed ({type(exc).__name__}: {exc}).")
            )
            self._flush_failures += 1
            self._failed_writes += batch.count
            for key in batch.writes:
                self._cache.pop(key)
            logger.error("state flush of %d writes failed; their events are not acknowledged: %s", batch.count, error)
        except BaseException:  # cancelled mid-commit: its outcome is unknown, so nobody may count on it
            error = StateUnavailableError("The state flush was cancelled before its commit was confirmed.")
            self._failed_writes += batch.count
            raise
        else:
            self._flushes += 1
            self._flushed += batch.count
            self._remember(batch, results)
        finally:
            self._epoch += 1
            self._buffer.finish(batch, error)
            self.flush_durations.observe(time.perf_counter() - t0)
            if _tracing.TRACER is not None:  # a span per flush ([tracing])
                _tracing.state_flush(self._backend.name, batch.count, t0, error)

    def _remember(self, batch: Batch, results: list[WriteResult]) -> None:
        """Cache what a flush committed (in order, so the last write of a key is what stays)."""
        i = 0
        for key, segs in batch.writes.items():
            for s in segs:
                r = results[i]
                i += 1
                if r.status == APPLIED:
                    self._cache.put(key, s.raw, 0 if s.raw is None else r.version, s.expires_at, r.version)
                else:  # a duplicate found only at commit (a concurrent redelivery): read it again next time
                    self._duplicates += 1
                    self._cache.pop(key)

    # -- statistics --------------------------------------------------------------------------------------------

    def components(self) -> list[ComponentSample]:
        """The store as a row of the profile report: its flushes (one commit of many events' writes each), their
        durations and failures."""
        settings = {"cache": "[memory] state_cache_size"}
        if self.config.backend != "memory":
            settings["timeout"] = "[memory] operation_timeout_s"
        return [
            ComponentSample(
                kind="state",
                name=f"{self._backend.name} store",
                calls=self._flushes + self._flush_failures,
                errors=self._flush_failures,
                duration=HistSample.of(self.flush_durations),
                concurrency=1,
                in_flight=len(self._buffer.inflight),
                cache_hits=self._cache.hits,
                cache_lookups=self._cache.hits + self._cache.misses,
                settings=settings,
            )
        ]

    def statistics(self) -> StoreStatistics:
        b = self._buffer
        return StoreStatistics(
            backend=self._backend.name,
            state=self.state.value,
            cached=len(self._cache),
            cache_size=self._cache.max_entries,
            cache_hits=self._cache.hits,
            cache_misses=self._cache.misses,
            pending=b.npending,
            inflight=sum(map(len, b.inflight.values())),
            writes=b.writes,
            coalesced=b.coalesced,
            flushes=self._flushes,
            flushed_writes=self._flushed,
            flush_failures=self._flush_failures,
            failed_writes=self._failed_writes,
            updates=self._updates,
            update_conflicts=self._conflicts,
            duplicates=self._duplicates,
            compressed=self.codec.compressed,
            backend_stats=self._backend.statistics(),
        )


def _once_id(key: str, unit: Unit | None) -> str:
    if unit is None:
        raise StateError(
            "once=True needs the event's unit; use ctx.state inside a handler, or pass unit=store.unit(...).",
            key=key,
        )
    return unit.once_id(key)


#: Types an update's ``fn`` nearly always returns, known not to be awaitable: checked before _is_awaitable,
#: whose attribute lookup costs a fifth of a memory update.
_PLAIN: Final = frozenset((int, float, str, bytes, bool, list, dict, tuple, type(None)))


def _is_awaitable(value: Any) -> bool:
    """``inspect.isawaitable``, without its abstract-base-class check for the plain values an update's ``fn``
    returns nearly always (that check costs more than the rest of a memory update's bookkeeping)."""
    return hasattr(type(value), "__await__") or (type(value) is GeneratorType and inspect.isawaitable(value))
