"""``[memory]``: where agent state lives and how it is cached, batched and bounded (docs/state.md).

A frozen msgspec Struct like the rest of the configuration: units in the names, module-level defaults,
``forbid_unknown_fields``. This module imports only msgspec::

    StateConfig(backend="sqlite", path="/var/lib/agentflow/state.db", flush_interval_ms=5.0)
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

__all__ = ["StateConfig"]

DEFAULT_STATE_BACKEND: Literal["memory", "sqlite", "redis"] = "memory"
DEFAULT_STATE_PATH = "agentflow-state.db"
DEFAULT_STATE_URL = "redis://127.0.0.1:6379/0"
DEFAULT_KEY_PREFIX = "agentflow:"
DEFAULT_STATE_CACHE_SIZE = 10_000
DEFAULT_STATE_CACHE_TTL_S = 30.0
DEFAULT_COMPRESSION_THRESHOLD_BYTES = 4096
DEFAULT_MAX_STATE_BYTES = 1_048_576  # 1 MiB
DEFAULT_FLUSH_INTERVAL_MS = 0.0  # group commit: a flush starts as soon as the previous one is done
DEFAULT_MAX_PENDING_WRITES = 10_000
DEFAULT_MAX_UPDATE_ATTEMPTS = 10
DEFAULT_ONCE_TTL_S = 7 * 24 * 3600.0
DEFAULT_PURGE_INTERVAL_S = 60.0
DEFAULT_OPERATION_TIMEOUT_S = 5.0
DEFAULT_REDIS_MAX_CONNECTIONS = 16
DEFAULT_CONVERSATION_MAX_MESSAGES = 200

_PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
_PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
_NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]
# A prefix of Redis keys: printable, no spaces, so `redis-cli --scan --pattern 'agentflow:*'` finds them.
_KeyPrefix = Annotated[str, msgspec.Meta(pattern=r"^[!-~]*$", max_length=64)]


class StateConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[memory]``: the state backend behind ``ctx.state`` and ``ctx.memory``.

    ``backend``: ``"memory"`` (one process, lost on exit), ``"sqlite"`` (a file at ``path`` in WAL mode, durable on
    one machine) or ``"redis"`` (``url``; the password comes from the environment variable ``password_env``
    names, never from the file). Writes wait at most ``flush_interval_ms`` in the write-behind buffer and are
    committed together; an event is acknowledged only after the commit holding its writes::

        StateConfig(backend="redis", url="redis://10.0.0.5:6379/0", password_env="AGENTFLOW_REDIS_PASSWORD")
    """

    backend: Literal["memory", "sqlite", "redis"] = DEFAULT_STATE_BACKEND
    path: str = DEFAULT_STATE_PATH
    # "normal" survives a killed process (the commit is in the WAL file); "full" also a power cut, at an fsync
    # per flush.
    sqlite_synchronous: Literal["normal", "full"] = "normal"
    url: str = DEFAULT_STATE_URL
    password_env: str = ""
    key_prefix: _KeyPrefix = DEFAULT_KEY_PREFIX
    max_connections: _PositiveInt = DEFAULT_REDIS_MAX_CONNECTIONS
    operation_timeout_s: _PositiveFloat = DEFAULT_OPERATION_TIMEOUT_S
    state_cache_size: _PositiveInt = DEFAULT_STATE_CACHE_SIZE
    state_cache_ttl_s: _PositiveFloat = DEFAULT_STATE_CACHE_TTL_S
    enable_state_compression: bool = False
    compression_threshold_bytes: _PositiveInt = DEFAULT_COMPRESSION_THRESHOLD_BYTES
    max_state_bytes: _PositiveInt = DEFAULT_MAX_STATE_BYTES
    flush_interval_ms: _NonNegativeFloat = DEFAULT_FLUSH_INTERVAL_MS
    max_pending_writes: _PositiveInt = DEFAULT_MAX_PENDING_WRITES
    max_update_attempts: _PositiveInt = DEFAULT_MAX_UPDATE_ATTEMPTS
    default_ttl_s: _PositiveFloat | None = None
    once_ttl_s: _PositiveFloat = DEFAULT_ONCE_TTL_S
    purge_interval_s: _PositiveFloat = DEFAULT_PURGE_INTERVAL_S
    conversation_max_messages: _PositiveInt = DEFAULT_CONVERSATION_MAX_MESSAGES
    conversation_ttl_s: _PositiveFloat | None = None
