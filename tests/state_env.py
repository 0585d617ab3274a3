"""Stores and backends over one test's state, whichever backend the test runs on (conftest's ``state`` and
``durable_state`` fixtures).

Every store a test opens shares that test's data: one ``MemoryBackend`` (passed to each store), one SQLite file
in ``tmp_path``, or one key prefix on the session's Redis server. So a second store stands for another worker
process (its own cache and buffer, the same data), and a raw backend reads what was really committed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec
from redis_server import RedisServer

from agentflow.state import MemoryBackend, StateBackend, StateConfig, StateStore, create_backend

__all__ = ["PASSWORD_ENV", "StateEnv"]

PASSWORD_ENV = "AGENTFLOW_TEST_REDIS_PASSWORD"


class StateEnv:
    """Opens started stores and backends on one backend kind and one test's data; ``aclose`` closes them."""

    def __init__(self, kind: str, tmp_path: Path, redis: RedisServer | None) -> None:
        self.kind = kind
        self.path = str(tmp_path / "state.db")
        self.prefix = f"t{os.urandom(5).hex()}:"
        self.redis = redis
        self.memory = MemoryBackend() if kind == "memory" else None
        self._open: list[StateStore | StateBackend] = []

    def __repr__(self) -> str:
        return f"<StateEnv {self.kind}>"

    @property
    def env(self) -> dict[str, str]:
        return {PASSWORD_ENV: self.redis.password} if self.redis is not None else {}

    @property
    def durable(self) -> bool:
        return self.kind != "memory"

    def config(self, **overrides: Any) -> StateConfig:
        data: dict[str, Any] = {"backend": self.kind, "path": self.path, "key_prefix": self.prefix}
        if self.redis is not None:
            data.update(url=self.redis.url, password_env=PASSWORD_ENV)
        data.update(overrides)
        return msgspec.convert(data, StateConfig)

    async def start(self) -> None:
        if self.memory is not None:
            await self.memory.start()

    async def store(self, **overrides: Any) -> StateStore:
        """A started store (another 'worker') on this test's data, with ``[memory]`` keys overridden."""
        store = StateStore(self.config(**overrides), backend=self.memory, env=self.env)
        self._open.append(store)
        await store.start()
        return store

    async def backend(self) -> StateBackend:
        """A started raw backend on this test's data: what is really committed."""
        if self.memory is not None:
            return self.memory
        backend = create_backend(self.config(), env=self.env)
        self._open.append(backend)
        await backend.start()
        return backend

    async def aclose(self) -> None:
        for item in reversed(self._open):
            await item.aclose()
        if self.memory is not None:
            await self.memory.aclose()
