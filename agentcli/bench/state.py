"""``agentcli benchmark --scenario state --backend memory|sqlite|redis``: ``ctx.state`` from handlers against a
bare loop doing the same operations on the same kind of store, in the same process, rounds alternating.

Four phases per side, each on keys of its own:

* ``get``: every key read once, by ``--concurrent-users`` readers (agentflow: that many events, each handler
  reading its share through ``ctx.state.of(...).get()``; the state cache is emptied first, so each read goes to
  the backend as the bare loop's does).
* ``set``: every key written once; agentflow's phase ends when every event is acknowledged, so its writes are
  committed (write-behind, group commit); the bare loop commits each write before the next (SQLite: one
  transaction each; Redis: ``SET``).
* ``update``: read-modify-write of one counter per user, as many times; agentflow's ``update`` (a version check,
  committed at once) against the bare loop's transaction (SQLite ``BEGIN IMMEDIATE``; Redis ``WATCH``/``MULTI``), both
  sides calling the same increment function (the ``fn`` that ``update`` takes).
* ``acked_write``: one write per event at :data:`ACKED_RATE_PER_S` for ``--duration`` (open loop); the
  latency runs from the event's intended time to its acknowledgement (agentflow: ``runner.request``, whose reply
  follows the commit) or, bare, to the write's commit.

Per-operation latency is timed around each call (agentflow: inside the handler). On the memory backend the bare
loop uses the backend's own ``get`` and ``commit`` (versioned records, msgpack values) without the store. With
``--backend redis`` a ``redis-server`` is started unless ``--config`` sets ``[memory] backend = "redis"`` (its
``url`` and ``password_env`` are used then).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import os
import sqlite3
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

from agentflow import Config, Context, Event, LatencyHistogram, Runner, config_from_dict
from agentflow.state import MemoryBackend, Write

from .measure import Limits, Tally, cpu_seconds, paced_requests
from .report import Measurement, by_throughput, effective_config, latency_ms, median_run, order_of, round_sides
from .schema import Report, Run, StateDetails

__all__ = ["ACKED_RATE_PER_S", "OPS", "StateSpec", "render_state", "run_state_benchmark"]

OPS = ("get", "set", "update", "acked_write")
#: The acknowledged-write phase: writes offered per second (for ``--duration``, 3 s by default).
ACKED_RATE_PER_S = 1000.0
PASSWORD_ENV = "AGENTCLI_BENCH_REDIS_PASSWORD"
NS = "bench"
SIDES = ("raw", "agentflow")
LABELS = {"raw": "bare loop", "agentflow": "agentflow ctx.state"}
_ENC = msgspec.msgpack.Encoder()
_DEC = msgspec.msgpack.Decoder()


@dataclass(frozen=True, slots=True)
class StateSpec:
    backend: str  # memory, sqlite or redis
    ops: int  # operations of each of get, set and update
    users: int
    value_bytes: int = 100
    repeat: int = 1
    acked_seconds: float = 3.0


def _value(i: int, size: int) -> dict[str, Any]:
    return {"n": i, "text": "x" * size}


class _Store:
    """Where the round's data lives: a SQLite directory, a Redis server (started here or the --config's)."""

    def __init__(self, spec: StateSpec, base: Config) -> None:
        self.spec = spec
        self.base = base.memory
        self._dir = tempfile.TemporaryDirectory(prefix="agentcli-state-")
        self.redis: Any = None
        self.where = "this process"
        self.url = ""

    def __enter__(self) -> _Store:
        if self.spec.backend == "sqlite":
            self.where = "SQLite files in a temporary directory (WAL, synchronous=normal)"
        elif self.spec.backend == "redis":
            if self.base.backend == "redis":
                self.url, self.where = self.base.url, f"Redis at {self.base.url} (from --config)"
            else:
                from .redisd import RedisServer

                self.redis = RedisServer().start()
                os.environ[PASSWORD_ENV] = self.redis.password
                self.url, self.where = self.redis.url, f"redis-server started at {self.redis.url}"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.redis is not None:
            self.redis.close()
        self._dir.cleanup()

    def password(self) -> str | None:
        env = PASSWORD_ENV if self.redis is not None else self.base.password_env
        return os.environ.get(env) or None if env else None

    def memory_table(self, tag: str) -> dict[str, Any]:
        """``[memory]`` for one agentflow run: its own file or key prefix."""
        b = self.spec.backend
        if b == "sqlite":
            return {"backend": "sqlite", "path": str(Path(self._dir.name) / f"{tag}.db")}
        if b == "redis":
            env = PASSWORD_ENV if self.redis is not None else self.base.password_env
            return {"backend": "redis", "url": self.url, "password_env": env, "key_prefix": f"bench-{tag}:"}
        return {"backend": "memory"}

    def sqlite_path(self, tag: str) -> str:
        return str(Path(self._dir.name) / f"{tag}-bare.db")


# ---- the bare loops -----------------------------------------------------------------------------------------

Op = Callable[[str, Any], Awaitable[Any]]


class _Bare:
    """get/set/update of one store without agentflow; ``close()`` releases it."""

    get: Callable[[str], Awaitable[Any]]
    set: Callable[[str, Any], Awaitable[None]]
    incr: Callable[[str], Awaitable[int]]

    async def close(self) -> None:
        return None


class _BareMemory(_Bare):
    """The memory backend's own API (``get``, ``commit``) without the store: no handle, codec, cache or units.
    (A plain dict would measure Python's dict, which no store of versioned values can match.)"""

    def __init__(self, backend: MemoryBackend) -> None:
        self._backend = backend

        async def get(key: str) -> Any:
            rec = await backend.get(key)
            return None if rec is None else _DEC.decode(rec.value)

        async def set_(key: str, value: Any) -> None:
            await backend.commit([Write(key=key, value=_ENC.encode(value))])

        async def incr(key: str) -> int:
            while True:  # a version check, as the store's update makes
                rec = await backend.get(key)
                n = _incr(0 if rec is None else _DEC.decode(rec.value))  # the function agentflow's update calls
                version = 0 if rec is None else rec.version
                [result] = await backend.commit([Write(key=key, value=_ENC.encode(n), expected_version=version)])
                if result.status == "applied":
                    return int(n)

        self.get, self.set, self.incr = get, set_, incr

    async def close(self) -> None:
        await self._backend.aclose()


class _BareSQLite(_Bare):
    """One connection on one thread (as the SQLite backend has), one hop per operation, each write committed."""

    def __init__(self, path: str) -> None:
        self._ex = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bench-sqlite")
        self._db: sqlite3.Connection | None = None
        loop = asyncio.get_running_loop()

        def open_db() -> None:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v BLOB NOT NULL)")
            self._db = db

        self._ex.submit(open_db).result()

        def get_sync(key: str) -> Any:
            assert self._db is not None
            row = self._db.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
            return None if row is None else _DEC.decode(row[0])

        def set_sync(key: str, raw: bytes) -> None:
            assert self._db is not None
            self._db.execute("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", (key, raw))  # its own transaction

        def incr_sync(key: str) -> int:
            db = self._db
            assert db is not None
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
                n = _incr(0 if row is None else _DEC.decode(row[0]))
                db.execute("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", (key, _ENC.encode(n)))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return int(n)

        async def get(key: str) -> Any:
            return await loop.run_in_executor(self._ex, get_sync, key)

        async def set_(key: str, value: Any) -> None:
            await loop.run_in_executor(self._ex, set_sync, key, _ENC.encode(value))

        async def incr(key: str) -> int:
            return await loop.run_in_executor(self._ex, incr_sync, key)

        self.get, self.set, self.incr = get, set_, incr

    async def close(self) -> None:
        def close_db() -> None:
            if self._db is not None:
                self._db.close()

        await asyncio.get_running_loop().run_in_executor(self._ex, close_db)
        self._ex.shutdown(wait=True)


class _BareRedis(_Bare):
    """redis-py's asyncio client: GET, SET, and a WATCH/MULTI/EXEC transaction for the read-modify-write. Its
    connections are bounded as the Redis backend's are (a blocking pool of ``[memory] max_connections``)."""

    def __init__(self, url: str, password: str | None, max_connections: int) -> None:
        import redis.asyncio as aioredis  # type: ignore[import-untyped,unused-ignore]
        from redis.exceptions import WatchError  # type: ignore[import-untyped,unused-ignore]

        pool = aioredis.BlockingConnectionPool.from_url(url, password=password, max_connections=max_connections)
        client = aioredis.Redis(connection_pool=pool)
        self._client = client
        prefix = f"bench-bare-{os.urandom(3).hex()}:"

        async def get(key: str) -> Any:
            raw = await client.get(prefix + key)
            return None if raw is None else _DEC.decode(_bytes(raw))

        async def set_(key: str, value: Any) -> None:
            await client.set(prefix + key, _ENC.encode(value))

        async def incr(key: str) -> int:
            full = prefix + key
            async with client.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(full)
                        raw = await pipe.get(full)
                        n = _incr(0 if raw is None else _DEC.decode(_bytes(raw)))
                        pipe.multi()  # type: ignore[no-untyped-call]
                        pipe.set(full, _ENC.encode(n))
                        await pipe.execute()
                        return int(n)
                    except WatchError:
                        continue

        self.get, self.set, self.incr = get, set_, incr

    async def close(self) -> None:
        await self._client.aclose()
        await self._client.connection_pool.disconnect()  # a pool passed in is not closed by aclose()


def _bytes(raw: bytes | str) -> bytes:
    return raw if isinstance(raw, bytes) else raw.encode()


# ---- measuring ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Phase:
    ops: int
    seconds: float
    cpu_s: float
    hist: LatencyHistogram

    def run(self, side: str, op: str, round_: int) -> Run:
        return Run(
            side=side, label=f"{op}: {LABELS[side]}", round=round_, completed=self.ops, errors=0,
            duration_s=self.seconds, throughput_per_s=self.ops / self.seconds if self.seconds else 0.0,
            latency_ms=latency_ms(self.hist), cpu_s=self.cpu_s, op=op,
        )  # fmt: skip


def _hist() -> LatencyHistogram:
    # 10 ns units: a memory read takes about a microsecond, and the default 1 µs unit would round it away.
    return LatencyHistogram(lowest_s=1e-8, highest_s=600.0)


def _share(ops: int, users: int, user: int) -> range:
    return range(user, ops, users)


async def _timed(users: int, body: Callable[[int, Callable[[float], None]], Awaitable[None]]) -> _Phase:
    """Run ``body(user, record)`` for each user at once; ``record(seconds)`` adds one operation's latency."""
    hist = _hist()
    gc.collect()
    cpu0, t0 = cpu_seconds(), perf_counter()
    await asyncio.gather(*(body(u, hist.record) for u in range(users)))
    return _Phase(0, perf_counter() - t0, cpu_seconds() - cpu0, hist)


async def _bare_side(spec: StateSpec, store: _Store, round_: int) -> list[Run]:
    b = spec.backend
    bare: _Bare
    if b == "sqlite":
        bare = _BareSQLite(store.sqlite_path(f"r{round_}"))
    elif b == "redis":
        bare = _BareRedis(store.url, store.password(), _config(spec, store, "bare").memory.max_connections)
    else:
        backend = MemoryBackend()
        await backend.start()
        bare = _BareMemory(backend)
    n, users, size = spec.ops, spec.users, spec.value_bytes
    try:
        for i in range(n):
            await bare.set(f"g{i}", _value(i, size))

        async def gets(u: int, record: Callable[[float], None]) -> None:
            for i in _share(n, users, u):
                t = perf_counter()
                await bare.get(f"g{i}")
                record(perf_counter() - t)

        async def sets(u: int, record: Callable[[float], None]) -> None:
            for i in _share(n, users, u):
                t = perf_counter()
                await bare.set(f"s{i}", _value(i, size))
                record(perf_counter() - t)

        async def updates(u: int, record: Callable[[float], None]) -> None:
            for _ in _share(n, users, u):
                t = perf_counter()
                await bare.incr(f"u{u}")
                record(perf_counter() - t)

        runs = []
        for op, body in (("get", gets), ("set", sets), ("update", updates)):
            phase = await _timed(users, body)
            phase.ops = n
            runs.append(phase.run("raw", op, round_))
        counter = iter(range(1 << 62))

        async def acked() -> None:
            i = next(counter)
            await bare.set(f"a{i}", _value(i, size))

        runs.append(await _acked("raw", round_, acked, spec.acked_seconds))
        return runs
    finally:
        await bare.close()


async def _acked(side: str, round_: int, request: Callable[[], Awaitable[Any]], seconds: float) -> Run:
    tally = Tally()
    gc.collect()
    cpu0, t0 = cpu_seconds(), perf_counter()
    hist = await paced_requests(request, 64, ACKED_RATE_PER_S, Limits(duration_s=seconds), (Exception,), tally)
    phase = _Phase(tally.completed, perf_counter() - t0, cpu_seconds() - cpu0, hist)
    run = phase.run(side, "acked_write", round_)
    return msgspec.structs.replace(run, errors=tally.errors, rate_per_s=ACKED_RATE_PER_S)


def _config(spec: StateSpec, store: _Store, tag: str) -> Config:
    return config_from_dict(
        {
            "memory": store.memory_table(tag),
            "runner": {"worker_pool_size": max(64, spec.users), "max_concurrent_events": 4096},
            "retry": {"max_attempts": 1},
        },
        source="agentcli benchmark",
    )


async def _agentflow_side(spec: StateSpec, store: _Store, round_: int) -> tuple[list[Run], Config]:
    config = _config(spec, store, f"r{round_}")
    runner = Runner(config)
    n, users, size = spec.ops, spec.users, spec.value_bytes
    work: dict[str, Callable[[int, Context, Callable[[float], None]], Awaitable[None]]] = {}
    recorder: list[Callable[[float], None]] = []

    @runner.agent("agentcli.state", name="state")
    async def state_agent(event: Event, ctx: Context) -> None:
        op, user = event.payload
        await work[op](user, ctx, recorder[0])

    @runner.agent("agentcli.state.acked", name="acked")
    async def acked_agent(event: Event, ctx: Context) -> None:
        await ctx.state.set(_value(event.payload, size))

    async def gets(u: int, ctx: Context, record: Callable[[float], None]) -> None:
        for i in _share(n, users, u):
            t = perf_counter()
            await ctx.state.of(NS, f"g{i}").get()
            record(perf_counter() - t)

    async def sets(u: int, ctx: Context, record: Callable[[float], None]) -> None:
        for i in _share(n, users, u):
            t = perf_counter()
            await ctx.state.of(NS, f"s{i}").set(_value(i, size))
            record(perf_counter() - t)

    async def updates(u: int, ctx: Context, record: Callable[[float], None]) -> None:
        for _ in _share(n, users, u):
            t = perf_counter()
            await ctx.state.of(NS, f"u{u}").update(_incr, default=0)
            record(perf_counter() - t)

    work.update(get=gets, set=sets, update=updates)
    runs: list[Run] = []
    async with runner:
        store_ = runner.state_store
        for i in range(n):
            await store_.set(f"{NS}:g{i}", _value(i, size))
        await store_.flush()
        store_.invalidate()  # the reads below go to the backend, as the bare loop's do
        for op in ("get", "set", "update"):
            hist = _hist()
            recorder[:] = [hist.record]
            gc.collect()
            cpu0, t0 = cpu_seconds(), perf_counter()
            await asyncio.gather(*(runner.request("agentcli.state", (op, u), timeout_s=600) for u in range(users)))
            runs.append(_Phase(n, perf_counter() - t0, cpu_seconds() - cpu0, hist).run("agentflow", op, round_))
        counter = iter(range(1 << 62))

        async def acked() -> None:
            i = next(counter)
            await runner.request("agentcli.state.acked", i, key=f"a{i}", timeout_s=60)

        runs.append(await _acked("agentflow", round_, acked, spec.acked_seconds))
    return runs, config


def _incr(n: int) -> int:
    return n + 1


def _round_ratios(runs: list[Run]) -> dict[str, float]:
    by = {(r.side, r.op): r for r in runs}
    out: dict[str, float] = {}
    for op in ("get", "set", "update"):
        ours, bare = by.get(("agentflow", op)), by.get(("raw", op))
        if ours is not None and bare is not None and bare.throughput_per_s:
            out[op] = ours.throughput_per_s / bare.throughput_per_s
    return out


async def run_state_benchmark(spec: StateSpec, base: Config, options: dict[str, Any]) -> Measurement:
    runs: list[Run] = []
    ratios: list[dict[str, float]] = []
    config: Config | None = None
    with _Store(spec, base) as store:
        for n in range(1, spec.repeat + 1):
            this_round: list[Run] = []
            for side in round_sides(SIDES, n):
                if side == "raw":
                    this_round += await _bare_side(spec, store, n)
                else:
                    ours, config = await _agentflow_side(spec, store, n)
                    this_round += ours
            runs += sorted(this_round, key=lambda r: (OPS.index(r.op or "get"), SIDES.index(r.side)))
            ratios.append(_round_ratios(this_round))
        where = store.where
    gets = [r for r in runs if r.side == "agentflow" and r.op == "get"]
    headline = median_run(gets, "agentflow", by_throughput)
    assert headline is not None and config is not None
    details = StateDetails(
        backend=spec.backend, store=where, users=spec.users, ops=spec.ops, value_bytes=spec.value_bytes,
        acked_rate_per_s=ACKED_RATE_PER_S, acked_seconds=spec.acked_seconds,
        flush_interval_ms=config.memory.flush_interval_ms,
    )  # fmt: skip
    return Measurement(
        scenario="state", mode="closed", bus="memory", runs=runs, round_ratios=ratios, details=details,
        latency_measures="one state operation, timed around the call (agentflow: inside the handler); acked_write: "
        "intended time -> acknowledged (agentflow) or committed (bare)",
        config=effective_config(config), options=options, repeat=spec.repeat, order=order_of(SIDES, spec.repeat),
        rank=by_throughput, headline=headline,
    )  # fmt: skip


def _us(run: Run, stat: str) -> str:
    if run.latency_ms is None:
        return "n/a"
    return f"{getattr(run.latency_ms, stat) * 1000:,.1f}"


def render_state(console: Console, report: Report) -> None:
    """The median round of each operation and side: p50/p99 in microseconds, ops/s, and the ratio."""
    d = report.details
    assert isinstance(d, StateDetails)
    table = Table(title=f"state on {d.backend}: {d.store}, {d.users} users, {d.ops:,} operations each")
    for col in ("operation", "side", "p50 µs", "p99 µs", "ops/s", "agentflow/bare"):
        table.add_column(col, justify="left" if col in ("operation", "side") else "right")
    for op in OPS:
        for side in SIDES:
            r = median_run([x for x in report.runs if x.op == op], side, by_throughput)
            if r is None:
                continue
            ratio = report.ratios.get(op) if side == "agentflow" else None
            table.add_row(
                op, LABELS[side], _us(r, "p50"), _us(r, "p99"), f"{r.throughput_per_s:,.0f}",
                "" if ratio is None else f"{ratio:.2f}x",
            )  # fmt: skip
    console.print(table)
    console.print(
        f"acked_write: {d.acked_rate_per_s:,.0f} writes/s offered for {d.acked_seconds:g} s; latency from each "
        "write's intended time to its acknowledgement (agentflow) or commit (bare).",
        highlight=False,
    )
