"""Every ``[mcp.*]`` server of a runner, started and closed together."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from ...config import MCPConfig
from ...errors import LifecycleError
from ...metrics import Metrics
from ..registry import ToolRegistry
from ._pool import MCPPool, MCPPoolStatistics


class MCPHub:
    """Every ``[mcp.*]`` server of a runner: their pools, started together and closed together.

    ``async with MCPHub(config.mcp, registry=registry) as hub:`` puts every server's tools into ``registry``.
    """

    def __init__(
        self,
        servers: Mapping[str, MCPConfig],
        *,
        registry: ToolRegistry,
        env: Mapping[str, str] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.registry = registry
        self.pools = {
            name: MCPPool(name, cfg, registry=registry, env=env, metrics=metrics) for name, cfg in servers.items()
        }
        self._state = "created"

    async def __aenter__(self) -> MCPHub:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Start every pool at once; if one fails, close them all and raise its error."""
        if self._state != "created":
            raise LifecycleError("An MCPHub starts once; create a new one.")
        self._state = "running"
        try:
            async with asyncio.TaskGroup() as tg:
                for pool in self.pools.values():
                    tg.create_task(pool.start())
        except BaseException as exc:
            await self.aclose()
            if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
                raise exc.exceptions[0] from None
            raise

    async def aclose(self) -> None:
        if self._state == "closed":
            return
        self._state = "closed"
        for pool in self.pools.values():
            await pool.aclose()

    def statistics(self) -> dict[str, MCPPoolStatistics]:
        return {name: pool.statistics() for name, pool in self.pools.items()}

    def __repr__(self) -> str:
        return f"<MCPHub state={self._state} servers={sorted(self.pools)}>"
