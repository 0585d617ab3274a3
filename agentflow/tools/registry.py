"""The tools of a runner by name, with ``[tools.NAME]`` overrides applied as tools are added.

MCP servers add their tools as a group (``NAME.tool``); a version number tells selections
(:class:`~agentflow.tools.toolbox.ToolSet`) when to look again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ..config import ToolConfig
from ..errors import UnknownToolError
from .base import Tool, ToolStatistics
from .function import tool

if TYPE_CHECKING:
    from .toolbox import ToolSet

__all__ = ["ToolRegistry"]


class ToolRegistry:
    """Every tool of a runner by name; ``[tools.NAME]`` overrides are applied as tools are added.

    MCP servers add their tools as a group, ``NAME.tool``, replaced whole when the server's list changes.
    ``version`` changes with every change, so selections over the registry know when to look again::

        registry = ToolRegistry({"get_weather": ToolConfig(timeout_s=5)})
        registry.add(get_weather)
        registry.select(["get_weather", "search.*"])
    """

    def __init__(self, configs: Mapping[str, ToolConfig] | None = None) -> None:
        self.configs: dict[str, ToolConfig] = dict(configs or {})
        self._tools: dict[str, Tool] = {}
        self._everything: ToolSet | None = None
        self.version = 0

    def add(self, item: Tool | Callable[..., Any], *, replace: bool = False) -> Tool:
        """Add a tool (an async function becomes one with :func:`tool`); returns the tool as configured."""
        t = item if isinstance(item, Tool) else tool(item)
        if t.name in self._tools and not replace:
            raise ValueError(f"A tool named {t.name!r} is already registered; give the new one another name.")
        t = t.configured(self.configs.get(t.name))
        self._tools[t.name] = t
        self.version += 1
        return t

    def set_group(self, prefix: str, tools: Mapping[str, Tool]) -> None:
        """Replace every tool named ``prefix.*`` by ``tools`` (keyed by their full names) in one step."""
        start = prefix + "."
        kept = {n: t for n, t in self._tools.items() if not n.startswith(start)}
        for n, t in tools.items():
            if not n.startswith(start):
                raise ValueError(f"Tool {n!r} does not belong to group {prefix!r}.")
            old = self._tools.get(n)
            # A tool whose definition did not change keeps its object: its statistics and breaker go on.
            same = old is not None and old.parameters == t.parameters and old.description == t.description
            kept[n] = old if same and old is not None else t.configured(self.configs.get(n))
        self._tools = kept
        self.version += 1

    def remove(self, name: str) -> None:
        if self._tools.pop(name, None) is not None:
            self.version += 1

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def __getitem__(self, name: str) -> Tool:
        t = self._tools.get(name)
        if t is None:
            raise UnknownToolError(f"No tool named {name!r} is registered.", tool=name)
        return t

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(list(self._tools.values()))

    def __len__(self) -> int:
        return len(self._tools)

    def names(self) -> list[str]:
        return sorted(self._tools)

    def unused_configs(self) -> list[str]:
        """``[tools.NAME]`` tables that name no registered tool (a typo, or an MCP tool that went away)."""
        return sorted(n for n in self.configs if n not in self._tools)

    def select(self, patterns: list[str] | tuple[str, ...] | None = None) -> ToolSet:
        """The tools matching ``patterns`` (names, or globs such as ``"search.*"``; None: all), kept current."""
        from .toolbox import ToolSet  # toolbox builds on this module

        if patterns is None:  # the selection of every tool is shared: ToolBox(registry) per event costs nothing
            if self._everything is None:
                self._everything = ToolSet(self, None)
            return self._everything
        return ToolSet(self, patterns)

    def statistics(self) -> dict[str, ToolStatistics]:
        return {n: t.statistics() for n, t in self._tools.items()}

    def __repr__(self) -> str:
        return f"<ToolRegistry tools={len(self._tools)} version={self.version}>"
