"""The one machine report of ``agentcli benchmark --json``, for every scenario and bus: msgspec Structs.

These Structs are the schema: docs/schemas/benchmark-report.schema.json is generated from :class:`Report`
(``python -m agentcli.schemas``) and a test checks the committed file against them. ``FORMAT`` names the schema
version; a change that renames or removes a key, or changes its meaning, takes a new version.

Every scenario fills the same top-level figures from its primary side ("agentflow"); what only one scenario
measures is under ``details``, whose ``kind`` says which scenario's figures it holds.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal, get_args

import msgspec

from agentflow import ProfileSnapshot

from ..runtime import Interruption, Machine, Versions
from ..thresholds import Verdict

__all__ = [
    "FORMAT",
    "BlockedFigures",
    "CostLine",
    "Details",
    "IngestFigures",
    "KafkaDetails",
    "LLMDetails",
    "LatencyMs",
    "MCPDetails",
    "NoopDetails",
    "OverloadDetails",
    "Report",
    "RequestFigures",
    "RoundRatios",
    "Run",
    "StreamDetails",
    "ToolsDetails",
    "StateDetails",
    "WorkflowDetails",
]

#: The schema version, as a type (so the JSON Schema pins it) and as the value reports carry.
Format = Literal["agentcli.benchmark/1"]
FORMAT: Final[Format] = get_args(Format)[0]


def _doc(text: str) -> msgspec.Meta:
    return msgspec.Meta(description=text)


class LatencyMs(msgspec.Struct, frozen=True, kw_only=True):
    """Latency percentiles of one run, in milliseconds, from an HDR histogram (3 significant figures, exact max)."""

    p50: float
    p90: float
    p95: float
    p99: float
    p999: float
    max: float
    mean: float
    count: Annotated[int, _doc("latencies recorded")]


class Run(msgspec.Struct, frozen=True, kw_only=True):
    """One measured run of one side in one round."""

    side: Annotated[
        str,
        _doc(
            "agentflow (the primary side), another agentflow run (agentflow_0calls, agentflow_3calls, "
            "agentflow_stdio), or a baseline: bare, raw, per_request, sdk, unbatched, raw_0calls, raw_1call, "
            "raw_3calls, per_call, sdk_stdio, per_call_stdio; the figures at the top level are those of the "
            "agentflow side"
        ),
    ]
    label: Annotated[str, _doc("what ran, for people")]
    round: Annotated[int, _doc("1..repeat")]
    completed: int
    errors: Annotated[int, _doc("requests or events that failed (dead-lettered, timed out, refused)")]
    duration_s: Annotated[float, _doc("the measured phase, seconds")]
    throughput_per_s: Annotated[float, _doc("(completed + errors) / duration_s")]
    latency_ms: LatencyMs | None
    cpu_s: Annotated[float | None, _doc("user + system CPU of this process during the measured phase")]
    saturation_per_s: Annotated[float | None, _doc("latency mode: the rate measured at saturation first")] = None
    rate_per_s: Annotated[float | None, _doc("latency mode: the rate then offered")] = None
    tail_latency_ms: Annotated[
        LatencyMs | None,
        _doc(
            "noop throughput floods of more than 200,000 events (agentflow side): the latency of the events handled "
            "once the flood's last 100,000 were being emitted, to compare the end of a long flood with a short one"
        ),
    ] = None
    items_per_s: Annotated[
        float | None, _doc("llm-embed: inputs embedded per second; stream: tokens received per second")
    ] = None
    server_requests: Annotated[int | None, _doc("llm-*: requests the LLM server counted during the run")] = None
    server_items: Annotated[int | None, _doc("llm-*: inputs the LLM server counted during the run")] = None
    hdr: Annotated[
        bytes | None,
        _doc(
            "the run's latency histogram: HdrHistogram-style bytes (base64 in JSON), for the latency distribution "
            "of the HTML report and `agentcli benchmark compare`"
        ),
    ] = None
    op: Annotated[
        str | None, _doc("state: the operation measured (get, set, update, acked_write); null for other scenarios")
    ] = None


class RoundRatios(msgspec.Struct, frozen=True, kw_only=True):
    """The named ratios of one round, each from runs of that round (the sides ran seconds apart)."""

    round: int
    ratios: dict[str, float]


class NoopDetails(msgspec.Struct, frozen=True, kw_only=True, tag="noop", tag_field="kind"):
    """``--scenario noop`` and ``--app``: what was loaded and how."""

    agent: str
    app: Annotated[str | None, _doc("MODULE:ATTR of --app; null for the noop scenario")]
    requested: Annotated[int, _doc("requests or events issued in the reported run")]
    concurrent_users: Annotated[int | None, _doc("closed mode")]
    batch_size: Annotated[int, _doc("emit_many chunk size")]
    agent_batch_size: Annotated[int | None, _doc("noop: events per call of the batch agent (1: one per call)")]
    load_fraction: Annotated[float | None, _doc("latency mode: offered rate / saturation")]
    shutdown_s: Annotated[float | None, _doc("how long the Runner took to shut down (not in the figures)")]
    profile: Annotated[str | None, _doc("cpu or memory when profiled: do not quote the figures then")]


class CostLine(msgspec.Struct, frozen=True, kw_only=True):
    provider: str
    model: str
    agent: str
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


class LLMDetails(msgspec.Struct, frozen=True, kw_only=True, tag="llm", tag_field="kind"):
    """``--scenario llm-chat | llm-embed``: the server, the load, the cost and the server's own counts."""

    server: Annotated[str, _doc("an --llm-url, or 'in-process mock'")]
    concurrent_users: int
    batch_size: Annotated[int, _doc("llm-embed: the micro-batcher's max_batch_size")]
    max_wait_ms: Annotated[float, _doc("llm-embed: the micro-batcher's max_wait_ms")]
    dimensions: int
    added_p50_ms: Annotated[
        float | None, _doc("llm-embed with --batch-size > 1: p50 batched - p50 unbatched, median of rounds")
    ] = None
    cost: Annotated[list[CostLine], _doc("the reported agentflow run's cost summary")]
    server_stats: Annotated[dict[str, Any] | None, _doc("the server's /stats at the end")] = None


class KafkaDetails(msgspec.Struct, frozen=True, kw_only=True, tag="kafka", tag_field="kind"):
    """``--bus kafka``: the brokers and the producer shape."""

    brokers: Annotated[str, _doc("where the brokers were (a Tansu test broker started here, or --bootstrap)")]
    partitions: int
    emitters: Annotated[int, _doc("concurrent emit_many callers")]
    batch_size: int
    events: Annotated[int, _doc("events of each throughput run")]
    load_fraction: Annotated[float | None, _doc("latency mode: offered rate / saturation")]
    rate_per_s: Annotated[
        float | None, _doc("latency mode with --rate: the offered rate of every side (no saturation run)")
    ] = None


class BlockedFigures(msgspec.Struct, frozen=True, kw_only=True):
    """Blocked emitters: a held agent, a full buffer, ``emitters`` blocked ``await runner.emit`` calls, released."""

    emitters: int
    buffer: int
    consumers: int
    agentflow_median_s: Annotated[float, _doc("first emitter created -> every emitter returned, median round")]
    raw_median_s: Annotated[float, _doc("the same with a bare asyncio.Queue, median round")]
    block_s: Annotated[list[float], _doc("per agentflow round: creating the emitters until all wait")]
    release_s: Annotated[list[float], _doc("per agentflow round: the agent draining them")]


class RequestFigures(msgspec.Struct, frozen=True, kw_only=True):
    """Part 1 through ``runner.request``: ``factor`` times the agent's capacity, each arrival its own caller."""

    bus: str
    concurrency: int
    service_ms: float
    nominal_capacity_per_s: float
    capacity_per_s: float
    offered_per_s: float
    duration_s: float
    offered: int
    completed: int
    refused: int
    refused_by: dict[str, int]
    timed_out: int
    failed: int
    handled_per_s: float
    share_of_capacity: float
    refusal_p99_ms: float | None
    completed_p50_ms: float | None
    completed_p99_ms: float | None
    rss_idle_mb: float
    rss_peak_mb: float
    rss_growth_mb: float
    max_pending_requests: int
    max_waiting_emits: int
    accepted: int
    handled_after_drain: int
    lost: int


class IngestFigures(msgspec.Struct, frozen=True, kw_only=True):
    """Part 1 through HTTP ingest: POST /v1/events from an ``agentcli loadtest`` child process."""

    bus: str
    events_per_post: int
    offered_posts: int
    offered_events_per_s: float
    duration_s: float
    accepted_posts: int
    refused_by_status: dict[int, int]
    client_errors: dict[str, int]
    dropped_by_generator: int
    post_p99_ms: float | None
    handled_per_s: float
    share_of_capacity: float
    rss_idle_mb: float
    rss_peak_mb: float
    rss_growth_mb: float
    accepted: int
    handled_after_drain: int
    lost: int


class OverloadDetails(msgspec.Struct, frozen=True, kw_only=True, tag="overload", tag_field="kind"):
    """``--scenario overload``: 10x the agent's capacity both ways (part 1), and blocked emitters (part 2)."""

    factor: float
    requests: RequestFigures
    ingest: IngestFigures
    blocked: BlockedFigures


class ToolsDetails(msgspec.Struct, frozen=True, kw_only=True, tag="tools", tag_field="kind"):
    """``--scenario tools``: the agent loop at 0, 1 and 3 tool calls per run, and two micro-measurements."""

    server: Annotated[str, _doc("the LLM server: the in-process mock")]
    concurrent_users: int
    widths: Annotated[list[int], _doc("tool calls per agent run of the sides, in order")]
    direct_call_us: Annotated[float, _doc("a direct await of the no-op tool function, µs per call, median round")]
    tools_call_us: Annotated[float, _doc("ctx.tools.call of the same function as a tool, µs per call, median round")]
    call_overhead_us: Annotated[float, _doc("tools_call_us - direct_call_us")]
    loop_detection_1_us: Annotated[float, _doc("LoopDetector.observe of a turn with 1 call, µs, median round")]
    loop_detection_3_us: Annotated[float, _doc("LoopDetector.observe of a turn with 3 calls, µs, median round")]
    calls_measured: Annotated[int, _doc("calls of each side of the call-overhead measurement, per round")]
    turns_measured: Annotated[int, _doc("turns of the loop-detection measurement, per round")]
    server_stats: Annotated[dict[str, Any] | None, _doc("the mock server's counts at the end")] = None


class MCPDetails(msgspec.Struct, frozen=True, kw_only=True, tag="mcp", tag_field="kind"):
    """``--scenario mcp``: calls of a no-op tool of an MCP server built with the official SDK."""

    server: Annotated[str, _doc("the MCP server: its module, started by the benchmark")]
    transports: Annotated[list[str], _doc("http (streamable HTTP on loopback) and stdio")]
    concurrent_users: int
    sessions: Annotated[int, _doc("sessions the pooled and the held-open sides use")]
    sdk_version: Annotated[str, _doc("the mcp package's version")]
    per_call_share: Annotated[int, _doc("the new-session-per-call side over HTTP makes 1/this of the calls")]
    per_call_stdio_share: Annotated[int, _doc("the new-process-per-call side over stdio makes 1/this of the calls")]


class StreamDetails(msgspec.Struct, frozen=True, kw_only=True, tag="stream", tag_field="kind"):
    """``--scenario stream``: streamed chat answers, and the items of a streaming tool."""

    server: Annotated[str, _doc("the LLM server: the in-process mock")]
    concurrent_users: int
    tokens_per_answer: Annotated[int, _doc("tokens of each streamed answer")]
    ttft_answers: Annotated[int, _doc("answers per side and round of the time-to-first-token phase, one at a time")]
    ttft_per_token_ms: Annotated[float, _doc("the pace of the mock that phase streams from")]
    ttft_p50_ms: Annotated[float, _doc("agentflow: time to the first token, p50 of the median round")]
    raw_ttft_p50_ms: Annotated[float | None, _doc("the bare SSE reader's, likewise; null without --compare-raw")]
    ttft_added_ms: Annotated[float | None, _doc("agentflow p50 - bare p50 of each round, median of rounds")]
    tool_items: Annotated[int, _doc("items the streaming tool yields per round")]
    tool_batch_size: Annotated[int, _doc("ctx.tools.stream batch_size")]
    tool_batch_timeout_ms: Annotated[float, _doc("ctx.tools.stream batch_timeout_s, in ms")]
    tool_items_per_s: Annotated[float, _doc("items delivered per second, median round")]
    tool_delivery_ms: Annotated[LatencyMs, _doc("yielded -> handed to the agent, per item, of the median round")]


class StateDetails(msgspec.Struct, frozen=True, kw_only=True, tag="state", tag_field="kind"):
    """``--scenario state``: the backend, where its data lived, and the shape of each phase."""

    backend: Annotated[str, _doc("memory, sqlite or redis")]
    store: Annotated[str, _doc("where the data lived (files, a redis-server started for the run, or --config's)")]
    users: Annotated[int, _doc("concurrent handlers (agentflow) or coroutines (bare) of get, set and update")]
    ops: Annotated[int, _doc("operations of each of get, set and update per run")]
    value_bytes: Annotated[int, _doc("size of the text in each value")]
    acked_rate_per_s: Annotated[float, _doc("acked_write: writes offered per second (open loop)")]
    acked_seconds: Annotated[float, _doc("acked_write: how long they were offered")]
    flush_interval_ms: Annotated[float, _doc("[memory] flush_interval_ms of the agentflow side")]


class WorkflowDetails(msgspec.Struct, frozen=True, kw_only=True, tag="workflow", tag_field="kind"):
    """``--scenario workflow``: plan -> parallel researchers -> join -> writer, one LLM call per step."""

    steps: Annotated[int, _doc("steps of one run")]
    critical_path_steps: Annotated[int, _doc("steps on the longest path (plan, a researcher, join, writer)")]
    llm_server: Annotated[str, _doc("the agentcli mock-llm process the steps call")]
    llm_latency_ms: Annotated[float, _doc("the server's fixed latency per call")]
    concurrent_users: int
    state_backend: str
    critical_path_ms_p50: Annotated[
        float | None, _doc("median over runs of the critical path: the LLM calls' durations along the longest path")
    ]
    wall_ms_p50: Annotated[float | None, _doc("median run wall time: start_workflow -> result")]
    wall_over_critical_p50: Annotated[float | None, _doc("median over runs of wall time / critical path")]
    wall_over_critical_p95: Annotated[float | None, _doc("95th percentile over runs of wall time / critical path")]
    overhead_per_step_us_p50: Annotated[
        float | None, _doc("median over runs of (wall time - critical path) / critical_path_steps, microseconds")
    ]
    overhead_per_step_us_p95: Annotated[float | None, _doc("its 95th percentile")]
    framework_alone_us_per_step: Annotated[
        float | None,
        _doc(
            "the same workflow with steps that return at once, one run at a time: wall time of a run / steps, "
            "microseconds (median of rounds); the framework's own cost per step"
        ),
    ] = None


Details = (
    NoopDetails
    | LLMDetails
    | KafkaDetails
    | OverloadDetails
    | ToolsDetails
    | MCPDetails
    | StreamDetails
    | StateDetails
    | WorkflowDetails
)


class Report(msgspec.Struct, kw_only=True):
    """The report of one ``agentcli benchmark`` run (``--json PATH``).

    With ``--repeat N`` the sides run in every round, the order alternating (round 1 baseline first, round 2
    agentflow first, ...). The top-level figures are those of the agentflow side's median round (ranked by
    throughput, or by p99 in latency mode; with an even N the worse of the two middle rounds); each ratio is
    the median of its per-round values; ``runs`` lists every run of every side.
    """

    format: Annotated[Format, _doc("the schema version")]
    scenario: Annotated[str, _doc("noop, app, llm-chat, llm-embed, overload, tools, mcp, stream, state or workflow")]
    mode: Annotated[str | None, _doc("closed, throughput or latency; null for overload")]
    bus: Annotated[str, _doc("memory or kafka")]
    completed: int
    errors: int
    duration_s: float
    throughput_per_s: Annotated[float, _doc("(completed + errors) / duration_s")]
    latency_ms: LatencyMs | None
    latency_measures: Annotated[str, _doc("which span the latencies cover")]
    rss_peak_mb: Annotated[float, _doc("peak resident memory of this process, MB")]
    cpu_s: Annotated[float | None, _doc("user + system CPU of the reported run's measured phase")]
    repeat: int
    order: Annotated[str, _doc("how the sides and rounds ran")]
    runs: list[Run]
    ratios: Annotated[
        dict[str, float],
        _doc(
            "named ratios, each the median over rounds: raw (agentflow / the raw pipeline doing the same "
            "measurement work), bare (agentflow / the bare pipeline doing no per-event work), pooled_vs_per_request, "
            "sdk (agentflow / openai SDK, or / a held-open MCP SDK session), batched_vs_unbatched, blocked_vs_raw "
            "(a time ratio: lower is better), request_capacity_share, ingest_capacity_share, raw_0calls, "
            "raw_1call, raw_3calls (tools), per_call, sdk_stdio, per_call_stdio (mcp); state: get, set, update "
            "(agentflow ops/s / the bare loop's); workflow: wall_vs_critical_path (the median run's wall time / its "
            "critical path: lower is better, 1 is ideal)"
        ),
    ]
    round_ratios: list[RoundRatios]
    thresholds: Annotated[list[Verdict], _doc("every --threshold in every round and for the median")]
    passed: Annotated[bool, _doc("no threshold failed, no request or event failed, nothing was lost")]
    interrupted: Annotated[
        Interruption | None,
        _doc("set when Ctrl-C or SIGTERM stopped the run: the figures cover what ran until then; null otherwise"),
    ] = None
    warnings: list[str]
    notes: list[str]
    details: Details
    options: Annotated[dict[str, Any], _doc("the benchmark's own settings (requests, users, batch size, ...)")]
    config: Annotated[dict[str, Any], _doc("the effective agentflow config of the agentflow side")]
    versions: Versions
    machine: Machine
    command: list[str]
    started_at: Annotated[str, _doc("ISO 8601, UTC")]
    phases: Annotated[
        list[Report], _doc("the bare `agentcli benchmark`: the phases after the first, each a full report")
    ] = msgspec.field(default_factory=list)
    profile_snapshot: Annotated[
        ProfileSnapshot | None,
        _doc(
            "noop and --app: the runner's profile snapshot over the reported run's measured phase "
            "(agentcli profile-report --from reads it)"
        ),
    ] = None
