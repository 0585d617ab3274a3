"""OpenTelemetry traces behind a tiny facade: ``TRACER`` is None unless ``[tracing]`` is enabled, and every hook
starts with that one module-level check, so tracing that is off costs nothing anyone could measure.

Layer L2: the bus, the LLM client, the tools, the state store and the workflow layer call these hooks; only
this module imports ``opentelemetry`` (the ``otel`` extra), and only once a runner enables tracing. Spans:

* one per event handled (per attempt; a batch agent: one per call, linked to each event's trace), a CONSUMER
  span named ``process <topic>`` whose parent is the ``traceparent`` the event carries;
* one per LLM request, a CLIENT span with the GenAI semantic conventions (``gen_ai.system``,
  ``gen_ai.request.model``, ``gen_ai.usage.input_tokens`` / ``output_tokens``, ``gen_ai.response.finish_reasons``);
* one per tool and MCP call (:func:`tool_call`), state flush (:func:`state_flush`) and workflow step
  (:func:`workflow_step`).

The W3C ``traceparent`` (and ``tracestate``) go in the events' headers: a follow-up carries its handler's span, an
emit carries the caller's current span, HTTP ingest the request's — so one trace follows a workflow through the
memory bus, Kafka and other workers::

    if tracing.TRACER is not None:          # the check every hot path makes
        headers = tracing.inject(headers)
"""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

from .errors import ConfigError, Reject, Retry, Skip

if TYPE_CHECKING:
    from .config import TracingConfig
    from .events import Event

__all__ = [
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
]

#: The tracer while ``[tracing]`` is enabled, else None: the one check every hook makes.
TRACER: Any = None
TRACEPARENT: Final = "traceparent"
_TRACESTATE: Final = "tracestate"
#: Events a batch span links to, at most.
MAX_LINKS: Final = 128

_owner: object | None = None
_provider: Any = None  # an SDK provider this module built (console, otlp): flushed and shut down on release
_otel: Any = None  # the opentelemetry modules, once loaded


class _Otel:
    """The opentelemetry names this module uses, imported once tracing is enabled."""

    def __init__(self) -> None:
        from opentelemetry import context, propagate, trace
        from opentelemetry.trace import Link, SpanKind, Status, StatusCode

        self.context = context
        self.propagate = propagate
        self.trace = trace
        self.Link = Link
        self.SpanKind = SpanKind
        self.Status = Status
        self.StatusCode = StatusCode


def configure(config: TracingConfig, owner: object) -> None:
    """Enable tracing for ``owner`` (a runner); ConfigError with what to install when the extra is missing."""
    global TRACER, _owner, _otel, _provider
    if TRACER is not None:
        return  # another runner of this process enabled it: spans go to the same provider
    try:
        _otel = _Otel()
    except ImportError:
        raise ConfigError(
            "[tracing] enabled = true needs OpenTelemetry: pip install 'agentflow-runner[otel]' (opentelemetry-api and "
            "opentelemetry-sdk), or set [tracing] enabled = false.",
            key="tracing.enabled",
        ) from None
    provider = _otel.trace.get_tracer_provider() if config.exporter == "global" else _sdk_provider(config)
    from . import __version__

    TRACER = provider.get_tracer("agentflow", __version__)
    _owner = owner
    if config.exporter != "global":
        _provider = provider


def _sdk_provider(config: TracingConfig) -> Any:
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError:
        raise ConfigError(
            f'[tracing] exporter = "{config.exporter}" needs the OpenTelemetry SDK: '
            "pip install 'agentflow-runner[otel]'.",
            key="tracing.exporter",
        ) from None
    exporter: Any
    if config.exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter,
            )
        except ImportError:
            raise ConfigError(
                '[tracing] exporter = "otlp" needs pip install opentelemetry-exporter-otlp-proto-http; or use '
                '"console", or "global" with a tracer provider your application sets up.',
                key="tracing.exporter",
            ) from None
        exporter = OTLPSpanExporter(endpoint=config.otlp_endpoint)
    else:
        exporter = ConsoleSpanExporter(out=sys.stdout)  # today's stdout, not the one of when the SDK was imported
    provider = TracerProvider(
        resource=Resource.create({"service.name": config.service_name}),
        sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def release(owner: object) -> None:
    """``owner`` closes: tracing ends if it enabled it (a provider built here is flushed and shut down)."""
    global TRACER, _owner, _provider
    if _owner is not owner:
        return
    TRACER = None
    _owner = None
    if _provider is not None:
        provider, _provider = _provider, None
        provider.shutdown()


# ---- propagation ---------------------------------------------------------------------------------------------


def inject(headers: Mapping[str, str] | None) -> dict[str, str] | None:
    """``headers`` plus the current span's ``traceparent`` (kept if the caller set one); unchanged without a span."""
    if TRACER is None:
        return None if headers is None else dict(headers)
    if headers is not None and TRACEPARENT in headers:
        return dict(headers)
    carrier: dict[str, str] = {}
    _otel.propagate.inject(carrier)
    if not carrier:
        return None if headers is None else dict(headers)
    return {**(headers or {}), **carrier}


def carry(headers: Mapping[str, str] | None, outer: Mapping[str, str]) -> dict[str, str] | None:
    """An ingested event's ``headers`` with the HTTP request's ``traceparent``/``tracestate`` (``outer``) when the
    event carries none of its own: the trace goes on from the caller that posted it."""
    parent = outer.get(TRACEPARENT)
    if parent is None or (headers is not None and TRACEPARENT in headers):
        return None if headers is None else dict(headers)
    out = {**(headers or {}), TRACEPARENT: parent}
    state = outer.get(_TRACESTATE)
    if state is not None:
        out[_TRACESTATE] = state
    return out


def extract(headers: Mapping[str, str] | None) -> Any:
    """The OpenTelemetry context a ``traceparent`` header names (an empty one without it)."""
    if not headers or TRACEPARENT not in headers:
        return _otel.context.Context()
    carrier = {k: v for k, v in headers.items() if k in (TRACEPARENT, _TRACESTATE)}
    return _otel.propagate.extract(carrier, context=_otel.context.Context())


# ---- spans ---------------------------------------------------------------------------------------------------


def _outcome(exc: BaseException | None, timed_out: bool) -> str:
    if exc is None:
        return "success"
    if timed_out:
        return "timeout"
    if isinstance(exc, Skip):
        return "skipped"
    if isinstance(exc, Reject):
        return "rejected"
    if isinstance(exc, Retry):
        return "retry"
    if isinstance(exc, Exception):
        return "error"
    return "cancelled"


def _finish(span: Any, exc: BaseException | None, outcome: str) -> None:
    span.set_attribute("agentflow.outcome", outcome)
    if exc is not None and outcome not in ("skipped", "cancelled"):
        span.set_attribute("error.type", type(exc).__name__)
        span.record_exception(exc)
        span.set_status(_otel.Status(_otel.StatusCode.ERROR, str(exc)[:256]))


@contextlib.contextmanager
def _current(span: Any, finish: Callable[[BaseException | None], None]) -> Iterator[Any]:
    """``span`` is the current span while the block runs; then ``finish(exc)`` (``None`` when the block succeeded)
    and the span ends."""
    token = _otel.context.attach(_otel.trace.set_span_in_context(span))
    exc: BaseException | None = None
    try:
        yield span
    except BaseException as e:
        exc = e
        raise
    finally:
        _otel.context.detach(token)
        finish(exc)
        span.end()


def _event_attributes(agent: str, ev: Event, system: str) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "messaging.system": system,
        "messaging.operation.type": "process",
        "messaging.destination.name": ev.topic,
        "messaging.message.id": ev.id,
        "agentflow.agent": agent,
        "agentflow.attempt": ev.attempt,
        "agentflow.depth": ev.depth,
    }
    if ev.key is not None:
        attrs["agentflow.event.key"] = ev.key
    if ev.correlation_id is not None:
        attrs["agentflow.correlation_id"] = ev.correlation_id
    return attrs


@contextlib.contextmanager
def event_span(agent: str, ev: Event, system: str, timed_out: Callable[[], bool]) -> Iterator[Any]:
    """The span of one attempt of ``agent`` on ``ev``, current while the handler runs; ``timed_out()`` says whether
    a cancellation was the watchdog's."""
    span = TRACER.start_span(
        f"process {ev.topic}",
        context=extract(ev.headers),
        kind=_otel.SpanKind.CONSUMER,
        attributes=_event_attributes(agent, ev, system),
    )
    with _current(span, lambda exc: _finish(span, exc, _outcome(exc, exc is not None and timed_out()))):
        yield span


def wrap_handler(handler: Any, agent: str, system: str, timed_out: Callable[[], bool]) -> Any:
    """``handler`` with a span around each call (each attempt)."""

    @functools.wraps(handler)
    async def traced(ev: Event, ctx: Any) -> Any:
        with event_span(agent, ev, system, timed_out):
            return await handler(ev, ctx)

    return traced


def wrap_batch_handler(handler: Any, agent: str, system: str, timed_out: Callable[[], bool]) -> Any:
    """A batch ``handler`` with one span per call, linked to the trace of each of its events."""

    @functools.wraps(handler)
    async def traced(events: list[Event], ctx: Any) -> Any:
        links = []
        for ev in events[:MAX_LINKS]:
            sc = _otel.trace.get_current_span(extract(ev.headers)).get_span_context()
            if sc.is_valid:
                links.append(_otel.Link(sc))
        first = events[0]
        attrs = _event_attributes(agent, first, system)
        attrs["messaging.batch.message_count"] = len(events)
        span = TRACER.start_span(
            f"process {first.topic}", context=_otel.context.Context(), kind=_otel.SpanKind.CONSUMER,
            attributes=attrs, links=links,
        )  # fmt: skip
        with _current(span, lambda exc: _finish(span, exc, _outcome(exc, exc is not None and timed_out()))):
            return await handler(events, ctx)

    return traced


@contextlib.contextmanager
def llm_span(
    operation: str,
    system: str,
    provider: str,
    model: str,
    body: Mapping[str, Any],
    *,
    agent: str | None = None,
    server: tuple[str, int] | None = None,
    detached: bool = False,
) -> Iterator[Any]:
    """A CLIENT span of one LLM request (GenAI semantic conventions); ``detached`` starts a new trace (a batch that
    serves many callers has no one parent). Record the answer with :func:`llm_response`."""
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.system": system,
        "gen_ai.request.model": model,
        "agentflow.llm.provider": provider,
    }
    for key, name in (("temperature", "gen_ai.request.temperature"), ("max_tokens", "gen_ai.request.max_tokens")):
        value = body.get(key)
        if value is not None:
            attrs[name] = value
    if agent is not None:
        attrs["agentflow.agent"] = agent
    if server is not None:
        attrs["server.address"], attrs["server.port"] = server
    span = TRACER.start_span(
        f"{operation} {model}",
        context=_otel.context.Context() if detached else None,
        kind=_otel.SpanKind.CLIENT,
        attributes=attrs,
    )
    with _current(span, lambda exc: None if exc is None else _finish(span, exc, _outcome(exc, False))):
        yield span


def llm_response(span: Any, response: Any) -> None:
    """Record an LLM answer on its span: usage, finish reasons, response model and id."""
    usage = getattr(response, "usage", None)
    if usage is not None:
        span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
    choices = getattr(response, "choices", None) or ()
    reasons = [c.finish_reason for c in choices if getattr(c, "finish_reason", None)]
    if reasons:
        span.set_attribute("gen_ai.response.finish_reasons", reasons)
    model = getattr(response, "model", None)
    if model:
        span.set_attribute("gen_ai.response.model", model)
    rid = getattr(response, "id", None)
    if rid:
        span.set_attribute("gen_ai.response.id", rid)


def _finished_span(
    name: str, kind: Any, t0_perf: float, attrs: dict[str, Any], error: BaseException | None, *, detached: bool = False
) -> None:
    """A span for work already done, started ``time.perf_counter() - t0_perf`` seconds ago (under the current span,
    or as a trace of its own when ``detached``)."""
    now_ns = time.time_ns()
    start_ns = now_ns - int((time.perf_counter() - t0_perf) * 1e9)
    context = _otel.context.Context() if detached else None
    span = TRACER.start_span(name, context=context, kind=kind, attributes=attrs, start_time=start_ns)
    if error is not None:
        span.set_attribute("error.type", type(error).__name__)
        span.set_status(_otel.Status(_otel.StatusCode.ERROR, str(error)[:256]))
    span.end(end_time=now_ns)


def tool_call(
    name: str, call_id: str, outcome: str, t0_perf: float, attempts: int, *, server: str | None = None,
    error: BaseException | None = None,
) -> None:  # fmt: skip
    """Record one finished tool call (an MCP tool names its ``server``), under the current span."""
    if TRACER is None:
        return
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": name,
        "agentflow.tool.outcome": outcome,
        "agentflow.tool.attempts": attempts,
    }
    if call_id:
        attrs["gen_ai.tool.call.id"] = call_id
    if server is not None:
        attrs["agentflow.mcp.server"] = server
    _finished_span(f"execute_tool {name}", _otel.SpanKind.INTERNAL, t0_perf, attrs, error)


def state_flush(backend: str, writes: int, t0_perf: float, error: BaseException | None = None) -> None:
    """Record one finished flush of the state store's write-behind buffer: a trace of its own, since one flush
    commits the writes of many events (its task's context belongs to none of them)."""
    if TRACER is None:
        return
    attrs = {"db.system": backend, "db.operation.name": "commit", "agentflow.state.writes": writes}
    _finished_span("state flush", _otel.SpanKind.CLIENT, t0_perf, attrs, error, detached=True)


@contextlib.contextmanager
def workflow_step(workflow: str, step: str, run_id: str | None = None) -> Iterator[Any]:
    """A span around one workflow step (for the workflow layer): ``with tracing.workflow_step("order", "charge",
    run_id): ...``; a no-op while tracing is off."""
    if TRACER is None:
        yield None
        return
    attrs = {"agentflow.workflow": workflow, "agentflow.workflow.step": step}
    if run_id is not None:
        attrs["agentflow.workflow.run_id"] = run_id
    with TRACER.start_as_current_span(f"step {workflow}/{step}", attributes=attrs) as span:
        yield span
