"""The backend contract (agentflow/state/base.py) on memory, a real SQLite file and a real Redis server, then what
is particular to each: SQLite's WAL file and lock, Redis's password, URL and refusals, the optional extra."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest
from conftest import REPO_ROOT
from redis_server import RedisServer
from state_env import PASSWORD_ENV, StateEnv

from agentflow.errors import ConfigError, LifecycleError, StateUnavailableError
from agentflow.state import MemoryBackend, StateConfig, StateHandle, StateStore, Write, create_backend
from agentflow.state.base import APPLIED, CONFLICT, DUPLICATE, Record
from agentflow.state.redis import RedisBackend
from agentflow.state.sqlite import BACKSTOP_CHECKPOINT_PAGES, SQLiteBackend

ROOT = REPO_ROOT

# -- the contract ------------------------------------------------------------------------------------------------


async def test_conditional_writes_compare_versions(state: StateEnv) -> None:
    b = await state.backend()
    [created] = await b.commit([Write(key="k", value=b"\x00a", expected_version=0)])
    assert created.status == APPLIED and created.version > 0
    [again] = await b.commit([Write(key="k", value=b"\x00b", expected_version=0)])
    assert (again.status, again.version) == (CONFLICT, created.version)
    [stale] = await b.commit([Write(key="k", value=b"\x00b", expected_version=created.version + 1000)])
    assert (stale.status, stale.version) == (CONFLICT, created.version)
    [changed] = await b.commit([Write(key="k", value=b"\x00c", expected_version=created.version)])
    assert changed.status == APPLIED and changed.version > created.version
    record = await b.get("k")
    assert record is not None and (record.value, record.version) == (b"\x00c", changed.version)
    [gone] = await b.commit([Write(key="k", value=None, expected_version=changed.version)])
    assert gone.status == APPLIED
    assert await b.get("k") is None
    [absent] = await b.commit([Write(key="k", value=b"\x00d", expected_version=changed.version)])
    assert (absent.status, absent.version) == (CONFLICT, 0)


async def test_versions_only_grow_across_keys_deletes_and_rewrites(state: StateEnv) -> None:
    b = await state.backend()
    seen = []
    for write in [
        Write(key="a", value=b"\x001"),
        Write(key="b", value=b"\x001"),
        Write(key="a", value=None),
        Write(key="a", value=b"\x002"),
    ]:
        [r] = await b.commit([write])
        seen.append(r.version)
    assert seen == sorted(seen) and len(set(seen)) == 4
    record = await b.get("a")
    assert record is not None and record.version == seen[-1]  # a rewrite after a delete never reuses a version


async def test_a_commit_applies_in_order_and_a_skipped_write_does_not_abort_the_rest(state: StateEnv) -> None:
    b = await state.backend()
    results = await b.commit(
        [
            Write(key="x", value=b"\x001", once_id="evt-1"),
            Write(key="x", value=b"\x002", once_id="evt-1"),  # the same once-id in the same commit
            Write(key="y", value=b"\x001", expected_version=12345),  # a conflict
            Write(key="z", value=b"\x001", expected_version=0),
            Write(key="x", value=b"\x003"),
        ]
    )
    assert [r.status for r in results] == [APPLIED, DUPLICATE, CONFLICT, APPLIED, APPLIED]
    assert results[0].version < results[3].version < results[4].version
    x, y, z = await b.get("x"), await b.get("y"), await b.get("z")
    assert x is not None and x.value == b"\x003"
    assert y is None and z is not None
    assert await b.is_applied("evt-1")
    assert not await b.is_applied("evt-2")
    [dup] = await b.commit([Write(key="x", value=b"\x004", once_id="evt-1")])
    assert dup.status == DUPLICATE
    stats = b.statistics()
    assert stats.duplicates == 2 and stats.conflicts == 1 and stats.commits == 2


async def test_records_expire_and_count_as_absent(state: StateEnv) -> None:
    b = await state.backend()
    [r] = await b.commit([Write(key="k", value=b"\x00v", expires_at=time.time() + 0.3)])
    record = await b.get("k")
    assert record is not None and record.expires_at is not None
    assert time.time() < record.expires_at <= time.time() + 0.31
    await asyncio.sleep(0.5)
    assert await b.get("k") is None
    [again] = await b.commit([Write(key="k", value=b"\x00w", expected_version=0)])
    assert again.status == APPLIED and again.version > r.version
    purged = await b.purge_expired()
    assert purged >= 0
    if state.kind != "redis":  # Redis expires keys itself; the others drop them when purged
        await b.commit([Write(key="short", value=b"\x00v", expires_at=time.time() + 0.05, once_id="o")])
        await asyncio.sleep(0.1)
        assert await b.purge_expired() == 1  # the value; the once-id lives for once_ttl_s


async def test_once_ids_expire_after_once_ttl(state: StateEnv) -> None:
    if state.kind == "memory":
        b = MemoryBackend(once_ttl_s=0.2)
        await b.start()
    else:
        b = create_backend(state.config(once_ttl_s=0.2), env=state.env)
        await b.start()
    try:
        await b.commit([Write(key="k", value=b"\x00v", once_id="evt-1")])
        assert await b.is_applied("evt-1")
        await asyncio.sleep(0.4)
        assert not await b.is_applied("evt-1")
        [r] = await b.commit([Write(key="k", value=b"\x00w", once_id="evt-1")])
        assert r.status == APPLIED
    finally:
        await b.aclose()


async def test_a_backend_starts_once_and_refuses_use_outside_its_life(state: StateEnv) -> None:
    b = create_backend(state.config(), env=state.env)
    with pytest.raises(LifecycleError, match="has not started"):
        await b.get("k")
    async with b:
        assert "state=running" in repr(b)
        with pytest.raises(LifecycleError, match="start it once"):
            await b.start()
    await b.aclose()
    assert b.statistics().state == "closed"
    with pytest.raises(LifecycleError, match="closed"):
        await b.commit([Write(key="k", value=b"\x00")])


# -- SQLite ------------------------------------------------------------------------------------------------------


async def test_sqlite_keeps_its_file_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with SQLiteBackend(str(path)) as b:
        await b.commit([Write(key="k", value=b"\x00v")])
        assert "sqlite path=" in repr(b)
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("SELECT value FROM agentflow_state WHERE key = 'k'").fetchone()[0] == b"\x00v"


async def test_sqlite_checkpoints_in_the_background_not_inside_commits(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with SQLiteBackend(str(path), checkpoint_interval_s=0.05) as b:
        await b.commit([Write(key="k", value=b"\x00v")])
        # The writer checkpoints itself only as a backstop, far past SQLite's 1,000 pages.
        assert await b._call(lambda: b._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]) == (  # type: ignore[union-attr]
            BACKSTOP_CHECKPOINT_PAGES
        )
        for _ in range(1000):  # a few intervals; the bound only keeps a broken checkpointer from hanging the test
            if b.checkpoints:
                break
            await asyncio.sleep(0.01)
        assert b.checkpoints >= 1 and b.checkpoint_failures == 0
        # Checkpointed: the database file alone, without its WAL, holds the commit.
        copy = tmp_path / "copy.db"
        copy.write_bytes(path.read_bytes())
        with sqlite3.connect(copy) as conn:
            assert conn.execute("SELECT value FROM agentflow_state WHERE key = 'k'").fetchone()[0] == b"\x00v"
        # Nothing committed since: no more checkpoints.
        done = b.checkpoints
        await asyncio.sleep(0.2)
        assert b.checkpoints == done
    with pytest.raises(ValueError, match="checkpoint_interval_s"):
        SQLiteBackend(str(path), checkpoint_interval_s=0)


async def test_sqlite_lowers_the_thread_switch_interval_and_never_raises_it(tmp_path: Path) -> None:
    # Commits finish on the database thread; the GIL's switch interval bounds how long their results wait for it.
    import sys

    was = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        async with SQLiteBackend(str(tmp_path / "a.db"), switch_interval_s=0.0005):
            assert sys.getswitchinterval() == pytest.approx(0.0005)
        async with SQLiteBackend(str(tmp_path / "b.db"), switch_interval_s=0.002):
            assert sys.getswitchinterval() == pytest.approx(0.0005)  # lower already: left as it is
        sys.setswitchinterval(0.005)
        async with SQLiteBackend(str(tmp_path / "c.db"), switch_interval_s=0):
            assert sys.getswitchinterval() == pytest.approx(0.005)  # 0: Python's own setting stays
        with pytest.raises(ValueError, match="switch_interval_s"):
            SQLiteBackend(str(tmp_path / "d.db"), switch_interval_s=-1)
    finally:
        sys.setswitchinterval(was)


async def test_sqlite_operations_asked_together_share_a_hop_and_keep_their_own_outcomes(tmp_path: Path) -> None:
    async with SQLiteBackend(str(tmp_path / "state.db")) as b:
        [first] = await b.commit([Write(key="k", value=b"\x00a")])
        hops = b.hops
        got = await asyncio.gather(
            b.get("k"),
            b.commit([Write(key="k", value=b"\x00b", expected_version=first.version)]),
            b.commit([Write(key="k", value=b"\x00c", expected_version=first.version)]),  # the one before won
            b.get("k"),
            b.get([1]),  # type: ignore[arg-type]  # sqlite3 cannot bind a list: this operation alone fails
            *(b.get(f"missing-{i}") for i in range(10)),
            return_exceptions=True,
        )
        assert b.hops - hops == 2  # the first operation alone, then everything asked meanwhile in one hop
        read, applied, conflict, after, failed, *missing = got
        assert isinstance(read, Record) and read.value == b"\x00a"
        assert isinstance(applied, list) and applied[0].status == APPLIED
        assert isinstance(conflict, list) and conflict[0].status == CONFLICT
        assert isinstance(after, Record) and after.value == b"\x00b"  # in the order they were asked
        assert isinstance(failed, StateUnavailableError)
        assert missing == [None] * 10

        # An operation whose caller is cancelled while it waits for its hop is not run.
        reading = asyncio.create_task(b.get("k"))
        writing = asyncio.create_task(b.commit([Write(key="never", value=b"\x00x")]))
        await asyncio.sleep(0)
        writing.cancel()
        await reading
        with pytest.raises(asyncio.CancelledError):
            await writing
        assert await b.get("never") is None


async def test_sqlite_refuses_an_in_memory_database() -> None:
    with pytest.raises(ValueError, match='backend = "memory"'):
        SQLiteBackend(":memory:")


async def test_sqlite_in_a_missing_directory_fails_at_start_with_a_sentence(tmp_path: Path) -> None:
    store = StateStore(StateConfig(backend="sqlite", path=str(tmp_path / "no" / "such" / "dir" / "state.db")))
    with pytest.raises(StateUnavailableError, match="directory are writable"):
        await store.start()
    assert store.statistics().state == "closed"


async def test_a_flush_that_cannot_commit_fails_its_units_and_the_store_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    config = StateConfig(backend="sqlite", path=str(path), operation_timeout_s=0.2, flush_interval_ms=0)
    async with StateStore(config) as store:
        ok = store.unit("agent:evt-0")
        await StateHandle(store, "agent", "k", ok).set("committed")
        await ok.committed()
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock past the busy timeout
        try:
            unit = store.unit("agent:evt-1")
            await StateHandle(store, "agent", "k", unit).set("lost")
            with pytest.raises(StateUnavailableError, match="write lock"):
                await unit.committed()
            assert "failed" in repr(unit)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        stats = store.statistics()
        assert stats.flush_failures == 1 and stats.failed_writes == 1
        assert await StateHandle(store, "agent", "k").get() == "committed"  # the cache does not claim "lost"
        later = store.unit("agent:evt-2")
        await StateHandle(store, "agent", "k2", later).set("after")
        await later.committed()
        assert await StateHandle(store, "agent", "k2").get() == "after"


# -- Redis -------------------------------------------------------------------------------------------------------


async def test_redis_reads_its_password_from_the_variable_password_env_names(redis_server: RedisServer) -> None:
    config = StateConfig(backend="redis", url=redis_server.url, password_env=PASSWORD_ENV)
    with pytest.raises(ConfigError, match=f"{PASSWORD_ENV} \\(password_env of \\[memory\\]\\) is not set"):
        create_backend(config, env={})
    backend = create_backend(config, env={PASSWORD_ENV: "wrong-password"})
    with pytest.raises(StateUnavailableError, match="password") as info:
        await backend.start()
    assert "wrong-password" not in str(info.value)
    async with create_backend(config, env={PASSWORD_ENV: redis_server.password}) as b:
        assert redis_server.password not in repr(b)
        assert repr(b).startswith(f"<RedisBackend redis url='{redis_server.url}'")


async def test_redis_reads_asked_together_share_a_pipeline_and_keep_their_own_outcomes(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    state = StateEnv("redis", tmp_path, redis_server)
    try:
        b = await state.backend()
        assert isinstance(b, RedisBackend)
        await b.commit([Write(key=f"k{i}", value=f"\x00{i}".encode()) for i in range(5)])
        await b._client.set(b.key_prefix + "s:plain", "not a hash")  # type: ignore[union-attr]
        batches = b.read_batches
        got = await asyncio.gather(
            *(b.get(f"k{i}") for i in range(5)), b.get("plain"), b.get("missing"), return_exceptions=True
        )
        assert b.read_batches - batches == 1  # asked in one turn of the event loop: one pipeline
        *found, wrong_type, missing = got
        assert [r.value if isinstance(r, Record) else r for r in found] == [f"\x00{i}".encode() for i in range(5)]
        assert isinstance(wrong_type, StateUnavailableError) and "WRONGTYPE" in str(wrong_type)
        assert missing is None

        # A read whose caller is cancelled while it waits is dropped; the reads beside it are answered.
        first = asyncio.create_task(b.get("k0"))
        dropped = asyncio.create_task(b.get("k1"))
        kept = asyncio.create_task(b.get("k2"))
        await asyncio.sleep(0)
        dropped.cancel()
        batches = b.read_batches
        assert (await first) is not None and (await kept) is not None
        with pytest.raises(asyncio.CancelledError):
            await dropped
        assert b.read_batches - batches == 1
    finally:
        await state.aclose()


def test_redis_refuses_a_password_in_the_url() -> None:
    config = StateConfig(backend="redis", url="redis://:secret@127.0.0.1:6379/0")
    with pytest.raises(ConfigError, match="password_env") as info:
        create_backend(config, env={})
    assert "secret" not in str(info.value)
    with pytest.raises(ConfigError, match="redis:// or rediss://"):
        create_backend(StateConfig(backend="redis", url="http://127.0.0.1:6379"), env={})


async def test_an_unreachable_redis_fails_at_start_with_a_sentence() -> None:
    from agentcli.bench.tansu import free_port

    store = StateStore(StateConfig(backend="redis", url=f"redis://127.0.0.1:{free_port()}/0", operation_timeout_s=1))
    with pytest.raises(StateUnavailableError, match="server is up, reachable"):
        await store.start()


async def test_a_commit_redis_refuses_fails_its_units_and_writes_nothing(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    state = StateEnv("redis", tmp_path, redis_server)
    try:
        store = await state.store(flush_interval_ms=100)
        admin = await state.backend()
        client = admin._client  # type: ignore[attr-defined]
        await client.config_set("maxmemory", 1)  # Redis refuses every write while it is "out of memory"
        try:
            unit = store.unit("agent:evt-1")
            h = StateHandle(store, "agent", "k", unit)
            await h.set("a")
            await h.of("agent", "k2").set("b", once=True)
            with pytest.raises(StateUnavailableError, match="maxmemory"):
                await unit.committed()
        finally:
            await client.config_set("maxmemory", 0)
        assert await admin.get("agent:k") is None and await admin.get("agent:k2") is None
        unit.begin_attempt()
        assert not await admin.is_applied(unit.once_id("agent:k2"))  # the once-id of a failed write is not kept
        stats = store.statistics()
        assert (stats.flush_failures, stats.failed_writes) == (1, 2)
        again = store.unit("agent:evt-1")
        await StateHandle(store, "agent", "k", again).set("a")
        await again.committed()
        assert await StateHandle(await state.store(), "agent", "k").get() == "a"
    finally:
        await state.aclose()


async def test_a_redis_commit_that_fails_midway_applies_none_of_its_writes(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    state = StateEnv("redis", tmp_path, redis_server)
    try:
        b = await state.backend()
        client = b._client  # type: ignore[attr-defined]
        await client.set(f"{state.prefix}s:bad", "a string where a hash belongs")  # written by someone else
        with pytest.raises(StateUnavailableError, match="WRONGTYPE"):
            await b.commit([Write(key="good", value=b"\x00v", once_id="evt-1"), Write(key="bad", value=b"\x00v")])
        assert await b.get("good") is None
        assert not await b.is_applied("evt-1")
    finally:
        await state.aclose()


def test_the_redis_backend_without_redis_py_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "from agentflow.state import StateConfig, create_backend\n"
        "try:\n"
        "    create_backend(StateConfig(backend='redis'))\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert "pip install 'agentflow-runner[redis]'" in out.stdout, out.stderr


def test_importing_the_state_layer_imports_neither_redis_nor_sqlite3() -> None:
    code = "import sys, agentflow.state; print(sorted(m for m in ('redis', 'sqlite3') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


# -- config ------------------------------------------------------------------------------------------------------


def test_state_config_refuses_unknown_keys_and_bad_values() -> None:
    assert msgspec.convert({}, StateConfig) == StateConfig()
    with pytest.raises(msgspec.ValidationError, match="unknown field `state_cache_ttl`"):
        msgspec.convert({"state_cache_ttl": 5}, StateConfig)
    with pytest.raises(msgspec.ValidationError, match="Invalid enum value 'postgres'"):
        msgspec.convert({"backend": "postgres"}, StateConfig)
    with pytest.raises(msgspec.ValidationError, match=">= 1"):
        msgspec.convert({"max_state_bytes": 0}, StateConfig)
    assert os.environ.get(PASSWORD_ENV) is None  # the tests pass the password explicitly, never through os.environ
