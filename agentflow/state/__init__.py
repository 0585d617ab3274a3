"""Agent state: ``ctx.state`` handles over a write-behind store, on memory, SQLite or Redis (docs/state.md).

* :class:`StateConfig` — the ``[memory]`` section.
* :class:`StateStore` — cache, write-behind buffer and codec in front of a backend; :class:`Unit` — one event's
  writes, awaited before the event is acknowledged.
* :class:`StateHandle` — what ``ctx.state`` is; :class:`ConversationMemory` — what ``ctx.memory`` is.
* Backends behind :class:`StateBackend`: :class:`MemoryBackend`, ``SQLiteBackend`` (:mod:`agentflow.state.sqlite`)
  and ``RedisBackend`` (:mod:`agentflow.state.redis`, needs ``agentflow[redis]``); :func:`create_backend` picks
  one from the config and imports only that one.
"""

from __future__ import annotations

from .base import BackendStatistics, Lifecycle, Record, StateBackend, Write, WriteResult
from .config import StateConfig
from .conversation import ConversationMemory
from .handle import StateHandle
from .memory import MemoryBackend
from .store import MISSING, StateStore, StoreStatistics, Unit, create_backend

__all__ = [
    "MISSING",
    "BackendStatistics",
    "ConversationMemory",
    "Lifecycle",
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
