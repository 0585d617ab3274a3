"""Tools for agents: Python functions and MCP servers, called one at a time, in parallel or as streams.

- :func:`tool` makes a tool of an ``async def`` (schema from the type hints, description from the docstring);
  :class:`ToolRegistry` holds a runner's tools and applies ``[tools.NAME]`` overrides.
- :class:`ToolBox` is ``ctx.tools``: ``schemas()``, ``call``, ``call_many`` (parallel, in order), ``stream``.
- :class:`LoopDetector` spots a model repeating the same calls turn after turn.
- :mod:`agentflow.tools.mcp` (needs ``pip install 'agentflow-runner[mcp]'``) pools sessions to MCP servers and offers
  their tools as ``NAME.tool``.

See docs/tools.md.
"""

from ..config import MCPConfig, ToolConfig
from .base import OUTCOMES, Tool, ToolResult, ToolStatistics
from .function import FunctionTool, tool
from .loops import LoopDetector, LoopVerdict, call_signature, turn_signature
from .registry import ToolRegistry
from .toolbox import DEFAULT_MAX_PARALLEL_TOOLS, ToolBox, ToolSet, wire_name

__all__ = [
    "DEFAULT_MAX_PARALLEL_TOOLS",
    "OUTCOMES",
    "FunctionTool",
    "LoopDetector",
    "LoopVerdict",
    "MCPConfig",
    "Tool",
    "ToolBox",
    "ToolConfig",
    "ToolRegistry",
    "ToolResult",
    "ToolSet",
    "ToolStatistics",
    "call_signature",
    "tool",
    "turn_signature",
    "wire_name",
]
