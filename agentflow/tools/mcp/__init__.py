"""MCP servers as tools, through pools of sessions that are opened once and reused.

One :class:`MCPPool` per ``[mcp.NAME]``. It opens ``sessions_per_replica`` sessions to each replica when it
starts (a stdio replica is a process of its own; an HTTP replica a URL), and every call reuses them: there is
never an ``initialize`` per call. Calls go round-robin over the healthy sessions with room
(``max_in_flight_per_session``); a breaker per replica stops calls to a replica that keeps failing. Each
session pings its server every ``health_interval_s``; a session that fails, closes or does not answer a ping
within ``ping_timeout_s`` is closed and reopened with exponential backoff, and its replica is skipped until it
answers again. A call that failed before it was sent (the replica refused the connection, or no longer knew
the session) goes to another replica; a call in flight when its session broke is retried only when the tool is
idempotent, otherwise the error is the model's tool message.

With ``affinity = "key"`` (or ``"workflow"``) the calls of one event key (or workflow) stay on one session for
as long as it lives, which stateful servers need; ``isolate = true`` also guarantees that no session ever serves
two keys: a key gets a fresh session, and a session goes back to the pool only by being reopened.

The server's tools become :class:`MCPTool` s named ``NAME.tool`` in a :class:`~agentflow.tools.ToolRegistry`,
with the server's input schema, replaced when the server sends ``notifications/tools/list_changed``::

    registry = ToolRegistry()
    async with MCPPool("search", MCPConfig(transport="stdio", command="search-server"), registry=registry):
        result = await ToolBox(registry).call("search.web", {"q": "agentflow"})

This package is the only part of agentflow that imports the official ``mcp`` SDK (``pip install
'agentflow-runner[mcp]'``). Each session lives in a task of its own, because the SDK's transports are anyio context
managers that must be entered and left by the same task; the pool's tasks live in one TaskGroup owned by the
pool's supervisor task.
"""

from __future__ import annotations

try:
    import mcp  # noqa: F401 - the optional dependency, checked before the modules that need it
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "agentflow.tools.mcp needs the MCP SDK; install it with: pip install 'agentflow-runner[mcp]'"
    ) from exc

from ._hub import MCPHub
from ._pool import MCPPool, MCPPoolStatistics, ReplicaStatistics
from ._tool import MCPTool

__all__ = ["MCPHub", "MCPPool", "MCPPoolStatistics", "MCPTool", "ReplicaStatistics"]
