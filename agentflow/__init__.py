"""agentflow: an event-driven runner for LLM agents.

Producers emit events; a bus (in-memory by default) carries them; a bounded worker pool runs the agents
subscribed to them::

    from agentflow import Runner

    runner = Runner()

    @runner.agent("greetings")
    async def greet(event, ctx):
        return f"hello {event.payload['name']}"

    async with runner:
        print(await runner.request("greetings", {"name": "Ada"}))
"""

from .agents import BatchContext, Context
from .bus import Bus, BusStatistics, MemoryBus, Subscription, SubscriptionStatistics, create_bus
from .components import ComponentFigures, ComponentSample, HistSample
from .config import (
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
    MonitoringConfig,
    RetryConfig,
    RetryOverride,
    RunnerConfig,
    TracingConfig,
    config_from_dict,
    load_config,
)
from .dlq import DeadLetterPage, DeadLetters
from .errors import (
    AgentflowError,
    BackpressureError,
    BatchError,
    BatchItemTooLargeError,
    BusError,
    BusUnavailableError,
    CircuitOpenError,
    ConfigError,
    DeadLetteredError,
    DeliveryUncertainError,
    EventDecodeError,
    EventError,
    EventTooLargeError,
    HandlerTimeoutError,
    LifecycleError,
    LLMAuthError,
    LLMBadRequestError,
    LLMError,
    LLMRateLimitedError,
    LLMStreamInterruptedError,
    LLMTimeoutError,
    LLMUnavailableError,
    MCPError,
    MCPUnavailableError,
    RateLimitError,
    RateLimitQueueFullError,
    RateLimitTooLargeError,
    Reject,
    RequestTimeoutError,
    Retry,
    Skip,
    StateConflictError,
    StateDecodeError,
    StateEncodeError,
    StateError,
    StateTooLargeError,
    StateUnavailableError,
    TokenBudgetExceededError,
    ToolArgumentsError,
    ToolError,
    ToolExecutionError,
    ToolLoopError,
    ToolTimeoutError,
    UnknownToolError,
    WorkflowDepthError,
)
from .events import DeadLetter, Event, EventCodec, RawEvent, new_event_id
from .hdr import HistogramStatistics, LatencyHistogram
from .insight import (
    Alert,
    CostHistory,
    CostReport,
    ProfileReport,
    ProfileSnapshot,
    build_cost_report,
    build_profile,
    take_snapshot,
)
from .llm.batching import BatcherStatistics, MicroBatcher
from .llm.cache import CacheStatistics, TTLCache
from .llm.cost import CostRow, CostTracker
from .llm.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    EmbeddingResponse,
    FunctionCall,
    MessageToolCall,
    StreamDelta,
    ToolCall,
    Usage,
)
from .metrics import Metrics
from .pool import WorkerPool, WorkerPoolStatistics
from .producer import Producer, ProducerStatistics
from .resilience import (
    BreakerConfig,
    BreakerPermit,
    BreakerRegistry,
    BreakerState,
    BreakerStatistics,
    CircuitBreaker,
    RateLimiter,
    RateLimiterStatistics,
    RetryBudget,
    RetryBudgetStatistics,
    RetryPolicy,
)
from .runner import Runner
from .scrub import scrub_secrets
from .statistics import AgentStatistics, RunnerState, RunnerStatistics, ShutdownReport

__version__ = "0.1.0"

__all__ = [
    "AgentConfig",
    "AgentLLM",
    "AgentStatistics",
    "AgentflowError",
    "Alert",
    "AlertsConfig",
    "BackpressureError",
    "BatchContext",
    "BatchError",
    "BatchItemTooLargeError",
    "BatcherStatistics",
    "BreakerConfig",
    "BreakerPermit",
    "BreakerRegistry",
    "BreakerState",
    "BreakerStatistics",
    "Bus",
    "BusConfig",
    "BusError",
    "BusStatistics",
    "BusUnavailableError",
    "CacheStatistics",
    "ChatMessage",
    "ChatResponse",
    "ChatStream",
    "CircuitBreaker",
    "CircuitOpenError",
    "CompletionResponse",
    "ComponentFigures",
    "ComponentSample",
    "Config",
    "ConfigError",
    "Context",
    "CostHistory",
    "CostReport",
    "CostRow",
    "CostTracker",
    "DeadLetter",
    "DeadLetterPage",
    "DeadLetteredError",
    "DeadLetters",
    "DeliveryUncertainError",
    "DlqConfig",
    "EmbeddingResponse",
    "Event",
    "EventCodec",
    "EventDecodeError",
    "EventError",
    "EventTooLargeError",
    "Faults",
    "FunctionCall",
    "HandlerTimeoutError",
    "HistSample",
    "HistogramStatistics",
    "KafkaConfig",
    "LLMAuthError",
    "LLMBadRequestError",
    "LLMBatchingConfig",
    "LLMBreakerConfig",
    "LLMCacheConfig",
    "LLMConfig",
    "LLMError",
    "LLMHub",
    "LLMLimitsConfig",
    "LLMPrice",
    "LLMRateLimitedError",
    "LLMRetryConfig",
    "LLMStreamInterruptedError",
    "LLMTimeoutError",
    "LLMUnavailableError",
    "LatencyHistogram",
    "LatencyModel",
    "LifecycleError",
    "MCPError",
    "MCPUnavailableError",
    "MemoryBus",
    "MessageToolCall",
    "Metrics",
    "MicroBatcher",
    "MockLLMServer",
    "MockStats",
    "MonitoringConfig",
    "Producer",
    "ProducerStatistics",
    "ProfileReport",
    "ProfileSnapshot",
    "ProviderClient",
    "RateLimitError",
    "RateLimitQueueFullError",
    "RateLimitTooLargeError",
    "RateLimiter",
    "RateLimiterStatistics",
    "RawEvent",
    "Reject",
    "RequestTimeoutError",
    "Retry",
    "RetryBudget",
    "RetryBudgetStatistics",
    "RetryConfig",
    "RetryOverride",
    "RetryPolicy",
    "Runner",
    "RunnerConfig",
    "RunnerState",
    "RunnerStatistics",
    "ShutdownReport",
    "Skip",
    "StateConflictError",
    "StateDecodeError",
    "StateEncodeError",
    "StateError",
    "StateTooLargeError",
    "StateUnavailableError",
    "StreamDelta",
    "Subscription",
    "SubscriptionStatistics",
    "TTLCache",
    "TokenBudgetExceededError",
    "ToolArgumentsError",
    "ToolCall",
    "ToolError",
    "ToolExecutionError",
    "ToolLoopError",
    "ToolTimeoutError",
    "TracingConfig",
    "UnknownToolError",
    "Usage",
    "WorkerPool",
    "WorkerPoolStatistics",
    "WorkflowDepthError",
    "__version__",
    "build_cost_report",
    "build_profile",
    "config_from_dict",
    "create_bus",
    "load_config",
    "new_event_id",
    "scrub_secrets",
    "take_snapshot",
]


# The LLM client and the mock server import aiohttp; `import agentflow` does not, until one of these is used.
_LAZY = {
    "AgentLLM": "agentflow.llm.hub",
    "ChatStream": "agentflow.llm.stream",
    "LLMHub": "agentflow.llm.hub",
    "ProviderClient": "agentflow.llm.client",
    "Faults": "agentflow.llm.mock",
    "LatencyModel": "agentflow.llm.mock",
    "MockLLMServer": "agentflow.llm.mock",
    "MockStats": "agentflow.llm.mock",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'agentflow' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
