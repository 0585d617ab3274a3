"""The state store: an in-process cache and a write-behind buffer in front of a backend, and the units that
tell a worker when an event's writes are durable.

* **Values** are encoded with msgspec's MessagePack encoder (built once); a value whose encoding is over
  ``max_state_bytes`` raises :class:`~agentflow.errors.StateTooLargeError` and nothing is written. Above
  ``compression_threshold_bytes`` (with ``enable_state_compression``) the stored bytes are zlib-compressed;
  a one-byte header says which, so reads are transparent and the setting can change between runs.
* **Write-behind.** ``set`` and ``delete`` go to a buffer, coalesced per key (the last write wins; a
  ``once=True`` write keeps its own place, so its once-id is checked with exactly its value). The buffer is
  committed in one backend transaction; flushes start at most every ``flush_interval_ms``, so a write waits
  at most that long for its flush to begin (none after a quiet spell: the first write flushes at once, the
  writes that arrive while it commits go together in the next). The buffer is also flushed at once when it
  holds ``max_pending_writes`` (writers then wait: backpressure), on :meth:`StateStore.flush` and on close.
  Reads see the buffer first (read-your-writes).
* **Units and durability.** Every write belongs to a :class:`Unit` — one event's writes. ``await
  unit.committed()`` returns only once every flush holding the unit's writes is committed, and raises
  :class:`~agentflow.errors.StateUnavailableError` if one failed; a worker acknowledges the event only after it.
* **update** is read-modify-write with a version check, committed at once: read the value and its version
  (cache, else backend), apply ``fn``, commit conditionally; on a conflict re-read from the backend and try
  again, at most ``max_update_attempts`` times, then :class:`~agentflow.errors.StateConflictError`. A key this
  store still buffers a write of is updated in the buffer, behind that write (see :meth:`StateStore.update`).
* **Effectively once.** ``once=True`` records a once-id derived from the unit's scope (agent and event id),
  the key and the write's position in the attempt, in the same transaction as the write; a redelivered event
  that makes the same write finds its id and is skipped.
* **The cache** (``state_cache_size`` entries, each trusted for ``state_cache_ttl_s``) holds committed values
  with their versions. It is coherent for the keys only this process writes (an event key's state, owned by the
  worker its partition is assigned to); a key other processes write may read stale for up to
  ``state_cache_ttl_s``, and ``update`` never trusts it past a conflict.

The memory backend takes writes synchronously: there the store applies each write at once (no buffer, no
cache in front of a dict) and units are committed as soon as their writes return.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import os
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Final

import msgspec

from ..errors import (
    LifecycleError,
    StateConflictError,
    StateDecodeError,
    StateEncodeError,
    StateError,
    StateTooLargeError,
    StateUnavailableError,
)
from .base import APPLIED, DUPLICATE, BackendStatistics, Lifecycle, StateBackend, Write, WriteResult
from .config import StateConfig
from .memory import MemoryBackend

__all__ = ["MISSING", "StateStore", "StoreStatistics", "Unit", "create_backend"]

logger = logging.getLogger(__name__)

#: What :meth:`StateStore.get` returns for a key without a value (None is a value one can store).
MISSING: Final = msgspec.UNSET

_RAW: Final = b"\x00"
_ZLIB: Final = b"\x01"
_ZLIB_LEVEL: Final = 1  # fast; state is written far more often than it is worth squeezing

# A cache entry: (raw msgpack or None for "absent", version (0 when absent), expiry (Unix time or None),
# order (the commit version that produced it: a slower reply never overwrites a newer entry), trusted until
# (monotonic)).
_Entry = tuple[bytes | None, int, float | None, int, float]


def create_backend(config: StateConfig, *, env: Mapping[str, str] | None = None) -> StateBackend:
    """Build (not start) the backend ``config.backend`` names; the Redis password is read from ``env``
    (``os.environ`` when None) under the name ``password_env`` gives. redis-py is imported only here."""
    if config.backend == "sqlite":
        from .sqlite import SQLiteBackend

        return SQLiteBackend(
            config.path,
            synchronous=config.sqlite_synchronous,
            busy_timeout_s=config.operation_timeout_s,
            once_ttl_s=config.once_ttl_s,
        )
    if config.backend == "redis":
        from ..errors import ConfigError
        from .redis import RedisBackend

        password = None
        if config.password_env:
            password = (os.environ if env is None else env).get(config.password_env)
            if not password:
                raise ConfigError(
                    f"The environment variable {config.password_env} (password_env of [memory]) is not set; export "
                    'the Redis password in it, or set password_env = "" for a server without a password.',
                    key="memory.password_env",
                )
        return RedisBackend(
            config.url,
            password=password,
            key_prefix=config.key_prefix,
            max_connections=config.max_connections,
            timeout_s=config.operation_timeout_s,
            once_ttl_s=config.once_ttl_s,
        )
    return MemoryBackend(once_ttl_s=config.once_ttl_s)


class _Seg:
    """One buffered write: the raw msgpack (None deletes), its expiry and its once-id."""

    __slots__ = ("expires_at", "once_id", "raw")

    def __init__(self, raw: bytes | None, expires_at: float | None, once_id: str | None) -> None:
        self.raw = raw
        self.expires_at = expires_at
        self.once_id = once_id


class Unit:
    """The state writes of one event (all its attempts). Made by :meth:`StateStore.unit`; a worker passes it
    to the event's state handles and acknowledges the event only after ``await unit.committed()``::

        unit = store.unit(scope=f"{agent}:{event.id}")
        unit.begin_attempt()                       # before each attempt: once-ids restart
        await handler(event, StateHandle(store, agent, event.key, unit))
        await unit.committed()                     # raises StateUnavailableError if a flush failed
        subscription.ack(event)
    """

    __slots__ = ("_error", "_gen", "_once_seq", "_outstanding", "_waiter", "scope", "writes")

    def __init__(self, scope: str | None = None) -> None:
        self.scope = scope
        self.writes = 0
        self._gen = -1
        self._outstanding = 0
        self._error: StateError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._once_seq: dict[str, int] | None = None

    def __repr__(self) -> str:
        status = "failed" if self._error is not None else "pending" if self._outstanding else "committed"
        return f"<Unit scope={self.scope!r} writes={self.writes} {status}>"

    @property
    def done(self) -> bool:
        """True when nothing of this unit waits to be committed (it may have failed: see ``committed``)."""
        return self._outstanding == 0

    def begin_attempt(self) -> None:
        """Start a new attempt of the event: once-ids are numbered from the start again, so a retried
        handler that repeats a ``once=True`` write makes the same id and is recognised."""
        self._once_seq = None

    def once_id(self, key: str) -> str:
        """The once-id of the next ``once=True`` write to ``key`` in this attempt: scope, key, position."""
        if self.scope is None:
            raise StateError(
                "once=True needs a unit with a scope (the agent and the event id); use ctx.state inside a handler, "
                "or make the unit with store.unit(scope=...).",
                key=key,
            )
        seq = self._once_seq
        if seq is None:
            seq = self._once_seq = {}
        n = seq.get(key, 0)
        seq[key] = n + 1
        # Hashed to a fixed size: keys and scopes are the user's and may be long.
        return hashlib.blake2b(f"{self.scope}\x1f{key}\x1f{n}".encode(), digest_size=16).hexdigest()

    async def committed(self) -> None:
        """Return once every write of this unit is committed; raise the StateError of a failed flush."""
        if self._error is not None:
            raise self._error
        if self._outstanding == 0:
            return
        waiter = self._waiter
        if waiter is None or waiter.done():
            waiter = self._waiter = asyncio.get_running_loop().create_future()
        await waiter
        if self._error is not None:
            raise self._error

    def _joined(self) -> None:
        self._outstanding += 1

    def _settle(self, error: StateError | None) -> None:
        self._outstanding -= 1
        if error is not None and self._error is None:
            self._error = error
        if (self._outstanding == 0 or error is not None) and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class StoreStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Live counts of a state store and its backend.

    ``writes`` counts ``set``/``delete`` calls, ``coalesced`` those absorbed by a later write to the same key
    before a flush, ``flushed_writes`` the writes the flushes committed; ``duplicates`` counts once-writes
    skipped because their event's write was already applied.
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


class StateStore:
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
        self._backend = create_backend(cfg, env=env) if backend is None else backend
        self._direct = self._backend if isinstance(self._backend, MemoryBackend) else None
        self._state = Lifecycle.CREATED
        self._encoder = msgspec.msgpack.Encoder()
        self._any = msgspec.msgpack.Decoder()
        self._decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}
        self._max_bytes = cfg.max_state_bytes
        self._default_ttl_s = cfg.default_ttl_s
        self._compress_from = cfg.compression_threshold_bytes if cfg.enable_state_compression else None
        self._interval_s = cfg.flush_interval_ms / 1000
        self._max_pending = cfg.max_pending_writes
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._cache_max = cfg.state_cache_size
        self._cache_ttl_s = cfg.state_cache_ttl_s
        # The write-behind buffer (generation ``_gen``) and the batch being committed (``_inflight_gen``).
        self._pending: dict[str, list[_Seg]] = {}
        self._npending = 0
        self._pending_units: list[Unit] = []
        self._gen = 0
        self._last_flush_at = 0.0  # loop time the last flush started (or the store started)
        self._urgent = False
        self._inflight: dict[str, list[_Seg]] = {}
        self._inflight_gen: int | None = None
        self._done_gen = -1
        self._gen_waiters: dict[int, list[asyncio.Future[bool]]] = {}
        self._room: list[asyncio.Future[None]] = []
        self._wakeup: asyncio.Future[None] | None = None
        self._epoch = 0  # bumped by every commit and invalidation: a read that spans one is not cached
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._closer: asyncio.Task[None] | None = None
        self._hits = self._misses = self._writes = self._coalesced = 0
        self._flushes = self._flushed = self._flush_failures = self._failed_writes = 0
        self._updates = self._conflicts = self._duplicates = self._compressed = 0

    def __repr__(self) -> str:
        return (
            f"<StateStore backend={self._backend.name} state={self._state.value} cached={len(self._cache)}/"
            f"{self._cache_max} pending={self._npending} inflight={len(self._inflight)} flushes={self._flushes} "
            f"writes={self._writes} conflicts={self._conflicts} failed_writes={self._failed_writes}>"
        )

    @property
    def backend(self) -> StateBackend:
        return self._backend

    @property
    def state(self) -> Lifecycle:
        return self._state

    # -- lifecycle ---------------------------------------------------------------------------------------------

    async def __aenter__(self) -> StateStore:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Start the backend (when the store made it) and the flusher; a store starts once."""
        if self._state is not Lifecycle.CREATED:
            raise LifecycleError(f"A StateStore starts once; it is {self._state.value}. Create a new one instead.")
        self._state = Lifecycle.RUNNING
        self._loop = asyncio.get_running_loop()
        try:
            if self._owns_backend:
                await self._backend.start()
            elif self._backend.state is not Lifecycle.RUNNING:
                raise LifecycleError(
                    f"The backend passed to the StateStore is {self._backend.state.value}; start it first (the "
                    "store closes only backends it made itself)."
                )
            self._stack = contextlib.AsyncExitStack()
            tg = await self._stack.enter_async_context(asyncio.TaskGroup())
            tg.create_task(self._run(), name=f"agentflow-state-flush-{self._backend.name}")
        except BaseException:
            await self._shutdown()
            raise

    async def aclose(self) -> None:
        """Flush what is buffered, stop the flusher, close the backend the store made; idempotent, and the
        cleanup finishes even when the caller is cancelled."""
        if self._state is Lifecycle.CLOSED:
            return
        if self._closer is None:
            self._closer = asyncio.get_running_loop().create_task(self._shutdown(), name="agentflow-state-close")
        await asyncio.shield(self._closer)

    async def _shutdown(self) -> None:
        if self._state is not Lifecycle.CLOSED:
            self._state = Lifecycle.CLOSING
        self._wake()
        try:
            if self._stack is not None:
                await self._stack.aclose()  # the flusher commits what is buffered, then returns
        finally:
            error = StateUnavailableError("The StateStore closed before these writes were committed.")
            for segs in (self._pending, self._inflight):
                if segs:
                    self._failed_writes += sum(map(len, segs.values()))
                    logger.error("state store closed with %d uncommitted keys", len(segs))
            for unit in self._pending_units:
                unit._settle(error)
            self._pending.clear()
            self._pending_units = []
            for waiters in self._gen_waiters.values():
                for fut in waiters:
                    if not fut.done():
                        fut.set_result(False)
            self._gen_waiters.clear()
            self._release_room()
            try:
                if self._owns_backend:
                    await self._backend.aclose()
            finally:
                self._state = Lifecycle.CLOSED

    def _check(self) -> None:
        if self._state is not Lifecycle.RUNNING:
            raise LifecycleError(
                f"The StateStore is {self._state.value}; read and write state only while it runs (between start() "
                "and aclose())."
            )

    def unit(self, scope: str | None = None) -> Unit:
        """A new unit for one event's writes; ``scope`` (agent and event id) is needed for ``once=True``."""
        return Unit(scope)

    # -- codec -------------------------------------------------------------------------------------------------

    def decoder_for(self, tp: Any) -> msgspec.msgpack.Decoder[Any]:
        """The decoder for values of type ``tp`` (built once per type)."""
        dec = self._decoders.get(tp)
        if dec is None:
            dec = self._decoders[tp] = msgspec.msgpack.Decoder(tp)
        return dec

    def encode(self, key: str, value: Any) -> bytes:
        """``value`` as the raw msgpack the store keeps; raises StateEncodeError or StateTooLargeError."""
        try:
            raw = self._encoder.encode(value)
        except (TypeError, msgspec.EncodeError) as exc:
            raise StateEncodeError(
                f"The state value for key {_show(key)} cannot be encoded ({exc}); store dicts, lists, strings, "
                "numbers, msgspec Structs or other types msgspec supports.",
                key=key,
            ) from exc
        if len(raw) > self._max_bytes:
            raise StateTooLargeError(
                f"The state value for key {_show(key)} encodes to {len(raw)} bytes, over max_state_bytes "
                f"({self._max_bytes}) of [memory]; store less under one key (split it, or keep large data elsewhere "
                "and store a reference to it), or raise max_state_bytes.",
                key=key,
                size_bytes=len(raw),
                limit_bytes=self._max_bytes,
            )
        return raw

    def decode(self, key: str, raw: bytes, decoder: msgspec.msgpack.Decoder[Any] | None = None) -> Any:
        """Decode raw msgpack (with ``decoder``, or untyped); raises StateDecodeError."""
        try:
            return (decoder or self._any).decode(raw)
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
            dec = decoder or self._any
            raise StateDecodeError(
                f"The state value of key {_show(key)} does not decode as {_type_name(dec.type)} ({exc}); read it "
                "with the type it was written with, or delete the key.",
                key=key,
            ) from exc

    def _pack(self, raw: bytes) -> bytes:
        limit = self._compress_from
        if limit is not None and len(raw) >= limit:
            packed = zlib.compress(raw, _ZLIB_LEVEL)
            if len(packed) < len(raw):
                self._compressed += 1
                return _ZLIB + packed
        return _RAW + raw

    def _unpack(self, key: str, stored: bytes) -> bytes:
        head = stored[:1]
        if head == _RAW:
            return stored[1:]
        if head == _ZLIB:
            # Bounded: bytes written by another process (a shared Redis) must not inflate past the limit.
            inflater = zlib.decompressobj()
            try:
                raw = inflater.decompress(stored[1:], self._max_bytes + 1)
            except zlib.error as exc:
                raise StateDecodeError(
                    f"The stored state of key {_show(key)} is corrupt ({exc}); delete the key.", key=key
                ) from exc
            if len(raw) > self._max_bytes or inflater.unconsumed_tail:
                raise StateDecodeError(
                    f"The stored state of key {_show(key)} inflates to more than max_state_bytes "
                    f"({self._max_bytes}); raise max_state_bytes to read it, or delete the key.",
                    key=key,
                )
            return raw
        raise StateDecodeError(
            f"The stored state of key {_show(key)} has an unknown format (it was not written by agentflow's "
            "state store); delete the key or use another key_prefix.",
            key=key,
        )

    def _expiry(self, ttl_s: float | None) -> float | None:
        ttl = self._default_ttl_s if ttl_s is None else ttl_s
        if ttl is None:
            return None
        if ttl <= 0:
            raise ValueError(f"ttl_s must be greater than 0, got {ttl}.")
        return time.time() + ttl

    # -- reads -------------------------------------------------------------------------------------------------

    async def get(self, key: str, decoder: msgspec.msgpack.Decoder[Any] | None = None) -> Any:
        """The value of ``key`` decoded (untyped, or with ``decoder``), or :data:`MISSING`."""
        if self._state is not Lifecycle.RUNNING:
            self._check()
        direct = self._direct
        if direct is not None:
            rec = direct.get_nowait(key)
            if rec is None:
                return MISSING
            raw: bytes | None = self._unpack(key, rec.value)
        else:
            raw = await self._read(key)
        if raw is None:
            return MISSING
        try:
            return (decoder or self._any).decode(raw)
        except msgspec.DecodeError:
            return self.decode(key, raw, decoder)  # the error path, with its sentence

    def _buffered(self, key: str) -> _Seg | None:
        segs = self._pending.get(key) or self._inflight.get(key)
        return None if segs is None else segs[-1]

    async def _read(self, key: str) -> bytes | None:
        seg = self._buffered(key)
        if seg is not None:
            if seg.expires_at is not None and seg.expires_at <= time.time():
                return None
            return seg.raw
        entry = self._cache.get(key)
        if entry is not None:
            if entry[4] > time.monotonic() and (entry[2] is None or entry[2] > time.time()):
                self._cache.move_to_end(key)
                self._hits += 1
                return entry[0]
            del self._cache[key]
        self._misses += 1
        raw, _ = await self._fetch(key)
        seg = self._buffered(key)  # a write may have arrived while the backend answered
        if seg is not None:
            return None if seg.expires_at is not None and seg.expires_at <= time.time() else seg.raw
        return raw

    async def _fetch(self, key: str) -> tuple[bytes | None, int]:
        """Read ``key`` from the backend and cache it, unless a commit completed meanwhile."""
        epoch = self._epoch
        rec = await self._backend.get(key)
        if rec is None:
            raw, version, expires_at = None, 0, None
        else:
            raw, version, expires_at = self._unpack(key, rec.value), rec.version, rec.expires_at
        if epoch == self._epoch and key not in self._pending and key not in self._inflight:
            self._cache_put(key, raw, version, expires_at, version)
        return raw, version

    def _cache_put(self, key: str, raw: bytes | None, version: int, expires_at: float | None, order: int) -> None:
        cache = self._cache
        old = cache.get(key)
        if old is not None:
            if old[3] > order:
                return
            del cache[key]
        elif len(cache) >= self._cache_max:
            cache.popitem(last=False)
        cache[key] = (raw, version, expires_at, order, time.monotonic() + self._cache_ttl_s)

    def invalidate(self, keys: list[str] | None = None) -> None:
        """Forget cached values (all, or of ``keys``), e.g. when this process stops owning some keys."""
        if keys is None:
            self._cache.clear()
        else:
            for key in keys:
                self._cache.pop(key, None)
        self._epoch += 1

    # -- writes ------------------------------------------------------------------------------------------------

    async def set(
        self, key: str, value: Any, *, ttl_s: float | None = None, unit: Unit | None = None, once: bool = False
    ) -> None:
        """Write ``value`` under ``key`` (behind; durable when ``unit.committed()`` returns)."""
        if self._state is not Lifecycle.RUNNING:
            self._check()
        raw = self.encode(key, value)
        await self._write(key, raw, self._expiry(ttl_s), unit, once)

    async def delete(self, key: str, *, unit: Unit | None = None, once: bool = False) -> None:
        """Delete ``key`` (behind, like ``set``)."""
        if self._state is not Lifecycle.RUNNING:
            self._check()
        await self._write(key, None, None, unit, once)

    async def _write(
        self, key: str, raw: bytes | None, expires_at: float | None, unit: Unit | None, once: bool
    ) -> None:
        once_id = None if not once else self._once_id(key, unit)
        direct = self._direct
        if direct is not None:
            stored = None if raw is None else self._pack(raw)
            [result] = direct.commit_nowait([Write(key=key, value=stored, expires_at=expires_at, once_id=once_id)])
            self._writes += 1
            if unit is not None:
                unit.writes += 1
            if result.status == DUPLICATE:
                self._duplicates += 1
            return
        if once_id is not None and await self._backend.is_applied(once_id):
            self._duplicates += 1  # a redelivered event: its write is already in; nothing to buffer
            return
        await self._make_room()
        self._append(key, _Seg(raw, expires_at, once_id), unit)

    @staticmethod
    def _once_id(key: str, unit: Unit | None) -> str:
        if unit is None:
            raise StateError(
                "once=True needs the event's unit; use ctx.state inside a handler, or pass unit=store.unit(...).",
                key=key,
            )
        return unit.once_id(key)

    async def _make_room(self) -> None:
        while self._npending >= self._max_pending:
            await self._wait_room()
        if self._state is not Lifecycle.RUNNING:
            self._check()

    def _append(self, key: str, seg: _Seg, unit: Unit | None) -> None:
        """Put ``seg`` in the buffer (coalescing with the key's last write unless either is a once-write) and
        make ``unit`` wait for the flush of this generation. Synchronous: callers check what they read first."""
        segs = self._pending.get(key)
        if segs is None:
            if not self._pending:
                self._wake()
            self._pending[key] = [seg]
            self._npending += 1
        elif seg.once_id is None and segs[-1].once_id is None:
            segs[-1] = seg
            self._coalesced += 1
        else:
            segs.append(seg)
            self._npending += 1
        self._writes += 1
        if unit is not None:
            unit.writes += 1
            if unit._gen != self._gen:
                unit._gen = self._gen
                unit._joined()
                self._pending_units.append(unit)
        if self._npending >= self._max_pending:
            self._urgent = True
            self._wake()

    async def _wait_room(self) -> None:
        self._urgent = True
        self._wake()
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        self._room.append(fut)
        await fut
        self._check()

    def _release_room(self) -> None:
        room, self._room = self._room, []
        for fut in room:
            _resolve(fut)

    async def update(
        self,
        key: str,
        fn: Callable[[Any], Any],
        *,
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
        ``max_update_attempts`` times. When this store still buffers a write of the key, the update reads
        that write and goes into the buffer behind it (a buffered write replaces whatever the backend holds,
        so there is nothing to check there; only another update of this process in between is a conflict).
        With ``once=True``, an event whose update was already applied gets the stored value back.
        """
        if self._state is not Lifecycle.RUNNING:
            self._check()
        once_id = None if not once else self._once_id(key, unit)
        self._updates += 1
        fresh = False
        attempts = self.config.max_update_attempts
        for _ in range(attempts):
            seg = None if self._direct is not None else self._buffered(key)
            if seg is not None:
                if once_id is not None and await self._backend.is_applied(once_id):
                    self._duplicates += 1
                    return await self._current(key, decoder, default)
                seg = self._buffered(key)  # the check above may have let a flush run
            if seg is not None:
                live = seg.raw is not None and (seg.expires_at is None or seg.expires_at > time.time())
                new = await _call(fn, self.decode(key, seg.raw, decoder) if live and seg.raw is not None else default)
                new_raw = self.encode(key, new)
                await self._make_room()
                if self._buffered(key) is seg:
                    self._append(key, _Seg(new_raw, self._expiry(ttl_s), once_id), unit)
                    return new
                self._conflicts += 1  # another write of this key came in while fn ran
                continue
            raw, version = await self._versioned(key, fresh)
            new = await _call(fn, default if raw is None else self.decode(key, raw, decoder))
            new_raw = self.encode(key, new)
            if self._direct is None and self._buffered(key) is not None:
                self._conflicts += 1  # a write of this process came in while fn ran: update behind it
                continue
            expires_at = self._expiry(ttl_s)
            write = Write(
                key=key, value=self._pack(new_raw), expires_at=expires_at, expected_version=version, once_id=once_id
            )
            result = await self._commit_one(write)
            if result.status == APPLIED:
                if unit is not None:
                    unit.writes += 1
                if self._direct is None:
                    self._cache_put(key, new_raw, result.version, expires_at, result.version)
                return new
            self.invalidate([key])
            if result.status == DUPLICATE:
                self._duplicates += 1
                return await self._current(key, decoder, default)
            self._conflicts += 1
            fresh = True
        raise StateConflictError(
            f"update of state key {_show(key)} lost to other writers {attempts} times in a row "
            "(max_update_attempts of [memory]); the key is written by many processes at once: spread the writes "
            "over several keys, or raise max_update_attempts.",
            key=key,
            attempts=attempts,
        )

    async def _current(self, key: str, decoder: msgspec.msgpack.Decoder[Any] | None, default: Any) -> Any:
        value = await self.get(key, decoder)
        return default if value is MISSING else value

    async def _versioned(self, key: str, fresh: bool) -> tuple[bytes | None, int]:
        direct = self._direct
        if direct is not None:
            rec = direct.get_nowait(key)
            return (None, 0) if rec is None else (self._unpack(key, rec.value), rec.version)
        if not fresh:
            entry = self._cache.get(key)
            if entry is not None and entry[4] > time.monotonic() and (entry[2] is None or entry[2] > time.time()):
                self._hits += 1
                return entry[0], entry[1]
        self._misses += 1
        return await self._fetch(key)

    async def _commit_one(self, write: Write) -> WriteResult:
        direct = self._direct
        if direct is not None:
            return direct.commit_nowait([write])[0]
        [result] = await self._backend.commit([write])
        self._epoch += 1
        return result

    async def _wait_gen(self, gen: int) -> bool:
        if gen <= self._done_gen:
            return True
        assert self._loop is not None
        fut: asyncio.Future[bool] = self._loop.create_future()
        self._gen_waiters.setdefault(gen, []).append(fut)
        self._urgent = True
        self._wake()
        return await fut

    async def flush(self) -> None:
        """Commit everything buffered now; raise StateUnavailableError if that commit failed."""
        self._check()
        if self._pending:
            gen: int | None = self._gen
        else:
            gen = self._inflight_gen
        if gen is not None and not await self._wait_gen(gen):
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
        self._last_flush_at = loop.time()
        while True:
            now = loop.time()
            if self._pending:
                due = self._last_flush_at + self._interval_s
                if not self._urgent and self._state is Lifecycle.RUNNING and due > now:
                    await self._sleep_until(min(due, next_purge))
                else:
                    await self._flush_batch()
            elif self._state is not Lifecycle.RUNNING:
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

    async def _flush_batch(self) -> None:
        batch, gen, units = self._pending, self._gen, self._pending_units
        self._pending, self._npending, self._pending_units = {}, 0, []
        self._gen = gen + 1
        self._urgent = False
        assert self._loop is not None
        self._last_flush_at = self._loop.time()
        self._inflight, self._inflight_gen = batch, gen
        self._release_room()
        count = sum(map(len, batch.values()))
        error: StateError | None = None
        try:
            writes = [
                Write(
                    key=key,
                    value=None if s.raw is None else self._pack(s.raw),
                    expires_at=s.expires_at,
                    once_id=s.once_id,
                )
                for key, segs in batch.items()
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
            self._failed_writes += count
            for key in batch:
                self._cache.pop(key, None)
            logger.error("state flush of %d writes failed; their events are not acknowledged: %s", count, error)
        except BaseException:  # cancelled mid-commit: its outcome is unknown, so nobody may count on it
            error = StateUnavailableError("The state flush was cancelled before its commit was confirmed.")
            self._failed_writes += count
            raise
        else:
            self._flushes += 1
            self._flushed += count
            i = 0
            for key, segs in batch.items():
                for s in segs:
                    r = results[i]
                    i += 1
                    if r.status == APPLIED:
                        self._cache_put(key, s.raw, 0 if s.raw is None else r.version, s.expires_at, r.version)
                    else:  # a duplicate found only at commit (a concurrent redelivery): re-read next time
                        self._duplicates += 1
                        self._cache.pop(key, None)
        finally:
            self._epoch += 1
            self._inflight, self._inflight_gen = {}, None
            self._done_gen = gen
            for unit in units:
                unit._settle(error)
            for fut in self._gen_waiters.pop(gen, ()):
                if not fut.done():
                    fut.set_result(error is None)

    # -- statistics --------------------------------------------------------------------------------------------

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(
            backend=self._backend.name,
            state=self._state.value,
            cached=len(self._cache),
            cache_size=self._cache_max,
            cache_hits=self._hits,
            cache_misses=self._misses,
            pending=self._npending,
            inflight=sum(map(len, self._inflight.values())),
            writes=self._writes,
            coalesced=self._coalesced,
            flushes=self._flushes,
            flushed_writes=self._flushed,
            flush_failures=self._flush_failures,
            failed_writes=self._failed_writes,
            updates=self._updates,
            update_conflicts=self._conflicts,
            duplicates=self._duplicates,
            compressed=self._compressed,
            backend_stats=self._backend.statistics(),
        )


async def _call(fn: Callable[[Any], Any], value: Any) -> Any:
    result = fn(value)
    if inspect.isawaitable(result):
        result = await result
    return result


def _show(key: str) -> str:
    return repr(key) if len(key) <= 80 else repr(key[:77] + "...")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or repr(tp)
