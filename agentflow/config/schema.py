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
    "MonitoringConfig",
    "RetryConfig",
    "RetryOverride",
    "RunnerConfig",
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
DEFAULT_KAFKA_CONNECT_TIMEOUT_S = 30.0
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
DEFAULT_LLM_BUDGET_WARN_SHARE = 0.8

_PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
_NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
_PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
_NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]
_Multiplier = Annotated[float, msgspec.Meta(ge=1)]
_EventBytes = Annotated[int, msgspec.Meta(ge=64)]
_Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


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
    it); ``timeout_s`` replaces ``runner.event_timeout_s``; ``retry`` is merged over ``[retry]``::

        AgentConfig(timeout_s=5.0, retry=RetryOverride(max_attempts=1))
    """

    concurrency: _PositiveInt | None = None
    timeout_s: _PositiveFloat | None = None
    retry: RetryOverride | None = None
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


class TracingConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[tracing]``: OpenTelemetry spans for events, LLM calls, tools, state flushes and workflow steps.

    Needs ``pip install 'agentflow[otel]'``. ``exporter = "global"`` uses the tracer provider the application
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
    tracing: TracingConfig = msgspec.field(default_factory=TracingConfig)

    def agent(self, name: str) -> AgentConfig:
        """Return the overrides for agent ``name``, or an AgentConfig that overrides nothing."""
        return self.agents.get(name, _NO_OVERRIDES)

    def retry_for(self, name: str) -> RetryConfig:
        """Return the global retry settings with agent ``name``'s ``[agents.NAME.retry]`` applied."""
        override = self.agent(name).retry
        return self.retry if override is None else override.apply(self.retry)
