"""Configuration (L1): frozen, typed msgspec Structs loaded from TOML, with environment overrides.

``schema`` holds one Struct per TOML table (``[runner]``, ``[bus]``, ``[kafka]``, ``[llm.NAME]``, ``[tools.NAME]``,
``[mcp.NAME]``, ``[memory]``, ``[workflows.NAME]`` ...) and their defaults; ``loader`` reads a file and the
environment into a :class:`Config` and names the key, the file and the fix when something is wrong
(docs/configuration.md)::

    config = load_config("config/agentflow.toml")
"""

from .loader import ENV_PREFIX, config_from_dict, load_config
from .schema import (
    AgentConfig,
    AlertsConfig,
    BusConfig,
    Config,
    DlqConfig,
    KafkaConfig,
    LLMBatchingConfig,
    LLMBreakerConfig,
    LLMCacheConfig,
    LLMConfig,
    LLMLimitsConfig,
    LLMPrice,
    LLMRetryConfig,
    MCPConfig,
    MonitoringConfig,
    RetryConfig,
    RetryOverride,
    RunnerConfig,
    StateConfig,
    ToolBreakerConfig,
    ToolConfig,
    TracingConfig,
    WorkflowConfig,
    WorkflowStepConfig,
)

__all__ = [
    "ENV_PREFIX",
    "AgentConfig",
    "AlertsConfig",
    "BusConfig",
    "Config",
    "DlqConfig",
    "KafkaConfig",
    "LLMBatchingConfig",
    "LLMBreakerConfig",
    "LLMCacheConfig",
    "LLMConfig",
    "LLMLimitsConfig",
    "LLMPrice",
    "LLMRetryConfig",
    "MCPConfig",
    "MonitoringConfig",
    "RetryConfig",
    "RetryOverride",
    "RunnerConfig",
    "ToolBreakerConfig",
    "ToolConfig",
    "StateConfig",
    "WorkflowConfig",
    "WorkflowStepConfig",
    "TracingConfig",
    "config_from_dict",
    "load_config",
]
