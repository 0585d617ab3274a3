"""The configuration schema: frozen, typed msgspec Structs, one per TOML table, with module-level defaults.

Units are in the names (``timeout_s``, ``linger_ms``); :mod:`agentflow.config.loader` reads TOML and the
environment into a :class:`Config`. This module is layer L1: it imports only the standard library and msgspec.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

__all__ = [
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
]


DEFAULT_WORKER_POOL_SIZE = 64
DEFAULT_MAX_CONCURRENT_EVENTS = 1024
DEFAULT_EVENT_BUFFER_SIZE = 10_000
DEFAULT_EVENT_TIMEOUT_S = 30.0
DEFAULT_SHUTDOWN_GRACE_S = 10.0
DEFAULT_MAX_WORKFLOW_DEPTH = 16
DEFAULT_MAX_EVENT_BYTES = 1_048_576  # 1 MiB
DEFAULT_REQUEST_TIMEOUT_S = 30.0
DEFAULT_MAX_WAITING_EMITS = 10_000
DEFAULT_MAX_PENDING_REQUESTS = 10_000
DEFAULT_BUS_BACKEND: Literal["memory", "kafka"] = "memory"
DEFAULT_PARTITIONS = 8
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_INITIAL_BACKOFF_S = 0.1
DEFAULT_MAX_BACKOFF_S = 10.0
DEFAULT_BACKOFF_MULTIPLIER = 2.0
DEFAULT_JITTER_S = 0.1
DEFAULT_MAX_AFTER_S = 300.0
DEFAULT_DLQ_ENABLED = True
DEFAULT_DLQ_TOPIC_SUFFIX = ".dlq"
DEFAULT_DLQ_MAX_ENTRIES = 10_000
DEFAULT_METRICS_ENABLED = False
DEFAULT_METRICS_HOST = "127.0.0.1"
DEFAULT_METRICS_PORT = 9464
DEFAULT_INGEST_ENABLED = False
DEFAULT_TOKEN_ENV = "AGENTFLOW_HTTP_TOKEN"
DEFAULT_MAX_BODY_BYTES = 4 * 1_048_576  # 4 MiB
DEFAULT_MAX_EVENTS_PER_REQUEST = 1000
DEFAULT_RETRY_AFTER_S = 1
DEFAULT_LOOP_LAG_INTERVAL_S = 0.05
DEFAULT_ALERT_INTERVAL_S = 5.0
DEFAULT_ALERT_WINDOW_S = 60.0
DEFAULT_ALERT_CLEAR_RATIO = 0.8
DEFAULT_ALERT_CLEAR_AFTER = 3
DEFAULT_ALERT_MIN_EVENTS = 20
DEFAULT_TRACING_SERVICE_NAME = "agentflow"
DEFAULT_TRACING_OTLP_ENDPOINT = "http://127.0.0.1:4318/v1/traces"
DEFAULT_KAFKA_BOOTSTRAP_SERVERS = "127.0.0.1:9092"
DEFAULT_KAFKA_CLIENT_ID = "agentflow"
DEFAULT_KAFKA_SECURITY_PROTOCOL: Literal["PLAINTEXT"] = "PLAINTEXT"
DEFAULT_KAFKA_SASL_MECHANISM: Literal["PLAIN"] = "PLAIN"
DEFAULT_KAFKA_ACKS: Literal["all"] = "all"
DEFAULT_KAFKA_LINGER_MS = 2
DEFAULT_KAFKA_MAX_BATCH_SIZE = 262_144
DEFAULT_KAFKA_COMPRESSION: Literal["none"] = "none"
DEFAULT_KAFKA_ENABLE_IDEMPOTENCE = True
DEFAULT_KAFKA_REQUEST_TIMEOUT_MS = 30_000
DEFAULT_KAFKA_DELIVERY_TIMEOUT_S = 60.0
DEFAULT_KAFKA_CONNECT_TIMEOUT_S = 10.0
DEFAULT_KAFKA_SESSION_TIMEOUT_MS = 10_000
DEFAULT_KAFKA_HEARTBEAT_INTERVAL_MS = 3_000
DEFAULT_KAFKA_MAX_POLL_INTERVAL_MS = 300_000
DEFAULT_KAFKA_FETCH_MAX_WAIT_MS = 50
DEFAULT_KAFKA_FETCH_MAX_BYTES = 52_428_800
DEFAULT_KAFKA_MAX_PARTITION_FETCH_BYTES = 1_048_576
DEFAULT_KAFKA_AUTO_OFFSET_RESET: Literal["earliest"] = "earliest"
DEFAULT_KAFKA_COMMIT_INTERVAL_MS = 200
DEFAULT_KAFKA_REBALANCE_GRACE_S = 10.0
DEFAULT_KAFKA_TOPIC_PREFIX = ""
DEFAULT_KAFKA_AUTO_CREATE_TOPICS = True
DEFAULT_KAFKA_REPLICATION_FACTOR = 1
DEFAULT_KAFKA_REPLY_TOPIC = "agentflow.replies"
DEFAULT_KAFKA_RETRY_TOPICS = False
DEFAULT_KAFKA_RETRY_TIER_DELAYS_S: tuple[float, ...] = (1.0, 10.0, 60.0)
DEFAULT_LLM_MODEL = "gpt-4o-mini"
DEFAULT_LLM_MAX_CONNECTIONS = 100
DEFAULT_LLM_CONNECTION_TIMEOUT_S = 10.0
DEFAULT_LLM_IDLE_TIMEOUT_S = 30.0
DEFAULT_LLM_REQUEST_TIMEOUT_S = 60.0
DEFAULT_LLM_MAX_RESPONSE_BYTES = 16 * 1_048_576
DEFAULT_LLM_MAX_ATTEMPTS = 3
DEFAULT_LLM_INITIAL_BACKOFF_S = 0.5
DEFAULT_LLM_MAX_BACKOFF_S = 20.0
DEFAULT_LLM_JITTER_S = 0.5
DEFAULT_LLM_DEADLINE_S = 120.0
DEFAULT_LLM_BUDGET_RATIO = 0.2
DEFAULT_LLM_BUDGET_WINDOW_S = 10.0
DEFAULT_LLM_BUDGET_MIN_PER_S = 1.0
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
DEFAULT_STATE_BACKEND: Literal["memory", "sqlite", "redis"] = "memory"
DEFAULT_STATE_PATH = "agentflow-state.db"
DEFAULT_STATE_URL = "redis://127.0.0.1:6379/0"
DEFAULT_STATE_KEY_PREFIX = "agentflow:"
DEFAULT_STATE_CACHE_SIZE = 10_000
DEFAULT_STATE_CACHE_TTL_S = 30.0
DEFAULT_COMPRESSION_THRESHOLD_BYTES = 4096
DEFAULT_MAX_STATE_BYTES = 1_048_576  # 1 MiB
DEFAULT_FLUSH_INTERVAL_MS = 0.0  # group commit: a flush starts as soon as the previous one is done
DEFAULT_MAX_PENDING_WRITES = 10_000
DEFAULT_MAX_UPDATE_ATTEMPTS = 10
DEFAULT_ONCE_TTL_S = 7 * 24 * 3600.0
DEFAULT_PURGE_INTERVAL_S = 60.0
DEFAULT_STATE_OPERATION_TIMEOUT_S = 5.0
DEFAULT_SQLITE_CHECKPOINT_INTERVAL_S = 1.0
DEFAULT_SQLITE_SWITCH_INTERVAL_S = 0.0005
DEFAULT_REDIS_MAX_CONNECTIONS = 16
DEFAULT_CONVERSATION_MAX_MESSAGES = 200
DEFAULT_LLM_BUDGET_WARN_SHARE = 0.8

_PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
_NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
_PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
_NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]
_Multiplier = Annotated[float, msgspec.Meta(ge=1)]
_EventBytes = Annotated[int, msgspec.Meta(ge=64)]
_Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
_Rate = Annotated[float, msgspec.Meta(gt=0, le=1)]
_ResultBytes = Annotated[int, msgspec.Meta(ge=64)]
# A prefix of Redis keys: printable, no spaces, so `redis-cli --scan --pattern 'agentflow:*'` finds them.
_KeyPrefix = Annotated[str, msgspec.Meta(pattern=r"^[!-~]*$", max_length=64)]


class RunnerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[runner]``: limits of the runner itself.

    ``worker_pool_size`` handlers run at once across all agents; ``max_concurrent_events`` events are taken
    from the bus and not yet acknowledged (running, waiting for a worker, waiting behind an earlier event
    with the same key, or backing off before a retry); ``event_buffer_size`` is per topic and consumer group
    in the memory bus, and ``emit`` waits when it is full. At most ``max_waiting_emits`` emit/request calls
    wait for room at once and ``max_pending_requests`` requests for their results; calls beyond either bound
    fail at once with BackpressureError::

        RunnerConfig(worker_pool_size=8, event_timeout_s=5.0)
    """

    worker_pool_size: _PositiveInt = DEFAULT_WORKER_POOL_SIZE
    max_concurrent_events: _PositiveInt = DEFAULT_MAX_CONCURRENT_EVENTS
    event_buffer_size: _PositiveInt = DEFAULT_EVENT_BUFFER_SIZE
    event_timeout_s: _PositiveFloat = DEFAULT_EVENT_TIMEOUT_S
    shutdown_grace_s: _NonNegativeFloat = DEFAULT_SHUTDOWN_GRACE_S
    max_workflow_depth: _NonNegativeInt = DEFAULT_MAX_WORKFLOW_DEPTH
    max_event_bytes: _EventBytes = DEFAULT_MAX_EVENT_BYTES
    request_timeout_s: _PositiveFloat = DEFAULT_REQUEST_TIMEOUT_S
    max_waiting_emits: _PositiveInt = DEFAULT_MAX_WAITING_EMITS
    max_pending_requests: _PositiveInt = DEFAULT_MAX_PENDING_REQUESTS


class BusConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[bus]``: which event bus carries the events.

    ``"memory"`` (one process) or ``"kafka"`` (settings in ``[kafka]``, see docs/kafka.md)::

        BusConfig(backend="kafka", partitions=16)
    """

    backend: Literal["memory", "kafka"] = DEFAULT_BUS_BACKEND
    partitions: _PositiveInt = DEFAULT_PARTITIONS
    # Memory bus: an emit to a topic no agent reads raises BusError instead of being counted and dropped.
    refuse_unrouted: bool = False


class RetryConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[retry]``: how failed attempts are retried.

    ``max_attempts`` counts every attempt including the first. The wait before attempt ``n + 1`` is
    ``min(initial_backoff_s * multiplier ** (n - 1), max_backoff_s)`` plus up to ``jitter_s`` at random; a
    failure that names its own wait (``Retry(after_s=...)``, an open breaker) waits that long, at most
    ``max_after_s``::

        RetryConfig(max_attempts=5, initial_backoff_s=0.5)
    """

    max_attempts: _PositiveInt = DEFAULT_MAX_ATTEMPTS
    initial_backoff_s: _NonNegativeFloat = DEFAULT_INITIAL_BACKOFF_S
    max_backoff_s: _NonNegativeFloat = DEFAULT_MAX_BACKOFF_S
    multiplier: _Multiplier = DEFAULT_BACKOFF_MULTIPLIER
    jitter_s: _NonNegativeFloat = DEFAULT_JITTER_S
    max_after_s: _NonNegativeFloat = DEFAULT_MAX_AFTER_S


class RetryOverride(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[agents.NAME.retry]``: the :class:`RetryConfig` fields one agent changes.

    A field left ``None`` inherits the global ``[retry]`` value::

        RetryOverride(max_attempts=1).apply(RetryConfig())  # RetryConfig(max_attempts=1, ...)
    """

    max_attempts: _PositiveInt | None = None
    initial_backoff_s: _NonNegativeFloat | None = None
    max_backoff_s: _NonNegativeFloat | None = None
    multiplier: _Multiplier | None = None
    jitter_s: _NonNegativeFloat | None = None
    max_after_s: _NonNegativeFloat | None = None

    def apply(self, base: RetryConfig) -> RetryConfig:
        """Return ``base`` with every field this override sets replaced."""
        changes = {name: getattr(self, name) for name in self.__struct_fields__}
        return msgspec.structs.replace(base, **{k: v for k, v in changes.items() if v is not None})


class DlqConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[dlq]``: the dead-letter queue, topic ``<topic><topic_suffix>``.

    The memory bus keeps at most ``max_entries`` dead letters; the oldest are evicted and counted::

        DlqConfig(max_entries=100)
    """

    enabled: bool = DEFAULT_DLQ_ENABLED
    topic_suffix: str = DEFAULT_DLQ_TOPIC_SUFFIX
    max_entries: _PositiveInt = DEFAULT_DLQ_MAX_ENTRIES


class AlertsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[monitoring.alerts]``: thresholds the runner checks itself every ``interval_s`` over the last ``window_s``.

    An alert fires when its figure passes the threshold and clears once the figure stays below
    ``clear_ratio`` times the threshold for ``clear_after`` checks in a row (hysteresis, so a figure hovering at
    the threshold does not flap). Rates and percentiles need ``min_events`` events in the window. A threshold
    left unset is not checked; with none set, nothing runs (docs/observability.md)::

        AlertsConfig(handler_p95_s=2.0, error_rate=0.05, event_loop_lag_s=0.1)
    """

    interval_s: _PositiveFloat = DEFAULT_ALERT_INTERVAL_S
    window_s: _PositiveFloat = DEFAULT_ALERT_WINDOW_S
    clear_ratio: Annotated[float, msgspec.Meta(gt=0, le=1)] = DEFAULT_ALERT_CLEAR_RATIO
    clear_after: _PositiveInt = DEFAULT_ALERT_CLEAR_AFTER
    min_events: _PositiveInt = DEFAULT_ALERT_MIN_EVENTS
    handler_p95_s: _PositiveFloat | None = None
    error_rate: Annotated[float, msgspec.Meta(gt=0, le=1)] | None = None
    queue_wait_p95_s: _PositiveFloat | None = None
    event_loop_lag_s: _PositiveFloat | None = None
    rss_mb: _PositiveFloat | None = None
    breaker_open: bool = False
    rate_limit_wait_p95_s: _PositiveFloat | None = None
    dlq_per_min: _PositiveFloat | None = None
    consumer_lag: _PositiveInt | None = None

    def any(self) -> bool:
        """True when at least one threshold is set."""
        return self.breaker_open or any(
            getattr(self, k) is not None
            for k in (
                "handler_p95_s",
                "error_rate",
                "queue_wait_p95_s",
                "event_loop_lag_s",
                "rss_mb",
                "rate_limit_wait_p95_s",
                "dlq_per_min",
                "consumer_lag",
            )
        )


class MonitoringConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[monitoring]``: the runner's HTTP server — metrics, health, and optionally HTTP ingest and the DLQ.

    ``port = 0`` picks a free port. ``ingest_enabled`` adds ``POST /v1/events`` and the ``/v1/dlq`` endpoints;
    they need the bearer token from the environment variable ``token_env`` whenever it is set, and the server
    refuses to start with them on an address beyond loopback without one. Ingest accepts events for the topics
    this runner's agents read, the topics that exist on the bus, ``ingest_topics``, or any with
    ``ingest_any_topic``::

        MonitoringConfig(metrics_enabled=True, port=0, ingest_enabled=True)
    """

    metrics_enabled: bool = DEFAULT_METRICS_ENABLED
    host: str = DEFAULT_METRICS_HOST
    port: _Port = DEFAULT_METRICS_PORT
    ingest_enabled: bool = DEFAULT_INGEST_ENABLED
    token_env: str = DEFAULT_TOKEN_ENV
    max_body_bytes: _PositiveInt = DEFAULT_MAX_BODY_BYTES
    max_events_per_request: _PositiveInt = DEFAULT_MAX_EVENTS_PER_REQUEST
    retry_after_s: _PositiveInt = DEFAULT_RETRY_AFTER_S
    ingest_topics: list[str] = msgspec.field(default_factory=list)
    ingest_any_topic: bool = False
    # /debug/profile, /debug/heap, /debug/tasks, /debug/loop: off unless asked for, token-protected beyond loopback
    profiling: bool = False
    loop_lag_interval_s: Annotated[float, msgspec.Meta(ge=0.001, le=10)] = DEFAULT_LOOP_LAG_INTERVAL_S
    alerts: AlertsConfig = msgspec.field(default_factory=AlertsConfig)


class AgentConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[agents.NAME]``: one agent's overrides; ``None`` inherits the global setting.

    ``concurrency`` caps this agent's handlers running at once (unset: only ``worker_pool_size`` limits
    it); ``timeout_s`` replaces ``runner.event_timeout_s``; ``retry`` is merged over ``[retry]``.
    ``provider``, ``model``, ``temperature`` and ``cache_ttl_s`` are what this agent's ``ctx.llm`` calls use
    when a call does not name them (a cheap model for simple agents, a strong one for hard ones)::

        AgentConfig(timeout_s=5.0, retry=RetryOverride(max_attempts=1), model="gpt-4o-mini", temperature=0)
    """

    concurrency: _PositiveInt | None = None
    timeout_s: _PositiveFloat | None = None
    retry: RetryOverride | None = None
    # The tools the agent may use (names or globs), and how many of its tool calls run at once (docs/tools.md).
    tools: tuple[str, ...] | None = None
    max_parallel_tools: _PositiveInt | None = None
    # What ctx.llm uses when a call does not say: a provider of [llm.*], its model, the sampling temperature and
    # how long this agent's responses stay cached.
    provider: str | None = None
    model: str | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    cache_ttl_s: _PositiveFloat | None = None
    slo_p95_s: _PositiveFloat | None = None


_NO_OVERRIDES = AgentConfig()


class KafkaConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[kafka]``: how the Kafka bus (``[bus] backend = "kafka"``) reaches the brokers.

    Read only when the Kafka backend is selected; see docs/kafka.md.
    """

    bootstrap_servers: str = DEFAULT_KAFKA_BOOTSTRAP_SERVERS
    client_id: str = DEFAULT_KAFKA_CLIENT_ID
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = DEFAULT_KAFKA_SECURITY_PROTOCOL
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = DEFAULT_KAFKA_SASL_MECHANISM
    sasl_username: str = ""
    # The password itself never sits in the file: this names the environment variable that holds it.
    sasl_password_env: str = ""
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    acks: Literal["all", "1", "0"] = DEFAULT_KAFKA_ACKS
    linger_ms: _NonNegativeInt = DEFAULT_KAFKA_LINGER_MS
    max_batch_size: _PositiveInt = DEFAULT_KAFKA_MAX_BATCH_SIZE
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = DEFAULT_KAFKA_COMPRESSION
    enable_idempotence: bool = DEFAULT_KAFKA_ENABLE_IDEMPOTENCE
    request_timeout_ms: _PositiveInt = DEFAULT_KAFKA_REQUEST_TIMEOUT_MS
    delivery_timeout_s: _PositiveFloat = DEFAULT_KAFKA_DELIVERY_TIMEOUT_S
    connect_timeout_s: _PositiveFloat = DEFAULT_KAFKA_CONNECT_TIMEOUT_S
    session_timeout_ms: _PositiveInt = DEFAULT_KAFKA_SESSION_TIMEOUT_MS
    heartbeat_interval_ms: _PositiveInt = DEFAULT_KAFKA_HEARTBEAT_INTERVAL_MS
    max_poll_interval_ms: _PositiveInt = DEFAULT_KAFKA_MAX_POLL_INTERVAL_MS
    fetch_max_wait_ms: _NonNegativeInt = DEFAULT_KAFKA_FETCH_MAX_WAIT_MS
    fetch_max_bytes: _PositiveInt = DEFAULT_KAFKA_FETCH_MAX_BYTES
    max_partition_fetch_bytes: _PositiveInt = DEFAULT_KAFKA_MAX_PARTITION_FETCH_BYTES
    auto_offset_reset: Literal["earliest", "latest"] = DEFAULT_KAFKA_AUTO_OFFSET_RESET
    commit_interval_ms: _PositiveInt = DEFAULT_KAFKA_COMMIT_INTERVAL_MS
    rebalance_grace_s: _NonNegativeFloat = DEFAULT_KAFKA_REBALANCE_GRACE_S
    topic_prefix: str = DEFAULT_KAFKA_TOPIC_PREFIX
    auto_create_topics: bool = DEFAULT_KAFKA_AUTO_CREATE_TOPICS
    replication_factor: _PositiveInt = DEFAULT_KAFKA_REPLICATION_FACTOR
    reply_topic: str = DEFAULT_KAFKA_REPLY_TOPIC
    # Retries through <topic>.retry.N topics instead of in-process back-off, so a long wait holds no commit.
    retry_topics: bool = DEFAULT_KAFKA_RETRY_TOPICS
    retry_tier_delays_s: Annotated[tuple[_PositiveFloat, ...], msgspec.Meta(min_length=1, max_length=20)] = (
        DEFAULT_KAFKA_RETRY_TIER_DELAYS_S
    )


class LLMRetryConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[llm.NAME.retry]``: retries of one LLM call (429, 5xx, timeouts, resets only), inside ``deadline_s``.

    Retries are also capped by a retry budget: at most ``budget_ratio`` of the calls of the last
    ``budget_window_s`` seconds, plus ``budget_min_per_s`` per second::

        LLMRetryConfig(max_attempts=5, deadline_s=30.0)
    """

    max_attempts: _PositiveInt = DEFAULT_LLM_MAX_ATTEMPTS
    initial_backoff_s: _NonNegativeFloat = DEFAULT_LLM_INITIAL_BACKOFF_S
    max_backoff_s: _NonNegativeFloat = DEFAULT_LLM_MAX_BACKOFF_S
    multiplier: _Multiplier = DEFAULT_BACKOFF_MULTIPLIER
    jitter_s: _NonNegativeFloat = DEFAULT_LLM_JITTER_S
    deadline_s: _PositiveFloat = DEFAULT_LLM_DEADLINE_S
    budget_ratio: _NonNegativeFloat = DEFAULT_LLM_BUDGET_RATIO
    budget_window_s: _PositiveFloat = DEFAULT_LLM_BUDGET_WINDOW_S
    budget_min_per_s: _NonNegativeFloat = DEFAULT_LLM_BUDGET_MIN_PER_S


class LLMBreakerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[llm.NAME.breaker]``: the circuit breaker kept per (provider, model); see docs/resilience.md::

    LLMBreakerConfig(failure_rate_threshold=0.3, open_wait_s=10.0)
    """

    enabled: bool = True
    window_type: Literal["count", "time"] = "count"
    window_size: _PositiveInt = 100
    minimum_calls: _PositiveInt = 20
    failure_rate_threshold: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
    slow_call_duration_s: _PositiveFloat = 60.0
    slow_call_rate_threshold: Annotated[float, msgspec.Meta(gt=0, le=1)] = 1.0
    open_wait_s: _NonNegativeFloat = 30.0
    open_wait_multiplier: _Multiplier = 2.0
    max_open_wait_s: _NonNegativeFloat = 300.0
    half_open_max_calls: _PositiveInt = 5


class LLMLimitsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[llm.NAME.limits]``: requests and tokens per minute, per (provider, model); unset means unlimited.

    Callers over the limit queue in priority order, at most ``max_queue`` of them::

        LLMLimitsConfig(rpm=500, tpm=200_000)
    """

    rpm: _PositiveFloat | None = None
    tpm: _PositiveFloat | None = None
    max_queue: _PositiveInt = 1000


class LLMBatchingConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[llm.NAME.batching]``: coalescing of concurrent embedding and list-prompt completion calls::

    LLMBatchingConfig(max_batch_size=64, max_wait_ms=2.0)
    """

    enabled: bool = True
    max_batch_size: _PositiveInt = 32
    max_wait_ms: _NonNegativeFloat = 5.0
    max_batch_tokens: _PositiveInt | None = None
    adaptive: bool = False
    target_latency_ms: _PositiveFloat | None = None


class LLMCacheConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[llm.NAME.cache]``: the response cache (LRU with a TTL), by default for deterministic calls only::

    LLMCacheConfig(max_entries=50_000, ttl_s=3600)
    """

    enabled: bool = True
    max_entries: _PositiveInt = 10_000
    ttl_s: _PositiveFloat = 300.0
    deterministic_only: bool = True


class LLMPrice(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[llm.NAME.prices.MODEL]``: US dollars per million input (prompt) and output (completion) tokens."""

    input_usd_per_mtok: _NonNegativeFloat = 0.0
    output_usd_per_mtok: _NonNegativeFloat = 0.0


class LLMConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[llm.NAME]``: one OpenAI-compatible provider reached through ``ctx.llm``; see docs/llm.md.

    The API key is never read from the file: ``api_key_env`` names the environment variable that holds it::

        LLMConfig(base_url="http://127.0.0.1:8089/v1", default_model="mock", max_connections=32)
    """

    base_url: str
    api_key_env: str | None = None
    api_style: Literal["openai", "azure"] = "openai"
    api_version: str | None = None
    default_model: str = DEFAULT_LLM_MODEL
    max_connections: _PositiveInt = DEFAULT_LLM_MAX_CONNECTIONS
    max_connections_per_host: _NonNegativeInt = 0
    min_connections: _NonNegativeInt = 0
    connection_timeout_s: _PositiveFloat = DEFAULT_LLM_CONNECTION_TIMEOUT_S
    idle_timeout_s: _PositiveFloat = DEFAULT_LLM_IDLE_TIMEOUT_S
    max_connection_lifetime_s: _PositiveFloat | None = None
    http_client: Literal["lean", "aiohttp"] = "lean"
    request_timeout_s: _PositiveFloat = DEFAULT_LLM_REQUEST_TIMEOUT_S
    max_response_bytes: _PositiveInt = DEFAULT_LLM_MAX_RESPONSE_BYTES
    token_budget_per_workflow: _PositiveInt | None = None
    token_budget_warn_share: Annotated[float, msgspec.Meta(gt=0, le=1)] = DEFAULT_LLM_BUDGET_WARN_SHARE
    retry: LLMRetryConfig = msgspec.field(default_factory=LLMRetryConfig)
    breaker: LLMBreakerConfig = msgspec.field(default_factory=LLMBreakerConfig)
    limits: LLMLimitsConfig = msgspec.field(default_factory=LLMLimitsConfig)
    batching: LLMBatchingConfig = msgspec.field(default_factory=LLMBatchingConfig)
    cache: LLMCacheConfig = msgspec.field(default_factory=LLMCacheConfig)
    prices: dict[str, LLMPrice] = msgspec.field(default_factory=dict)


class ToolBreakerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[tools.NAME.breaker]`` and ``[mcp.NAME.breaker]``: a circuit breaker in front of a tool, or of each
    replica of an MCP server. The fields and defaults are those of
    :class:`~agentflow.resilience.BreakerConfig` (a test keeps them equal), which the tool layer builds from it::

        ToolBreakerConfig(minimum_calls=10, failure_rate_threshold=0.5)
    """

    window_type: Literal["count", "time"] = "count"
    window_size: _PositiveInt = 100
    minimum_calls: _PositiveInt = 20
    failure_rate_threshold: _Rate = 0.5
    slow_call_duration_s: _PositiveFloat = 30.0
    slow_call_rate_threshold: _Rate = 1.0
    open_wait_s: _NonNegativeFloat = 30.0
    open_wait_multiplier: _Multiplier = 2.0
    max_open_wait_s: _NonNegativeFloat = 300.0
    half_open_max_calls: _PositiveInt = 5


class ToolConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[tools.NAME]``: one tool's overrides; ``None`` keeps what the code (or the MCP server) declared.

    ``timeout_s`` bounds one attempt, waiting for a ``concurrency`` slot included; ``retry`` applies only to a
    tool that is ``idempotent``; ``breaker`` puts a circuit breaker in front of the tool; results longer than
    ``max_result_bytes`` (UTF-8) are cut, and the tool message says so (docs/tools.md)::

        ToolConfig(timeout_s=5.0, concurrency=4, idempotent=True, retry=RetryConfig(max_attempts=3))
    """

    timeout_s: _PositiveFloat | None = None
    concurrency: _PositiveInt | None = None
    idempotent: bool | None = None
    max_result_bytes: _ResultBytes | None = None
    retry: RetryConfig | None = None
    breaker: ToolBreakerConfig | None = None


class MCPConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[mcp.NAME]``: one MCP server whose tools agents use as ``NAME.tool``; see docs/tools.md.

    ``transport = "stdio"`` starts ``command`` with ``args`` (and ``env`` added to a minimal environment) once
    per replica, each process serving one session; ``"http"`` speaks streamable HTTP to ``url``, or to each URL
    when ``replicas`` is a list. Sessions open when the runner starts and are reused for every call. In
    ``headers`` and ``env``, a key ending in ``_env`` names the environment variable that holds the value of the
    key without that suffix, so no secret sits in the file::

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
    breaker: ToolBreakerConfig = msgspec.field(default_factory=ToolBreakerConfig)

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


class StateConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[memory]``: the state backend behind ``ctx.state``, ``ctx.workflow_state`` and ``ctx.memory``
    (docs/state.md).

    ``backend``: ``"memory"`` (one process, lost on exit), ``"sqlite"`` (a file at ``path`` in WAL mode, durable on
    one machine) or ``"redis"`` (``url``; the password comes from the environment variable ``password_env``
    names, never from the file). Writes wait at most ``flush_interval_ms`` in the write-behind buffer and are
    committed together; an event is acknowledged only after the commit holding its writes::

        StateConfig(backend="redis", url="redis://10.0.0.5:6379/0", password_env="AGENTFLOW_REDIS_PASSWORD")
    """

    backend: Literal["memory", "sqlite", "redis"] = DEFAULT_STATE_BACKEND
    path: str = DEFAULT_STATE_PATH
    # "normal" survives a killed process (the commit is in the WAL file); "full" also a power cut, at an fsync
    # per flush.
    sqlite_synchronous: Literal["normal", "full"] = "normal"
    # WAL checkpoints run in the background this often (after commits), never inside a commit.
    sqlite_checkpoint_interval_s: _PositiveFloat = DEFAULT_SQLITE_CHECKPOINT_INTERVAL_S
    # The commits run on a thread: Python's thread switch interval is lowered to this (0: left alone), so a finished
    # commit does not wait up to 5 ms for the event loop's thread to let go of the GIL.
    sqlite_switch_interval_s: _NonNegativeFloat = DEFAULT_SQLITE_SWITCH_INTERVAL_S
    url: str = DEFAULT_STATE_URL
    password_env: str = ""
    key_prefix: _KeyPrefix = DEFAULT_STATE_KEY_PREFIX
    max_connections: _PositiveInt = DEFAULT_REDIS_MAX_CONNECTIONS
    operation_timeout_s: _PositiveFloat = DEFAULT_STATE_OPERATION_TIMEOUT_S
    state_cache_size: _PositiveInt = DEFAULT_STATE_CACHE_SIZE
    state_cache_ttl_s: _PositiveFloat = DEFAULT_STATE_CACHE_TTL_S
    enable_state_compression: bool = False
    compression_threshold_bytes: _PositiveInt = DEFAULT_COMPRESSION_THRESHOLD_BYTES
    max_state_bytes: _PositiveInt = DEFAULT_MAX_STATE_BYTES
    flush_interval_ms: _NonNegativeFloat = DEFAULT_FLUSH_INTERVAL_MS
    max_pending_writes: _PositiveInt = DEFAULT_MAX_PENDING_WRITES
    max_update_attempts: _PositiveInt = DEFAULT_MAX_UPDATE_ATTEMPTS
    default_ttl_s: _PositiveFloat | None = None
    once_ttl_s: _PositiveFloat = DEFAULT_ONCE_TTL_S
    purge_interval_s: _PositiveFloat = DEFAULT_PURGE_INTERVAL_S
    conversation_max_messages: _PositiveInt = DEFAULT_CONVERSATION_MAX_MESSAGES
    conversation_ttl_s: _PositiveFloat | None = None


class WorkflowStepConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[workflows.NAME.steps.STEP]``: one step of a workflow defined in TOML (docs/workflows.md).

    The handler is ``handler`` (an import path, ``"package.module:function"``) or ``agent`` (the name of an
    agent registered with ``@runner.agent``, whose handler the step reuses); ``parallel`` lists several import
    paths instead, a group of steps that run side by side. ``after`` names the steps whose results it takes; with
    several, the step is a join that waits up to ``timeout_s`` for all of them::

        WorkflowStepConfig(handler="research.steps:merge", after=["research"], timeout_s=60)
    """

    handler: str = ""
    agent: str = ""
    parallel: list[str] = msgspec.field(default_factory=list)
    after: list[str] = msgspec.field(default_factory=list)
    timeout_s: _PositiveFloat | None = None


class WorkflowConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[workflows.NAME]``: a workflow of steps; ``max_execution_time_s`` bounds a whole run::

    WorkflowConfig(max_execution_time_s=300, steps={"plan": WorkflowStepConfig(handler="app:plan")})
    """

    max_execution_time_s: _PositiveFloat | None = None
    steps: dict[str, WorkflowStepConfig] = msgspec.field(default_factory=dict)


class TracingConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[tracing]``: OpenTelemetry spans for events, LLM calls, tools, state flushes and workflow steps.

    Needs ``pip install 'agentflow-runner[otel]'``. ``exporter = "global"`` uses the tracer provider the application
    set up (``opentelemetry.trace.set_tracer_provider``); ``"console"`` prints spans; ``"otlp"`` sends them to
    ``otlp_endpoint`` (needs ``opentelemetry-exporter-otlp-proto-http``). See docs/observability.md::

        TracingConfig(enabled=True, exporter="otlp", sample_ratio=0.1)
    """

    enabled: bool = False
    service_name: str = DEFAULT_TRACING_SERVICE_NAME
    exporter: Literal["global", "console", "otlp"] = "global"
    otlp_endpoint: str = DEFAULT_TRACING_OTLP_ENDPOINT
    sample_ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 1.0


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The whole configuration.

    Build it with :func:`load_config` (TOML file and environment) or :func:`config_from_dict`::

        config = config_from_dict({"agents": {"summarize": {"timeout_s": 5}}})
        config.agent("summarize").timeout_s   # 5.0
        config.retry_for("summarize")         # the global RetryConfig, no override set
    """

    runner: RunnerConfig = msgspec.field(default_factory=RunnerConfig)
    bus: BusConfig = msgspec.field(default_factory=BusConfig)
    retry: RetryConfig = msgspec.field(default_factory=RetryConfig)
    dlq: DlqConfig = msgspec.field(default_factory=DlqConfig)
    monitoring: MonitoringConfig = msgspec.field(default_factory=MonitoringConfig)
    kafka: KafkaConfig = msgspec.field(default_factory=KafkaConfig)
    agents: dict[str, AgentConfig] = msgspec.field(default_factory=dict)
    llm: dict[str, LLMConfig] = msgspec.field(default_factory=dict)
    tools: dict[str, ToolConfig] = msgspec.field(default_factory=dict)
    mcp: dict[str, MCPConfig] = msgspec.field(default_factory=dict)
    memory: StateConfig = msgspec.field(default_factory=StateConfig)
    workflows: dict[str, WorkflowConfig] = msgspec.field(default_factory=dict)
    tracing: TracingConfig = msgspec.field(default_factory=TracingConfig)

    def agent(self, name: str) -> AgentConfig:
        """Return the overrides for agent ``name``, or an AgentConfig that overrides nothing."""
        return self.agents.get(name, _NO_OVERRIDES)

    def retry_for(self, name: str) -> RetryConfig:
        """Return the global retry settings with agent ``name``'s ``[agents.NAME.retry]`` applied."""
        override = self.agent(name).retry
        return self.retry if override is None else override.apply(self.retry)
