"""Every ``[mcp.*]`` server of a runner, started and closed together."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from ...config import MCPConfig
from ...lifecycle import Lifecycle
from ...metrics import Metrics
from ..registry import ToolRegistry
from ._pool import MCPPool, MCPPoolStatistics


class MCPHub(Lifecycle):
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

    async def _open(self) -> None:
        """Start every pool at once; if one fails, they are all closed and its error is raised."""
        try:
            async with asyncio.TaskGroup() as tg:
                for pool in self.pools.values():
                    tg.create_task(pool.start())
        except BaseExceptionGroup as group:
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise

    async def _close(self) -> None:
        for pool in self.pools.values():
            await pool.aclose()

    def statistics(self) -> dict[str, MCPPoolStatistics]:
        return {name: pool.statistics() for name, pool in self.pools.items()}

    def __repr__(self) -> str:
        return f"<MCPHub state={self.state.value} servers={sorted(self.pools)}>"
