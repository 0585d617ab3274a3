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

from .bus import Bus, BusStatistics, MemoryBus, Subscription, SubscriptionStatistics
from .config import (
    AgentConfig,
    BusConfig,
    Config,
    DlqConfig,
    KafkaConfig,
    LLMConfig,
    MonitoringConfig,
    RetryConfig,
    RetryOverride,
    RunnerConfig,
    config_from_dict,
    load_config,
)
from .context import Context
from .dlq import DeadLetters
from .errors import (
    AgentflowError,
    BackpressureError,
    BusError,
    ConfigError,
    DeadLetteredError,
    EventDecodeError,
    EventError,
    EventTooLargeError,
    HandlerTimeoutError,
    LifecycleError,
    Reject,
    RequestTimeoutError,
    Retry,
    Skip,
    WorkflowDepthError,
)
from .events import DeadLetter, Event, EventCodec, RawEvent, new_event_id
from .hdr import HistogramStatistics, LatencyHistogram
from .metrics import Metrics
from .pool import WorkerPool, WorkerPoolStatistics
from .resilience import RetryPolicy
from .runner import Runner
from .statistics import AgentStatistics, RunnerState, RunnerStatistics, ShutdownReport

__version__ = "0.1.0"

__all__ = [
    "AgentConfig",
    "AgentStatistics",
    "AgentflowError",
    "BackpressureError",
    "Bus",
    "BusConfig",
    "BusError",
    "BusStatistics",
    "Config",
    "ConfigError",
    "Context",
    "DeadLetter",
    "DeadLetteredError",
    "DeadLetters",
    "DlqConfig",
    "Event",
    "EventCodec",
    "EventDecodeError",
    "EventError",
    "EventTooLargeError",
    "HandlerTimeoutError",
    "HistogramStatistics",
    "KafkaConfig",
    "LLMConfig",
    "LatencyHistogram",
    "LifecycleError",
    "MemoryBus",
    "Metrics",
    "MonitoringConfig",
    "RawEvent",
    "Reject",
    "RequestTimeoutError",
    "Retry",
    "RetryConfig",
    "RetryOverride",
    "RetryPolicy",
    "Runner",
    "RunnerConfig",
    "RunnerState",
    "RunnerStatistics",
    "ShutdownReport",
    "Skip",
    "Subscription",
    "SubscriptionStatistics",
    "WorkerPool",
    "WorkerPoolStatistics",
    "WorkflowDepthError",
    "__version__",
    "config_from_dict",
    "load_config",
    "new_event_id",
]
