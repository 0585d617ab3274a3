"""The Redis state backend (redis-py's asyncio client): state shared by workers on several machines.

Needs the optional extra: ``pip install 'agentflow-runner[redis]'``. Only this module imports redis.

Layout, under ``key_prefix`` (default ``agentflow:``): a value is a hash ``<prefix>s:<key>`` with fields ``v``
(the bytes), ``n`` (the version) and, when it expires, ``e`` (its expiry, Unix milliseconds), expiring with
``PEXPIRE``, so a read is one ``HMGET``; a once-id is ``<prefix>o:<id>`` with a TTL of
``once_ttl_s``; ``<prefix>version`` is the version counter. Besides state, the backend keeps plain blobs with a
TTL under ``<prefix>c:<key>`` (:meth:`RedisBackend.get_blob`), the LLM response cache's second level shared by
every worker. A commit is one Lua script, which Redis runs
atomically: the once-id checks, version checks, writes and the counter happen together or not at all.

Reads asked while a read is under way go together, in one pipeline of ``HMGET`` (each read still its own
command, answered on its own): a round trip and redis-py's per-call bookkeeping cost more than the read itself.
A read waits for no other to start; a task of the backend sends them.

Needs Redis 7.0 or later (script flags). Every key a script touches is passed in ``KEYS``, but one commit
touches many unrelated keys, so Redis Cluster (which needs them in one hash slot) is not supported; use one
server, or a primary with replicas.

redis-py's automatic retries are turned off: a script retried after its reply was lost could apply twice (an
``update`` would count twice). A failed call is reported as :class:`~agentflow.errors.StateUnavailableError`
instead, its writes are not acknowledged, and the event is retried by the worker — with ``once=True`` a
redelivered write is recognised as a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ..errors import ConfigError, StateUnavailableError
from .base import APPLIED, CONFLICT, DUPLICATE, Record, StateBackend, Write, WriteResult

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError
except ImportError as exc:  # pragma: no cover - exercised only where the extra is missing
    raise ImportError(
        'The Redis state backend ([memory] backend = "redis") needs redis-py; run '
        "pip install 'agentflow-runner[redis]'."
    ) from exc

__all__ = ["RedisBackend"]

T = TypeVar("T")

_DUPLICATE = WriteResult(DUPLICATE)

# KEYS[1] is the version counter, KEYS[2..n+1] the value keys, then the once keys in order.
# ARGV: n, once_ttl_ms, then per write: op ("s" set, "d" delete), value, ttl_ms (0: none), expected version
# ("" for none), index of its once key among the once keys (0: none), expiry in Unix ms (0: none). Replies two
# integers per write: 1 and the new version, -1 and the version found, or -2 and 0 for a duplicate.
#
# Redis does not roll a script back when a command in it fails, so the script decides everything first (the
# reads that can fail, e.g. on a key of the wrong type, all happen there, tracking the batch's own effects) and
# writes only after; the "#!lua" line makes Redis 7 refuse the whole script up front when it is out of memory.
_COMMIT_LUA = """#!lua
local n = tonumber(ARGV[1])
local once_ms = tonumber(ARGV[2])
local version = tonumber(redis.call('GET', KEYS[1]) or '0')
local out, plan, current, seen = {}, {}, {}, {}
local a = 3
for i = 1, n do
  local key = KEYS[1 + i]
  local expected, oi = ARGV[a + 3], tonumber(ARGV[a + 4])
  local okey = false
  if oi > 0 then okey = KEYS[1 + n + oi] end
  if okey and (seen[okey] or redis.call('EXISTS', okey) == 1) then
    out[#out + 1] = -2
    out[#out + 1] = 0
  else
    local cur = current[key]
    if cur == nil then cur = tonumber(redis.call('HGET', key, 'n') or '0') end
    if expected ~= '' and tonumber(expected) ~= cur then
      out[#out + 1] = -1
      out[#out + 1] = cur
    else
      version = version + 1
      if ARGV[a] == 'd' then current[key] = 0 else current[key] = version end
      if okey then seen[okey] = true end
      plan[#plan + 1] = {key, ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2]), version, okey, ARGV[a + 5]}
      out[#out + 1] = 1
      out[#out + 1] = version
    end
  end
  a = a + 6
end
for _, w in ipairs(plan) do
  local key, op, value, ttl, ver, okey, at = w[1], w[2], w[3], w[4], w[5], w[6], w[7]
  if op == 'd' then
    redis.call('DEL', key)
  else
    if ttl > 0 then
      redis.call('HSET', key, 'v', value, 'n', ver, 'e', at)
      redis.call('PEXPIRE', key, ttl)
    else
      redis.call('HSET', key, 'v', value, 'n', ver)
      redis.call('HDEL', key, 'e')
      redis.call('PERSIST', key)
    end
  end
  if okey then redis.call('SET', okey, '1', 'PX', once_ms) end
end
redis.call('SET', KEYS[1], version)
return out
"""


def redacted_url(url: str) -> str:
    """``url`` without its user and password, for messages and ``repr``."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class RedisBackend(StateBackend):
    """State in Redis at ``url`` (``redis://host:port/db`` or ``rediss://`` for TLS). The password is given
    as ``password`` (read by :func:`~agentflow.state.create_backend` from the variable ``password_env`` names),
    never in the URL::

        async with RedisBackend("redis://127.0.0.1:6379/0", password=os.environ["REDIS_PASSWORD"]) as backend:
            await backend.commit([Write(key="k", value=b"v")])
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        key_prefix: str = "agentflow:",
        max_connections: int = 16,
        timeout_s: float = 5.0,
        once_ttl_s: float = 7 * 24 * 3600.0,
    ) -> None:
        super().__init__(once_ttl_s=once_ttl_s)
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ConfigError(
                f"The Redis state url {redacted_url(url)!r} must start with redis:// or rediss://.", key="memory.url"
            )
        if parts.password:
            raise ConfigError(
                "The Redis state url contains a password; remove it from the url and put it in the environment "
                "variable that [memory] password_env names, so it never sits in a file.",
                key="memory.url",
            )
        self.url = url
        self.key_prefix = key_prefix
        self.max_connections = max_connections
        self.timeout_s = timeout_s
        self._password = password
        self._client: aioredis.Redis | None = None
        self._commit_script: Any = None
        self._counter_key = f"{key_prefix}version"
        self._value_prefix = f"{key_prefix}s:"
        self._once_prefix = f"{key_prefix}o:"
        self._blob_prefix = f"{key_prefix}c:"
        # Reads waiting for the reader task (full key, the caller's future), and what wakes it.
        self._reads: list[tuple[str, asyncio.Future[list[Any]]]] = []
        self._read_wakeup: asyncio.Future[None] | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._reader: asyncio.Task[None] | None = None
        self.read_batches = 0  # pipelines (or single reads) the reader task sent

    def _describe(self) -> str:
        return f"redis url={redacted_url(self.url)!r}"

    async def _call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except (RedisError, OSError) as exc:
            raise self._failure(what, exc) from exc

    def _failure(self, what: str, exc: BaseException) -> StateUnavailableError:
        if isinstance(exc, asyncio.CancelledError):
            return StateUnavailableError(
                f"The Redis state backend at {redacted_url(self.url)} closed before this read was answered."
            )
        error = StateUnavailableError(
            f"Redis at {redacted_url(self.url)} failed to {what} ({type(exc).__name__}: {exc}); the writes "
            "concerned were not acknowledged. Check that the server is up, reachable and accepting writes, and "
            "that the password in the variable password_env names is right."
        )
        error.__cause__ = exc
        return error

    async def _open(self) -> None:
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url,
            max_connections=self.max_connections,
            timeout=self.timeout_s,
            password=self._password,
            socket_timeout=self.timeout_s,
            socket_connect_timeout=self.timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        client = aioredis.Redis(connection_pool=pool)
        self._client = client
        self._commit_script = client.register_script(_COMMIT_LUA)
        await self._call("answer a PING at start", client.ping)
        self._stack = contextlib.AsyncExitStack()
        tg = await self._stack.enter_async_context(asyncio.TaskGroup())
        self._reader = tg.create_task(self._read_loop(), name="agentflow-state-redis-reads")

    async def _close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()
        reads, self._reads = self._reads, []
        for _, fut in reads:
            if not fut.done():
                fut.set_exception(StateUnavailableError("The Redis state backend closed before this read was sent."))
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
            await client.connection_pool.disconnect()

    async def _get(self, key: str) -> Record | None:
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._reads.append((self._value_prefix + key, fut))
        wake = self._read_wakeup
        if wake is not None and not wake.done():
            wake.set_result(None)
        value, version, at = await fut
        if value is None or version is None:
            return None
        expires_at = None if at is None else int(at) / 1000
        if expires_at is not None and expires_at <= time.time():
            return None  # due, and Redis has not removed it yet
        return Record(value if isinstance(value, bytes) else str(value).encode(), int(version), expires_at)

    async def _read_loop(self) -> None:
        """The reader task: sends what is queued — one read alone, several in one pipeline — and answers each."""
        loop = asyncio.get_running_loop()
        while True:
            if not self._reads:
                wake = self._read_wakeup = loop.create_future()
                try:
                    await wake
                finally:
                    self._read_wakeup = None
                continue
            batch = [r for r in self._reads if not r[1].done()]  # a caller cancelled while queued: not read
            self._reads = []
            if batch:
                await self._read_batch(batch)

    async def _read_batch(self, batch: list[tuple[str, asyncio.Future[list[Any]]]]) -> None:
        client = self._client
        assert client is not None
        self.read_batches += 1
        try:
            if len(batch) == 1:
                replies: list[Any] = [await client.hmget(batch[0][0], "v", "n", "e")]
            else:
                async with client.pipeline(transaction=False) as pipe:
                    for full, _ in batch:
                        pipe.hmget(full, "v", "n", "e")
                    replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # noqa: BLE001 - every reader of the batch gets the error (cancelled: closing)
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(self._failure("read a key", exc))
            if not isinstance(exc, Exception):
                raise
            return
        for (_, fut), reply in zip(batch, replies, strict=True):
            if fut.done():
                continue
            if isinstance(reply, Exception):  # this read alone failed (a key of another type): its caller's error
                fut.set_exception(self._failure("read a key", reply))
            else:
                fut.set_result(reply)

    async def _commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        now = time.time()
        n = len(writes)
        keys: list[str] = [self._counter_key]
        once_keys: list[str] = []
        args: list[bytes | str | int] = [n, int(self.once_ttl_s * 1000)]
        for w in writes:
            keys.append(self._value_prefix + w.key)
            if w.expires_at is None:
                ttl_ms = 0
            else:  # relative, on the server's clock; a value already due expires at once
                ttl_ms = max(1, int((w.expires_at - now) * 1000))
            oi = 0
            if w.once_id is not None:
                once_keys.append(self._once_prefix + w.once_id)
                oi = len(once_keys)
            expected = "" if w.expected_version is None else w.expected_version
            at = 0 if w.expires_at is None else int(w.expires_at * 1000)
            args += ("d", b"", 0, expected, oi, 0) if w.value is None else ("s", w.value, ttl_ms, expected, oi, at)
        keys += once_keys
        script = self._commit_script
        reply = await self._call("commit state writes", lambda: script(keys=keys, args=args))
        results: list[WriteResult] = []
        for i in range(0, 2 * n, 2):
            code, version = int(reply[i]), int(reply[i + 1])
            if code == 1:
                results.append(WriteResult(APPLIED, version))
            elif code == -1:
                results.append(WriteResult(CONFLICT, version))
            else:
                results.append(_DUPLICATE)
        return results

    async def _is_applied(self, once_id: str) -> bool:
        client = self._client
        assert client is not None
        found = await self._call("look up a once-id", lambda: client.exists(self._once_prefix + once_id))
        return bool(found)

    async def _purge(self) -> int:
        return 0  # Redis expires values and once-ids itself

    # ---- blobs: a plain shared cache beside the state (the LLM response cache's second level) -------------

    async def get_blob(self, key: str) -> bytes | None:
        """The bytes stored under ``key`` by :meth:`set_blob`, or None (absent or expired)."""
        self._check()
        client = self._client
        assert client is not None
        value = await self._call("read a cached blob", lambda: client.get(self._blob_prefix + key))
        if value is None:
            return None
        return value if isinstance(value, bytes) else str(value).encode()

    async def set_blob(self, key: str, value: bytes, ttl_s: float) -> None:
        """Store ``value`` under ``key`` for ``ttl_s`` seconds (last writer wins; not state, no version)."""
        self._check()
        client = self._client
        assert client is not None
        ttl_ms = max(1, int(ttl_s * 1000))
        await self._call("write a cached blob", lambda: client.set(self._blob_prefix + key, value, px=ttl_ms))
