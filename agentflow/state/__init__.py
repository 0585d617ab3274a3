"""Agent state: ``ctx.state`` handles over a write-behind store, on memory, SQLite or Redis (docs/state.md).

* :class:`StateConfig` — the ``[memory]`` section.
* :class:`StateStore` — cache, write-behind buffer and codec in front of a backend; :class:`Unit` — one event's
  writes, awaited before the event is acknowledged.
* :class:`StateHandle` — what ``ctx.state`` is; :class:`ConversationMemory` — what ``ctx.memory`` is.
* Backends behind :class:`StateBackend`: :class:`MemoryBackend`, ``SQLiteBackend`` (:mod:`agentflow.state.sqlite`)
  and ``RedisBackend`` (:mod:`agentflow.state.redis`, needs ``agentflow-runner[redis]``); :func:`create_backend` picks
  one from the config and imports only that one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..config import StateConfig
from ..errors import ConfigError
from .base import BackendStatistics, Record, StateBackend, Write, WriteResult
from .conversation import ConversationMemory
from .handle import StateHandle
from .memory import MemoryBackend
from .store import MISSING, StateStore, StoreStatistics
from .unit import Unit

__all__ = [
    "MISSING",
    "BackendStatistics",
    "ConversationMemory",
    "MemoryBackend",
    "Record",
    "StateBackend",
    "StateConfig",
    "StateHandle",
    "StateStore",
    "StoreStatistics",
    "Unit",
    "Write",
    "WriteResult",
    "create_backend",
]


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
            checkpoint_interval_s=config.sqlite_checkpoint_interval_s,
            switch_interval_s=config.sqlite_switch_interval_s,
        )
    if config.backend == "redis":
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
