"""The SQLite state backend: one database file in WAL mode, the durable choice on one machine.

The standard library's ``sqlite3`` runs on one dedicated thread per backend (a one-thread executor that owns the
connection), and each operation is one function on that thread: a whole commit — the once-id checks, version
checks, upserts and the version counter — is a single hop from the event loop, not one per statement. (This is
why agentflow does not use aiosqlite: it hops once per ``execute``, which would make a flush of N writes cost
N hops, and it adds a dependency for what a 1-worker executor does.) Operations asked for while a hop is under
way go together in the next hop, in the order they were asked, each still its own statement or transaction: a
thread hand-off costs more than a read of one row, so concurrent reads and commits share one.

Durability: a commit returns once SQLite has written it to the WAL file. With ``synchronous = "normal"`` (the
default) that survives the process being killed (the data is in the operating system's page cache), but not
a power cut; ``"full"`` also fsyncs each commit. Several processes on one machine may share the file: commits
take the write lock with ``BEGIN IMMEDIATE`` and wait up to ``busy_timeout_s`` for it.

Checkpoints (copying the WAL back into the database file, with its fsyncs) run on a second connection on a
thread of their own, every ``checkpoint_interval_s`` after commits, in SQLite's ``PASSIVE`` mode, which never
blocks a writer. Left to SQLite, a checkpoint runs inside whichever commit crosses 1,000 WAL pages, and that
commit — with every write queued behind it — waits milliseconds for it: the tail of the acknowledged-write
latency. The writer's own automatic checkpoint stays as a backstop at :data:`BACKSTOP_CHECKPOINT_PAGES`, so the
WAL stays bounded even if the background checkpoints cannot keep up or fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

from ..errors import StateUnavailableError
from .base import APPLIED, CONFLICT, DUPLICATE, Record, StateBackend, Write, WriteResult

__all__ = ["BACKSTOP_CHECKPOINT_PAGES", "SQLiteBackend"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: WAL pages after which the writer checkpoints inside a commit after all (SQLite's default is 1,000): reached
#: only when the background checkpoints fall behind; about 40 MB of WAL with 4 KiB pages.
BACKSTOP_CHECKPOINT_PAGES = 10_000
#: On a reset, a WAL file larger than this is truncated to it (SQLite leaves it at its largest otherwise).
_JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024

_DUPLICATE = WriteResult(DUPLICATE)
_PURGE_BATCH = 10_000  # rows per purge statement, so a purge never holds the write lock for long

_SCHEMA = """
CREATE TABLE IF NOT EXISTS agentflow_state (
    key TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL,
    version INTEGER NOT NULL,
    expires_at REAL
);
CREATE INDEX IF NOT EXISTS agentflow_state_expiry ON agentflow_state (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS agentflow_once (id TEXT PRIMARY KEY NOT NULL, expires_at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS agentflow_once_expiry ON agentflow_once (expires_at);
CREATE TABLE IF NOT EXISTS agentflow_meta (name TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO agentflow_meta (name, value) VALUES ('version', 0), ('schema', 1);
"""
_UPSERT = (
    "INSERT INTO agentflow_state (key, value, version, expires_at) VALUES (?, ?, ?, ?) ON CONFLICT (key) DO UPDATE "
    "SET value = excluded.value, version = excluded.version, expires_at = excluded.expires_at"
)
_DELETE = "DELETE FROM agentflow_state WHERE key = ?"
_GET = "SELECT value, version, expires_at FROM agentflow_state WHERE key = ?"
_GET_VERSION = "SELECT version, expires_at FROM agentflow_state WHERE key = ?"
_GET_ONCE = "SELECT expires_at FROM agentflow_once WHERE id = ?"
_PUT_ONCE = "INSERT OR REPLACE INTO agentflow_once (id, expires_at) VALUES (?, ?)"
_READ_COUNTER = "SELECT value FROM agentflow_meta WHERE name = 'version'"
_WRITE_COUNTER = "UPDATE agentflow_meta SET value = ? WHERE name = 'version'"


class SQLiteBackend(StateBackend):
    """State in a SQLite file (WAL mode) at ``path``; the directory must exist::

    async with SQLiteBackend("/var/lib/agentflow/state.db") as backend:
        await backend.commit([Write(key="k", value=b"v")])
    """

    name = "sqlite"

    def __init__(
        self,
        path: str,
        *,
        synchronous: Literal["normal", "full"] = "normal",
        busy_timeout_s: float = 5.0,
        once_ttl_s: float = 7 * 24 * 3600.0,
        checkpoint_interval_s: float = 1.0,
        switch_interval_s: float = 0.0005,
    ) -> None:
        super().__init__(once_ttl_s=once_ttl_s)
        if path == ":memory:" or not path:
            raise ValueError(
                'The SQLite state backend needs a file path (WAL mode needs a file); use backend = "memory" for '
                "state that lives only in this process."
            )
        if checkpoint_interval_s <= 0:
            raise ValueError(f"checkpoint_interval_s must be greater than 0, got {checkpoint_interval_s}.")
        self.path = path
        self.synchronous = synchronous
        self.busy_timeout_s = busy_timeout_s
        self.checkpoint_interval_s = checkpoint_interval_s
        if switch_interval_s < 0:
            raise ValueError(f"switch_interval_s must be 0 (leave it) or greater, got {switch_interval_s}.")
        self.switch_interval_s = switch_interval_s
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        # The checkpointer: its own connection, on its own thread, run by a task of the backend.
        self._ckpt_executor: ThreadPoolExecutor | None = None
        self._ckpt_conn: sqlite3.Connection | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._ckpt_task: asyncio.Task[None] | None = None
        self.checkpoints = 0  # background checkpoints run
        self.checkpoint_failures = 0
        # Operations waiting for the next hop to the database thread, and whether a hop is under way.
        self._queue: list[tuple[Callable[..., Any], tuple[object, ...], asyncio.Future[Any]]] = []
        self._hopping = False
        self.hops = 0  # hops to the database thread so far (each carries every operation queued)

    def _describe(self) -> str:
        return f"sqlite path={self.path!r}"

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(*args)`` on the database thread: in the next hop, or in a hop of its own when none is under
        way."""
        assert self._executor is not None
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((fn, args, fut))
        if not self._hopping:
            self._hop()
        try:
            return await fut
        except sqlite3.Error as exc:
            raise StateUnavailableError(
                f"The SQLite state database {self.path} failed ({type(exc).__name__}: {exc}). Check that the "
                "file and its directory are writable, the disk is not full, and no other process holds the "
                "write lock for longer than operation_timeout_s."
            ) from exc

    def _hop(self) -> None:
        calls = [c for c in self._queue if not c[2].done()]  # a caller cancelled while queued: not run
        self._queue = []
        if not calls or self._executor is None:
            self._hopping = False
            for _, _, fut in calls:
                fut.cancel()
            return
        self._hopping = True
        self.hops += 1
        try:
            done = asyncio.get_running_loop().run_in_executor(
                self._executor, _run_all, [(fn, args) for fn, args, _ in calls]
            )
        except BaseException as exc:  # the executor refused the job: its callers get the error
            self._hopping = False
            for _, _, fut in calls:
                if not fut.done():
                    fut.set_exception(exc)
            return
        done.add_done_callback(lambda d: self._landed(calls, d))

    def _landed(self, calls: list[tuple[Any, Any, asyncio.Future[Any]]], done: asyncio.Future[list[Any]]) -> None:
        """A hop came back: answer its callers in order, and start the next hop if operations queued meanwhile."""
        outcomes = None if done.cancelled() else done.result()  # _run_all itself raises nothing
        for i, (_, _, fut) in enumerate(calls):
            if fut.done():
                continue
            if outcomes is None:
                fut.cancel()
                continue
            ok, value = outcomes[i]
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)
        if self._queue:
            self._hop()
        else:
            self._hopping = False

    async def _open(self) -> None:
        # A commit's result comes back from the database thread, which must take the GIL from the event loop's
        # thread first; Python hands it over every switch interval (5 ms by default), the tail of a commit's
        # latency under load. Lowered, never raised: the setting is the process's.
        if self.switch_interval_s and sys.getswitchinterval() > self.switch_interval_s:
            sys.setswitchinterval(self.switch_interval_s)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentflow-state-sqlite")
        await self._call(self._open_sync)
        await self._open_checkpointer()

    def _open_sync(self) -> None:
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
        self._conn = conn
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"the database refused WAL mode (journal_mode is {mode})")
        conn.execute(f"PRAGMA synchronous={'FULL' if self.synchronous == 'full' else 'NORMAL'}")
        conn.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_CHECKPOINT_PAGES}")
        conn.execute(f"PRAGMA journal_size_limit={_JOURNAL_SIZE_LIMIT}")
        conn.executescript(_SCHEMA)

    def _open_checkpointer_sync(self) -> None:
        self._ckpt_conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)

    async def _on_checkpointer(self, fn: Callable[[], T]) -> T:
        assert self._ckpt_executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._ckpt_executor, fn)

    async def _open_checkpointer(self) -> None:
        self._ckpt_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentflow-state-checkpoint")
        try:
            await self._on_checkpointer(self._open_checkpointer_sync)
        except sqlite3.Error as exc:
            raise StateUnavailableError(
                f"The SQLite state database {self.path} refused a second connection for checkpoints "
                f"({type(exc).__name__}: {exc}); check that the file and its directory are readable."
            ) from exc
        self._stack = contextlib.AsyncExitStack()
        tg = await self._stack.enter_async_context(asyncio.TaskGroup())
        self._ckpt_task = tg.create_task(self._checkpoint_loop(), name="agentflow-state-sqlite-checkpoint")

    async def _checkpoint_loop(self) -> None:
        """Every ``checkpoint_interval_s``, a PASSIVE checkpoint if anything was committed since the last one."""
        done = self._commits
        while True:
            await asyncio.sleep(self.checkpoint_interval_s)
            if self._commits == done:
                continue
            done = self._commits
            try:
                await self._on_checkpointer(self._checkpoint_sync)
            except sqlite3.Error as exc:  # the writer's backstop checkpoints meanwhile; try again next time
                self.checkpoint_failures += 1
                logger.warning("checkpointing the SQLite state database %s failed: %s", self.path, exc)
            else:
                self.checkpoints += 1

    def _checkpoint_sync(self) -> None:
        assert self._ckpt_conn is not None
        self._ckpt_conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _close_checkpointer_sync(self) -> None:
        conn, self._ckpt_conn = self._ckpt_conn, None
        if conn is not None:
            conn.close()

    async def _close(self) -> None:
        try:
            await self._stop_checkpointer()
        finally:
            executor = self._executor
            if executor is not None:
                try:
                    if self._conn is not None:
                        await self._call(self._close_sync)  # behind any operation still waiting for its hop
                finally:
                    self._executor = None
                    executor.shutdown(wait=False)

    async def _stop_checkpointer(self) -> None:
        task, self._ckpt_task = self._ckpt_task, None
        if task is not None:
            task.cancel()
        stack, self._stack = self._stack, None
        try:
            if stack is not None:
                await stack.aclose()
        finally:
            executor, self._ckpt_executor = self._ckpt_executor, None
            if executor is not None:
                try:
                    if self._ckpt_conn is not None:  # after a checkpoint still running on its thread
                        await asyncio.get_running_loop().run_in_executor(executor, self._close_checkpointer_sync)
                finally:
                    executor.shutdown(wait=False)

    def _close_sync(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def _get(self, key: str) -> Record | None:
        return await self._call(self._get_sync, key)

    def _get_sync(self, key: str) -> Record | None:
        assert self._conn is not None
        row = self._conn.execute(_GET, (key,)).fetchone()
        if row is None or (row[2] is not None and row[2] <= time.time()):
            return None
        return Record(row[0], row[1], row[2])

    async def _commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        return await self._call(self._commit_sync, writes)

    def _commit_sync(self, writes: Sequence[Write]) -> list[WriteResult]:
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            version: int = conn.execute(_READ_COUNTER).fetchone()[0]
            if all(w.once_id is None and w.expected_version is None for w in writes) and len(
                {w.key for w in writes}
            ) == len(writes):
                results = self._blind(conn, writes, version)
                version += len(writes)
            else:
                results, version = self._checked(conn, writes, version)
            conn.execute(_WRITE_COUNTER, (version,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results

    @staticmethod
    def _blind(conn: sqlite3.Connection, writes: Sequence[Write], version: int) -> list[WriteResult]:
        # The write-behind case: unconditional writes, one per key (the store coalesces them), so their order
        # does not matter and two executemany calls do the whole batch.
        upserts = []
        deletes = []
        results = []
        for w in writes:
            version += 1
            if w.value is None:
                deletes.append((w.key,))
            else:
                upserts.append((w.key, w.value, version, w.expires_at))
            results.append(WriteResult(APPLIED, version))
        if upserts:
            conn.executemany(_UPSERT, upserts)
        if deletes:
            conn.executemany(_DELETE, deletes)
        return results

    def _checked(
        self, conn: sqlite3.Connection, writes: Sequence[Write], version: int
    ) -> tuple[list[WriteResult], int]:
        now = time.time()
        results: list[WriteResult] = []
        for w in writes:
            if w.once_id is not None:
                row = conn.execute(_GET_ONCE, (w.once_id,)).fetchone()
                if row is not None and row[0] > now:
                    results.append(_DUPLICATE)
                    continue
            if w.expected_version is not None:
                row = conn.execute(_GET_VERSION, (w.key,)).fetchone()
                current = 0 if row is None or (row[1] is not None and row[1] <= now) else row[0]
                if current != w.expected_version:
                    results.append(WriteResult(CONFLICT, current))
                    continue
            version += 1
            if w.value is None:
                conn.execute(_DELETE, (w.key,))
            else:
                conn.execute(_UPSERT, (w.key, w.value, version, w.expires_at))
            if w.once_id is not None:
                conn.execute(_PUT_ONCE, (w.once_id, now + self.once_ttl_s))
            results.append(WriteResult(APPLIED, version))
        return results, version

    async def _is_applied(self, once_id: str) -> bool:
        return await self._call(self._is_applied_sync, once_id)

    def _is_applied_sync(self, once_id: str) -> bool:
        assert self._conn is not None
        row = self._conn.execute(_GET_ONCE, (once_id,)).fetchone()
        return row is not None and row[0] > time.time()

    async def _purge(self) -> int:
        return await self._call(self._purge_sync)

    def _purge_sync(self) -> int:
        conn = self._conn
        assert conn is not None
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        try:
            n = conn.execute(
                "DELETE FROM agentflow_state WHERE key IN (SELECT key FROM agentflow_state "
                f"WHERE expires_at IS NOT NULL AND expires_at <= ? LIMIT {_PURGE_BATCH})",
                (now,),
            ).rowcount
            n += conn.execute(
                "DELETE FROM agentflow_once WHERE id IN (SELECT id FROM agentflow_once "
                f"WHERE expires_at <= ? LIMIT {_PURGE_BATCH})",
                (now,),
            ).rowcount
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return n


def _run_all(calls: list[tuple[Callable[..., Any], tuple[object, ...]]]) -> list[tuple[bool, Any]]:
    """On the database thread: each call in order, its result or its exception (one failing does not stop the
    others: each is its own statement or transaction)."""
    out: list[tuple[bool, Any]] = []
    for fn, args in calls:
        try:
            out.append((True, fn(*args)))
        except BaseException as exc:  # noqa: BLE001 - handed to its caller on the event loop
            out.append((False, exc))
    return out
