"""OpenTelemetry traces with the SDK's in-memory exporter: a span per event (attempt), LLM call (GenAI semantic
conventions), tool call, state flush and workflow step; the trace context carried by follow-ups, emits, HTTP
ingest and producers; and nothing at all while tracing is off."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agentflow import ConfigError, Context, Event, Retry, Runner, config_from_dict, tracing
from agentflow.state import StateConfig, StateStore
from agentflow.testing import MockLLM
from agentflow.tools import tool

EXPORTER = InMemorySpanExporter()


def _install() -> None:
    """One SDK provider for this process (OpenTelemetry allows setting the global one once)."""
    current = trace.get_tracer_provider()
    if not isinstance(current, TracerProvider):
        current = TracerProvider()
        trace.set_tracer_provider(current)
    current.add_span_processor(SimpleSpanProcessor(EXPORTER))


_install()
TRACED = {"tracing": {"enabled": True}, "retry": {"initial_backoff_s": 0.0, "jitter_s": 0.0}}


@pytest.fixture(autouse=True)
def spans() -> Iterator[InMemorySpanExporter]:
    EXPORTER.clear()
    yield EXPORTER
    EXPORTER.clear()
    assert tracing.TRACER is None, "a runner left tracing on after it closed"


@pytest.fixture
async def llm() -> AsyncIterator[MockLLM]:
    async with MockLLM() as server:
        yield server


def by_name(spans: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.name == name]


def one(spans: InMemorySpanExporter, name: str) -> ReadableSpan:
    [span] = by_name(spans, name)
    return span


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_a_workflow_is_one_trace_from_the_emit_through_follow_ups_to_the_llm_call(
    spans: InMemorySpanExporter, llm: MockLLM
) -> None:
    config = {**TRACED, "llm": {"mock": {"base_url": llm.url, "default_model": "m"}}}
    runner = Runner(config_from_dict(config))

    @runner.agent("orders")
    async def plan(event: Event, ctx: Context) -> None:
        await ctx.emit("drafts", event.payload, key="k1")

    @runner.agent("drafts")
    async def write(event: Event, ctx: Context) -> None:
        await ctx.llm.chat([{"role": "user", "content": "hi"}], temperature=0, max_tokens=8)

    tracer = trace.get_tracer("test")
    async with runner:
        with tracer.start_as_current_span("user request") as root:
            await runner.emit("orders", {"n": 1}, key="k0")
        await runner.drain(timeout_s=5.0)
    user, first, second = one(spans, "user request"), one(spans, "process orders"), one(spans, "process drafts")
    chat = one(spans, "chat m")
    assert len({s.context.trace_id for s in (user, first, second, chat)}) == 1
    assert parent_of(first) == root.get_span_context().span_id
    assert parent_of(second) == first.context.span_id and parent_of(chat) == second.context.span_id
    assert first.kind == trace.SpanKind.CONSUMER and chat.kind == trace.SpanKind.CLIENT
    attrs = dict(first.attributes or {})
    assert attrs["agentflow.agent"] == "plan" and attrs["messaging.destination.name"] == "orders"
    assert attrs["agentflow.event.key"] == "k0" and attrs["agentflow.attempt"] == 1
    assert attrs["agentflow.outcome"] == "success" and attrs["messaging.system"] == "agentflow"
    gen = dict(chat.attributes or {})
    assert (gen["gen_ai.system"], gen["gen_ai.operation.name"], gen["gen_ai.request.model"]) == ("openai", "chat", "m")
    assert gen["gen_ai.usage.input_tokens"] == 1 and gen["gen_ai.usage.output_tokens"] == 8
    assert tuple(gen["gen_ai.response.finish_reasons"]) == ("length",)  # type: ignore[arg-type]  # max_tokens=8 cut it
    assert gen["gen_ai.request.temperature"] == 0 and gen["agentflow.agent"] == "write"
    assert gen["server.address"] == "127.0.0.1"


async def test_each_attempt_is_a_span_with_its_outcome(spans: InMemorySpanExporter) -> None:
    runner = Runner(config_from_dict({**TRACED, "agents": {"slow": {"timeout_s": 0.05}}}))

    @runner.agent("flaky")
    async def flaky(event: Event, ctx: Context) -> None:
        if ctx.attempt == 1:
            raise ValueError("first attempt fails")

    @runner.agent("slow")
    async def slow(event: Event, ctx: Context) -> None:
        if ctx.attempt == 1:
            await asyncio.sleep(1.0)

    @runner.agent("later")
    async def later(event: Event, ctx: Context) -> None:
        if ctx.attempt == 1:
            raise Retry(after_s=0.0)

    async with runner:
        for topic in ("flaky", "slow", "later"):
            await runner.emit(topic, 1)
        await runner.drain(timeout_s=5.0)
    for topic, first in (("flaky", "error"), ("slow", "timeout"), ("later", "retry")):
        attempts = sorted(by_name(spans, f"process {topic}"), key=lambda s: s.attributes["agentflow.attempt"])  # type: ignore[index]
        assert [s.attributes["agentflow.outcome"] for s in attempts] == [first, "success"], topic  # type: ignore[index]
        assert attempts[0].status.status_code == trace.StatusCode.ERROR
        assert attempts[1].status.status_code == trace.StatusCode.UNSET
        ids = {s.attributes["messaging.message.id"] for s in attempts}  # type: ignore[index]
        assert len(ids) == 1  # two attempts of the same event


async def test_a_batch_call_is_one_span_linked_to_each_events_trace(spans: InMemorySpanExporter) -> None:
    runner = Runner(config_from_dict(TRACED))
    release = asyncio.Event()

    @runner.agent("gate", concurrency=1)
    async def gate(event: Event, ctx: Context) -> None:
        await release.wait()
        await ctx.emit("docs", event.payload)

    async def index(events: list[Event], ctx: Any) -> None:
        return None

    runner.agent("docs", batch_size=16)(index)  # type: ignore[type-var]
    async with runner:
        await runner.emit_many("gate", list(range(3)))
        release.set()
        await runner.drain(timeout_s=5.0)
    batches = by_name(spans, "process docs")
    assert sum(s.attributes["messaging.batch.message_count"] for s in batches) == 3  # type: ignore[misc]
    gates = {s.context.trace_id for s in by_name(spans, "process gate")}
    assert {link.context.trace_id for s in batches for link in s.links} == gates


async def test_tool_calls_state_flushes_and_workflow_steps_are_spans(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    @tool
    async def lookup(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    runner = Runner(config_from_dict(TRACED))
    store = StateStore(StateConfig(backend="sqlite", path=str(tmp_path / "state.db")))
    await store.start()

    @runner.agent("ask")
    async def ask(event: Event, ctx: Context) -> None:
        with tracing.workflow_step("trip", "weather", run_id=event.correlation_id):
            result = await lookup.execute('{"city": "Oslo"}', call_id="call-1")
            assert result.ok
            await store.set("city", "Oslo", unit=store.unit())
            await store.flush()

    async with runner:
        await runner.emit("ask", 1)
        await runner.drain(timeout_s=5.0)
    await store.aclose()
    handler, step = one(spans, "process ask"), one(spans, "step trip/weather")
    call, flush = one(spans, "execute_tool lookup"), one(spans, "state flush")
    assert parent_of(step) == handler.context.span_id
    assert parent_of(call) == step.context.span_id
    assert parent_of(flush) is None  # a flush commits many events' writes: a trace of its own
    assert call.attributes is not None and call.attributes["gen_ai.tool.call.id"] == "call-1"
    assert call.attributes["agentflow.tool.outcome"] == "ok" and call.end_time is not None
    assert call.start_time is not None and call.start_time < call.end_time
    assert flush.attributes is not None and flush.attributes["db.system"] == "sqlite"
    assert flush.attributes["agentflow.state.writes"] == 1


async def test_each_workflow_step_is_a_span_under_its_events_span(spans: InMemorySpanExporter, llm: MockLLM) -> None:
    config = {**TRACED, "llm": {"mock": {"base_url": llm.url, "default_model": "m"}}}
    runner = Runner(config_from_dict(config))

    async def step(event: Event, ctx: Context) -> str:
        return (await ctx.llm.chat([{"role": "user", "content": "hi"}], temperature=0.5)).text

    wf = runner.workflow("research")
    wf.step("plan", step)
    wf.parallel("search", {"web": step, "papers": step}, after="plan")
    wf.join("merge", step, after="search")
    wf.step("write", step, after="merge")
    runs = 3
    async with runner:
        run_ids = []
        for i in range(runs):
            run = await runner.start_workflow("research", i)
            await run.result(timeout_s=5.0)
            run_ids.append(run.run_id)
    finished = spans.get_finished_spans()
    by_id = {s.context.span_id: s for s in finished}
    steps = [s for s in finished if s.name.startswith("step research/")]
    names = ["plan", "search.web", "search.papers", "merge", "write"]
    assert sorted(s.name for s in steps) == sorted(f"step research/{n}" for n in names for _ in range(runs))
    traces: dict[str, set[int]] = {}
    for span in steps:
        attrs = dict(span.attributes or {})
        name = attrs["agentflow.workflow.step"]
        assert attrs["agentflow.workflow"] == "research" and span.name == f"step research/{name}"
        run_id = attrs["agentflow.workflow.run_id"]
        assert isinstance(run_id, str)
        traces.setdefault(run_id, set()).add(span.context.trace_id)
        parent = by_id[parent_of(span) or 0]  # the span of the event the step's agent handled
        assert parent.name == f"process wf.research.{name}" and parent.context.trace_id == span.context.trace_id
        assert dict(parent.attributes or {})["agentflow.agent"] == f"research.{name}"
        [chat] = [c for c in finished if parent_of(c) == span.context.span_id]  # the step's LLM call under it
        assert chat.name == "chat m"
    assert sorted(traces) == sorted(run_ids)
    assert all(len(ids) == 1 for ids in traces.values())  # each run is one trace
    assert len(set().union(*traces.values())) == runs
    # a join's part that does not complete it runs no step: one merge span per run, two events each
    assert len(by_name(spans, "process wf.research.merge")) == 2 * runs


async def test_http_ingest_continues_the_callers_trace(spans: InMemorySpanExporter) -> None:
    runner = Runner(config_from_dict({**TRACED, "monitoring": {"metrics_enabled": True, "port": 0,
                                                               "ingest_enabled": True}}))  # fmt: skip

    @runner.agent("orders")
    async def take(event: Event, ctx: Context) -> None:
        return None

    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    async with runner:
        assert runner.http_address is not None
        host, port = runner.http_address
        headers = {"traceparent": f"00-{trace_id}-{span_id}-01"}
        async with aiohttp.ClientSession() as http:
            own = {"traceparent": f"00-{'1' * 32}-{'2' * 16}-01"}
            body = [{"topic": "orders", "payload": 1}, {"topic": "orders", "payload": 2, "headers": own}]
            async with http.post(f"http://{host}:{port}/v1/events", json=body, headers=headers) as resp:
                assert resp.status == 202
        await runner.drain(timeout_s=5.0)
    traces = {(f"{s.context.trace_id:032x}", f"{parent_of(s):016x}") for s in by_name(spans, "process orders")}
    assert traces == {(trace_id, span_id), ("1" * 32, "2" * 16)}  # an event's own traceparent wins


async def test_a_producer_with_tracing_carries_the_callers_trace(spans: InMemorySpanExporter) -> None:
    from agentflow import MemoryBus, Producer

    bus = MemoryBus()
    runner = Runner(config_from_dict(TRACED), bus=bus)

    @runner.agent("orders")
    async def take(event: Event, ctx: Context) -> None:
        return None

    async with runner, Producer(config_from_dict(TRACED), bus=bus) as producer:
        with trace.get_tracer("test").start_as_current_span("caller") as caller:
            await producer.emit("orders", 1)
        await runner.drain(timeout_s=5.0)
    assert parent_of(one(spans, "process orders")) == caller.get_span_context().span_id


async def test_while_tracing_is_off_nothing_is_recorded_and_headers_are_untouched(
    spans: InMemorySpanExporter, llm: MockLLM
) -> None:
    runner = Runner(config_from_dict({"llm": {"mock": {"base_url": llm.url, "default_model": "m"}}}))
    seen: list[Event] = []

    @runner.agent("orders")
    async def take(event: Event, ctx: Context) -> None:
        seen.append(event)
        await ctx.llm.chat([{"role": "user", "content": "hi"}])

    async with runner:
        assert tracing.TRACER is None
        with trace.get_tracer("test").start_as_current_span("caller"):
            await runner.emit("orders", 1)
            await runner.emit("orders", 2, headers={"x": "y"})
        await runner.drain(timeout_s=5.0)
    assert [e.headers for e in seen] == [None, {"x": "y"}]
    assert [s.name for s in spans.get_finished_spans()] == ["caller"]


def test_without_opentelemetry_enabling_tracing_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    runner = Runner(config_from_dict(TRACED))
    with pytest.raises(ConfigError, match=r"pip install 'agentflow-runner\[otel\]'"):
        asyncio.run(runner.start())
    assert tracing.TRACER is None


async def test_the_console_exporter_prints_spans_and_is_shut_down_on_close(capfd: pytest.CaptureFixture[str]) -> None:
    runner = Runner(config_from_dict({"tracing": {"enabled": True, "exporter": "console", "service_name": "svc"}}))

    @runner.agent("orders")
    async def take(event: Event, ctx: Context) -> None:
        return None

    async with runner:
        await runner.emit("orders", 1)
        await runner.drain(timeout_s=5.0)
    out = capfd.readouterr().out
    assert '"name": "process orders"' in out and '"service.name": "svc"' in out
