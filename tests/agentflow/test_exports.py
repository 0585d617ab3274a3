"""The public API: ``agentflow.__all__`` is sorted, importable and complete (httpx's test_exported_members)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import agentflow

#: agentflow.state's names for backend authors and scripts; handlers reach state through ctx.state (StateHandle).
_STATE_API = {
    "BackendStatistics",
    "MISSING",
    "MemoryBackend",
    "Record",
    "StateBackend",
    "Unit",
    "Write",
    "WriteResult",
    "create_backend",
}

#: Names in a submodule's ``__all__`` that are deliberately not part of the top-level API, and why.
INTERNAL = {
    # runner wiring; handlers use Event, Context and BatchContext
    "agentflow.agents": {"AgentSpec", "AgentWorker", "BatchAgentWorker", "BatchHandler", "Handler", "Host"},
    "agentflow.agents.batch": {"BatchAgentWorker", "BatchHandler"},
    "agentflow.agents.context": {"ContextOwner"},
    "agentflow.agents.failures": {"TERMINAL", "FailurePath", "Units"},
    "agentflow.agents.loop": {"DEFAULT_MAX_TURNS", "ConversationLike", "run_agent"},  # reached as ctx.llm.run
    "agentflow.agents.spec": {"AgentSpec", "Handler", "Host"},
    "agentflow.agents.worker": {"AgentWorker"},
    "agentflow.bus": {"Item"},  # a type alias of the bus contract, for bus implementers
    "agentflow.bus.base": {"Item"},
    "agentflow.bus.memory": {"MemorySubscription"},  # reached through Bus.subscribe
    # optional dependency (aiokafka): importing agentflow must not import it; create_bus builds the Kafka bus
    "agentflow.bus.kafka": {"KafkaBus", "KafkaSubscription", "client_options"},
    "agentflow.bus.kafka.bus": {"KafkaBus"},
    "agentflow.bus.kafka.client": {"Connector", "client_options"},
    "agentflow.bus.kafka.link": {"BusLink"},
    "agentflow.bus.kafka.offsets": {"OffsetTracker", "PartitionOffsets"},  # the Kafka bus's bookkeeping
    "agentflow.bus.kafka.records": {"RecordReader"},
    "agentflow.bus.kafka.retry": {"GROUP_HEADER", "NOT_BEFORE_HEADER", "RetryTiers", "tier_names"},
    "agentflow.bus.kafka.subscription": {"KafkaSubscription"},
    # request/reply plumbing shared by the Runner and the Producer
    "agentflow.requests": {
        "INBOX_PREFIX",
        "REPLY_HEADER",
        "PendingRequests",
        "ReplySender",
        "dead_lettered_error",
        "reply_event",
        "reply_outcome",
    },
    "agentflow.config": {"ENV_PREFIX"},
    "agentflow.config.loader": {"ENV_PREFIX"},
    "agentflow.events": {
        "DEFAULT_MAX_EVENT_BYTES",
        "DEAD_LETTER_ERROR_BYTES",
        "DEAD_LETTER_RAW_BYTES",
    },  # defaults, bounds
    "agentflow.metrics": {"MAX_OBSERVED_S", "AgentMetrics", "GaugeSample", "Pow2Histogram"},  # Metrics' internals
    # the base every resource's lifecycle follows; users see State as RunnerState and each resource's .state
    "agentflow.lifecycle": {"Lifecycle", "RUNNING", "State", "shielded"},
    "agentflow.pool": {"Slot"},  # a worker's timing state, owned by the pool
    # the parts of the profile and cost reports, reached through ProfileReport, ProfileSnapshot and CostReport;
    # the runner's insight (runner.insight) and what it runs
    "agentflow.components": {"KINDS"},
    "agentflow.insight": {
        "ALERTS",
        "AgentSample",
        "AlertMonitor",
        "CacheUse",
        "CostGroup",
        "Flag",
        "Insight",
        "LoopLag",
        "LoopLagStatistics",
        "ProfileRow",
        "ProviderSample",
        "Recommendation",
        "RunFigures",
        "Totals",
        "WorkflowCost",
        "WorkflowTotals",
    },
    "agentflow.insight.alerts": {"ALERTS", "PROCESS", "AlertMonitor"},
    "agentflow.insight.costs": {"COSTS_FORMAT", "KEY_PREFIX", "CostGroup", "RunFigures", "WorkflowCost"},
    "agentflow.insight.hub": {"Insight"},
    "agentflow.insight.looplag": {"LoopLag", "LoopLagStatistics"},
    "agentflow.insight.profile": {
        "BUSY_UTILISATION",
        "COSTLY_SHARE",
        "CRITICAL_SHARE",
        "MIN_CALLS",
        "PROFILE_FORMAT",
        "SLOW_FACTOR",
        "SLOW_MIN_P95_S",
        "Flag",
        "ProfileRow",
        "Recommendation",
        "Totals",
        "WorkflowTotals",
    },
    "agentflow.insight.sampler": {
        "DEFAULT_INTERVAL_S",
        "MAX_SECONDS",
        "MAX_STACKS",
        "Sampler",
        "SignalSampler",
        "Stacks",
        "cpu_profile",
        "heap_profile",
        "task_dump",
    },
    "agentflow.insight.snapshot": {"SNAPSHOT_FORMAT", "AgentSample", "CacheUse", "ProviderSample"},
    "agentflow.llm.ledger": {"CostLedger", "CostLine", "CostMinute", "RunCost"},  # reached through CostTracker.ledger
    # the tracing facade: hooks the layers call, configured by the Runner from [tracing]
    "agentflow.tracing": {
        "TRACEPARENT",
        "TRACER",
        "carry",
        "configure",
        "event_span",
        "extract",
        "inject",
        "llm_response",
        "llm_span",
        "release",
        "state_flush",
        "tool_call",
        "workflow_step",
        "wrap_batch_handler",
        "wrap_handler",
    },
    # started by the Runner from [monitoring]
    "agentflow.service": {"Service"},
    "agentflow.service.app": {"Service"},
    "agentflow.service.auth": {"BadRequest", "BearerToken", "JsonRoutes", "is_loopback"},
    "agentflow.service.dlq": {"DeadLetterRoutes", "ReplayRequest"},
    "agentflow.service.debug": {"DebugRoutes"},
    "agentflow.service.insight": {"InsightRoutes", "query_number"},
    "agentflow.service.workflows": {"WorkflowRoutes"},
    # a workflow's compiled graph, its records in the state store and its step handlers: the runner's wiring
    "agentflow.workflows.graph": {"Graph", "Step", "StepOptions", "from_config", "step_agent", "step_topic"},
    "agentflow.workflows.records": {
        "DEADLINE_HEADER",
        "FAILED_NS",
        "JOIN_NS",
        "PART_HEADER",
        "RUN_HEADER",
        "RUN_NS",
        "STEP_NS",
        "WORKFLOW_HEADER",
        "Failure",
        "JoinRecord",
        "RunRecord",
        "StepRecord",
        "pending_namespace",
    },
    "agentflow.workflows.steps": {"pending_shard", "step_handler"},
    "agentflow.service.ingest": {"Ingest", "IngestEvent"},
    # the LLM client's parts, wired by the LLMHub from [llm.NAME]
    "agentflow.llm.failures": {"MAX_ERROR_DETAIL_CHARS", "SCRUB_WINDOW_CHARS", "Failures", "outcome", "retry_after_s"},
    "agentflow.llm.metrics": {"CACHE_USES", "OUTCOMES", "LLMMetrics", "ModelMetrics", "SharedCacheStats"},
    "agentflow.llm.protocols": {
        "NO_BREAKER",
        "BatcherFactory",
        "BatcherLike",
        "BreakerLike",
        "BreakersLike",
        "BudgetLike",
        "LimiterLike",
        "PermitLike",
        "SharedCacheLike",
    },
    "agentflow.llm.stream": {"StreamAssembler", "open_stream", "read_stream"},
    "agentflow.llm.toolspec": {
        "CheckedTools",
        "tool_fields",
    },  # chat()'s checks of its tool arguments; ToolBox's checked list
    # what MockLLMServer answers; users reach it through the server (agentflow.testing.MockLLM)
    "agentflow.llm.mock_script": {"Reply", "chat_chunks", "chat_reply", "completion_chunks", "text_of", "tokens"},
    "agentflow.llm.tokens": {"estimate_tokens", "split_tokens"},
    "agentflow.llm.transport": {"USER_AGENT", "ConnectionPool"},
    # the lean HTTP/1.1 client under the LLM client and the load generator; its errors become LLMErrors (and
    # load-test error kinds) before a user sees them
    "agentflow.http1": {
        "BodyStream",
        "ConnectFailed",
        "ConnectionClosed",
        "Http1Pool",
        "Http1Response",
        "ProtocolError",
    },
    "agentflow.state": set(_STATE_API),
    "agentflow.state.base": {
        "APPLIED",
        "CONFLICT",
        "DUPLICATE",
        "BackendStatistics",
        "Record",
        "StateBackend",
        "Write",
        "WriteResult",
    },
    "agentflow.state.conversation": {"Message"},
    "agentflow.state.handle": {"MEMORY_NAMESPACE_PREFIX", "WORKFLOW_NAMESPACE"},
    "agentflow.state.memory": {"MemoryBackend"},
    "agentflow.state.store": {"MISSING"},
    "agentflow.state.unit": {"Unit"},
    "agentflow.state.buffer": {"Batch", "Seg", "WriteBuffer"},  # the store's internals
    "agentflow.state.cache": {"Entry", "StateCache"},
    "agentflow.state.codec": {"StateCodec"},
    "agentflow.state.metrics": {"state_families"},  # rendered through runner.metrics
    # optional dependency (redis): importing agentflow must not import it; create_backend builds the backend
    "agentflow.state.redis": {"RedisBackend"},
    "agentflow.state.sqlite": {"BACKSTOP_CHECKPOINT_PAGES", "SQLiteBackend"},
    # helpers of the tool layer: the loop detector's signatures, the wire names, the defaults and outcome enum
    "agentflow.tools": {
        "DEFAULT_MAX_PARALLEL_TOOLS",
        "OUTCOMES",
        "call_signature",
        "turn_signature",
        "wire_name",
    },
    "agentflow.tools.config": {"breaker_config", "resolve_env_keys"},  # what the tool layer makes of the config
    "agentflow.tools.loops": {"DEFAULT_LOOP_THRESHOLD", "call_parts", "call_signature", "turn_signature"},
    "agentflow.tools.base": {"OUTCOMES", "Outcome"},
    "agentflow.tools.metrics": {
        "LOOP_ACTIONS",
        "RUN_OUTCOMES",
        "AgentToolMetrics",
        "ToolMetrics",
        "tool_components",
    },  # the runner's
    "agentflow.tools.toolbox": {"DEFAULT_MAX_PARALLEL_TOOLS", "unknown_tool_result", "wire_name"},
    # optional dependency (mcp): importing agentflow must not import it; the Runner starts MCPHub from [mcp.*]
    "agentflow.tools.mcp": {"MCPHub", "MCPPool", "MCPPoolStatistics", "MCPTool", "ReplicaStatistics"},
}


def submodules() -> list[ModuleType]:
    mods = []
    for info in pkgutil.walk_packages(agentflow.__path__, prefix="agentflow."):
        name = info.name
        if name.rsplit(".", 1)[-1].startswith("_") or name == "agentflow.testing":
            continue
        mods.append(importlib.import_module(name))
    return mods


def test_all_is_sorted_and_unique() -> None:
    assert agentflow.__all__ == sorted(agentflow.__all__)
    assert len(agentflow.__all__) == len(set(agentflow.__all__))


def test_every_exported_name_is_importable() -> None:
    for name in agentflow.__all__:
        assert hasattr(agentflow, name), name
    namespace: dict[str, object] = {}
    exec("from agentflow import *", namespace)
    assert set(agentflow.__all__) <= set(namespace)


def test_exported_classes_and_functions_live_in_agentflow_and_have_docstrings() -> None:
    undocumented = []
    for name in agentflow.__all__:
        obj = getattr(agentflow, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__.startswith("agentflow."), (name, obj.__module__)
            if not (obj.__doc__ or "").strip():
                undocumented.append(name)
    assert undocumented == [], f"public classes and functions need a docstring (STYLE item 15): {undocumented}"


def test_every_public_name_of_every_submodule_is_exported_or_listed_as_internal() -> None:
    exported = set(agentflow.__all__)
    missing: dict[str, list[str]] = {}
    for mod in submodules():
        public = getattr(mod, "__all__", None)
        assert public is not None, f"{mod.__name__} should declare __all__"
        for name in public:
            assert hasattr(mod, name), f"{mod.__name__}.__all__ names {name!r}, which does not exist"
        lacking = sorted(set(public) - exported - INTERNAL.get(mod.__name__, set()))
        if lacking:
            missing[mod.__name__] = lacking
    assert missing == {}, "export these from agentflow/__init__.py or add them to INTERNAL with a reason"


def test_internal_allow_list_is_not_stale() -> None:
    modules = {m.__name__: m for m in submodules()}
    for mod_name, names in INTERNAL.items():
        if mod_name not in modules:  # a module another engineer has not landed yet
            continue
        stale = names - set(getattr(modules[mod_name], "__all__", ()))
        assert not stale, f"{mod_name}: INTERNAL lists {sorted(stale)}, no longer in its __all__"
        assert not names & set(agentflow.__all__), f"{mod_name}: exported names cannot also be internal"


def test_import_agentflow_stays_light() -> None:
    # The library's import path never loads the CLI's libraries or an optional client: they come with the feature
    # that needs them (a configured LLM provider, the Kafka bus, a state backend, an MCP server).
    import subprocess
    import sys

    # OpenTelemetry comes with [tracing] enabled; the CPU sampler's thread and tracemalloc with a /debug request.
    heavy = ["typer", "rich", "aiohttp", "aiokafka", "redis", "mcp", "openai", "jsonschema", "opentelemetry"]
    code = f"import sys, agentflow; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout
