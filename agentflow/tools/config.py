"""``[tools.NAME]`` and ``[mcp.NAME]``: per-tool overrides and MCP servers, as frozen msgspec Structs.

Both load from TOML like the rest of the configuration (``forbid_unknown_fields``, units in the names)::

    [tools.get_weather]
    timeout_s = 5
    concurrency = 4

    [tools."search.web"]          # a tool of the MCP server [mcp.search]
    idempotent = true
    retry = { max_attempts = 3 }

    [mcp.search]
    transport = "http"
    replicas = ["http://10.0.0.5:8000/mcp", "http://10.0.0.6:8000/mcp"]
    sessions_per_replica = 2
    headers = { Authorization_env = "SEARCH_TOKEN" }    # the value comes from $SEARCH_TOKEN

Secrets never sit in the file: in ``headers`` and ``env``, a key ending in ``_env`` names the environment
variable that holds the value of the key without that suffix. This module imports only msgspec and agentflow's
config layer; the MCP SDK is imported by :mod:`agentflow.tools.mcp` alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Literal

import msgspec

from ..config import RetryConfig
from ..errors import ConfigError
from ..resilience.breaker import BreakerConfig

__all__ = [
    "DEFAULT_MAX_RESULT_BYTES",
    "DEFAULT_TOOL_TIMEOUT_S",
    "MCPConfig",
    "ToolConfig",
    "resolve_env_keys",
]

DEFAULT_TOOL_TIMEOUT_S = 30.0
DEFAULT_MAX_RESULT_BYTES = 65_536
DEFAULT_MCP_CALL_TIMEOUT_S = 30.0
DEFAULT_MCP_CONNECT_TIMEOUT_S = 20.0
DEFAULT_MCP_ACQUIRE_TIMEOUT_S = 5.0
DEFAULT_MCP_HEALTH_INTERVAL_S = 10.0
DEFAULT_MCP_PING_TIMEOUT_S = 5.0
DEFAULT_MCP_RECONNECT_BACKOFF_S = 0.2
DEFAULT_MCP_MAX_RECONNECT_BACKOFF_S = 30.0
DEFAULT_MCP_MAX_IN_FLIGHT_PER_SESSION = 16
DEFAULT_MCP_MAX_KEYS = 10_000

_PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
_PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
_NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]
_ResultBytes = Annotated[int, msgspec.Meta(ge=64)]


class ToolConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[tools.NAME]``: one tool's overrides; ``None`` keeps what the code (or the MCP server) declared.

    ``timeout_s`` bounds one attempt, waiting for a ``concurrency`` slot included; ``retry`` applies only to a
    tool that is ``idempotent``; ``breaker`` puts a circuit breaker in front of the tool; results longer than
    ``max_result_bytes`` (UTF-8) are cut, and the tool message says so::

        ToolConfig(timeout_s=5.0, concurrency=4, idempotent=True, retry=RetryConfig(max_attempts=3))
    """

    timeout_s: _PositiveFloat | None = None
    concurrency: _PositiveInt | None = None
    idempotent: bool | None = None
    max_result_bytes: _ResultBytes | None = None
    retry: RetryConfig | None = None
    breaker: BreakerConfig | None = None


class MCPConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[mcp.NAME]``: one MCP server whose tools agents use as ``NAME.tool``; see docs/tools.md.

    ``transport = "stdio"`` starts ``command`` with ``args`` (and ``env`` added to a minimal environment) once
    per replica, each process serving one session; ``"http"`` speaks streamable HTTP to ``url``, or to each URL
    when ``replicas`` is a list. Sessions open when the pool starts and are reused for every call::

        MCPConfig(transport="stdio", command="python", args=("server.py",), replicas=2)
        MCPConfig(transport="http", replicas=("http://a:8000/mcp", "http://b:8000/mcp"), sessions_per_replica=4)
    """

    transport: Literal["stdio", "http"]
    command: str = ""
    args: tuple[str, ...] = ()
    env: dict[str, str] = msgspec.field(default_factory=dict)
    cwd: str | None = None
    url: str = ""
    replicas: _PositiveInt | tuple[str, ...] = 1
    sessions_per_replica: _PositiveInt = 1
    call_timeout_s: _PositiveFloat = DEFAULT_MCP_CALL_TIMEOUT_S
    connect_timeout_s: _PositiveFloat = DEFAULT_MCP_CONNECT_TIMEOUT_S
    acquire_timeout_s: _PositiveFloat = DEFAULT_MCP_ACQUIRE_TIMEOUT_S
    health_interval_s: _PositiveFloat = DEFAULT_MCP_HEALTH_INTERVAL_S
    ping_timeout_s: _PositiveFloat = DEFAULT_MCP_PING_TIMEOUT_S
    reconnect_backoff_s: _NonNegativeFloat = DEFAULT_MCP_RECONNECT_BACKOFF_S
    max_reconnect_backoff_s: _NonNegativeFloat = DEFAULT_MCP_MAX_RECONNECT_BACKOFF_S
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    tools: tuple[str, ...] = ("*",)
    exclude_tools: tuple[str, ...] = ()
    affinity: Literal["none", "key", "workflow"] = "none"
    isolate: bool = False
    max_in_flight_per_session: _PositiveInt = DEFAULT_MCP_MAX_IN_FLIGHT_PER_SESSION
    max_keys: _PositiveInt = DEFAULT_MCP_MAX_KEYS
    breaker: BreakerConfig = msgspec.field(default_factory=BreakerConfig)

    def __post_init__(self) -> None:
        # msgspec checks the field types; these are the rules between fields, as whole sentences.
        if self.transport == "stdio":
            if not self.command:
                raise ValueError('An MCP server with transport = "stdio" needs command, the program to start.')
            if not isinstance(self.replicas, int):
                raise ValueError(
                    'replicas is a list of URLs, which only transport = "http" uses; for "stdio" give the number '
                    "of processes to start."
                )
            if self.sessions_per_replica != 1:
                raise ValueError(
                    "A stdio MCP server process serves one session, so sessions_per_replica must be 1 for "
                    'transport = "stdio"; raise replicas to start more processes.'
                )
        elif isinstance(self.replicas, int):
            if not self.url:
                raise ValueError('An MCP server with transport = "http" needs url, or replicas as a list of URLs.')
        elif not self.replicas:
            raise ValueError("replicas must list at least one URL.")
        if self.isolate and self.affinity == "none":
            raise ValueError(
                'isolate = true keeps every key on a session of its own, which needs affinity = "key" or "workflow".'
            )
        if self.max_reconnect_backoff_s < self.reconnect_backoff_s:
            raise ValueError("max_reconnect_backoff_s must be at least reconnect_backoff_s.")

    def replica_targets(self) -> tuple[str, ...]:
        """One entry per replica: its URL for HTTP, ``"#<n>"`` for a stdio process."""
        if isinstance(self.replicas, tuple):
            return self.replicas
        if self.transport == "http":
            return (self.url,) * self.replicas
        return tuple(f"#{i}" for i in range(self.replicas))


def resolve_env_keys(values: Mapping[str, str], env: Mapping[str, str] | None = None, *, where: str) -> dict[str, str]:
    """Return ``values`` with each ``NAME_env = "VAR"`` replaced by ``NAME = $VAR``.

    Raises :class:`ConfigError` naming ``where`` (say ``mcp.search.headers``) when a variable is not set. The
    resolved values are secrets: callers keep them out of reprs, logs and metrics.
    """
    env = os.environ if env is None else env
    out: dict[str, str] = {}
    for key, value in values.items():
        if key.endswith("_env") and len(key) > 4:
            name = key[:-4]
            secret = env.get(value)
            if secret is None:
                raise ConfigError(
                    f"{where}.{key} names the environment variable {value!r}, which is not set; set it, or remove "
                    "the key.",
                    key=f"{where}.{key}",
                )
            out[name] = secret
        else:
            out[key] = value
    return out
