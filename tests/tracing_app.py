"""The app of the cross-worker tracing test: ``make_runner(config)`` with ``[tracing]`` on and the SDK's in-memory
exporter as the process's tracer provider.

Agent ``first`` (topic ``jobs``) hands each event on to topic ``steps`` under another key, where agent ``second``
takes it — on whichever worker owns that partition. Each handled event appends ``<agent> <trace id> <pid>`` to
``TRACE_LINES`` (so a test can watch the work spread), and at exit each process writes its finished spans to
``TRACE_DIR/<pid>.jsonl``.
"""

from __future__ import annotations

import atexit
import json
import os

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agentflow import Config, Context, Event, Runner

EXPORTER = InMemorySpanExporter()


def _line(agent: str) -> None:
    ctx = trace.get_current_span().get_span_context()
    fd = os.open(os.environ["TRACE_LINES"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{agent} {ctx.trace_id:032x} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def _dump() -> None:
    with open(os.path.join(os.environ["TRACE_DIR"], f"{os.getpid()}.jsonl"), "w") as f:
        for s in EXPORTER.get_finished_spans():
            f.write(json.dumps({
                "name": s.name, "trace_id": f"{s.context.trace_id:032x}", "span_id": f"{s.context.span_id:016x}",
                "parent_id": f"{s.parent.span_id:016x}" if s.parent is not None else None,
                "attributes": dict(s.attributes or {}), "pid": os.getpid(),
            }) + "\n")  # fmt: skip


def make_runner(config: Config) -> Runner:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)
    atexit.register(_dump)
    runner = Runner(config)

    @runner.agent("jobs")
    async def first(event: Event, ctx: Context) -> None:
        _line("first")
        await ctx.emit("steps", event.payload, key=f"step-{event.payload}")

    @runner.agent("steps")
    async def second(event: Event, ctx: Context) -> None:
        _line("second")

    return runner
