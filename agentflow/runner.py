"""The Runner: wires config, bus, pool, agents, tools, state, workflows, metrics and the HTTP service, and owns
their lifecycle.

Shutdown has one path (:meth:`Runner.aclose`, also run by ``async with``): stop intake → drain in-flight events
for ``shutdown_grace_s`` → cancel the rest (their events go back to the bus, counted in ``returned``) → close
subscriptions → stop background tasks → close the MCP servers' sessions → flush and close the state store →
close the bus if the runner created it. The state store starts after the bus and closes after every handler has
finished and before the bus: an event is acknowledged only once its state writes are committed (docs/state.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import operator
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

from . import tracing as _tracing
from ._waiting import WaitingEmits
from .agents import AgentSpec, AgentWorker, BatchAgentWorker, Handler
from .bus import create_bus
from .bus.base import Bus, Subscription
from .config import AgentConfig, Config, RetryConfig, RetryOverride, load_config
from .config.schema import DEFAULT_MAX_RESULT_BYTES, DEFAULT_TOOL_TIMEOUT_S
from .dlq import DeadLetters
from .errors import (
    HandlerTimeoutError,
    LifecycleError,
    Reject,
    RequestTimeoutError,
    Skip,
)
from .events import DeadLetter, Event, EventCodec, RawEvent, make_events, new_event_id
from .insight.hub import Insight
from .lifecycle import Lifecycle, State
from .metrics import GaugeSample, Metrics
from .pool import WorkerPool
from .requests import INBOX_PREFIX, PendingRequests, ReplySender, dead_lettered_error
from .resilience.breaker import BreakerConfig, CircuitBreaker
from .resilience.retry import RetryPolicy
from .state.metrics import state_families
from .state.store import StateStore
from .statistics import AgentStatistics, RunnerStatistics, ShutdownReport
from .tools import DEFAULT_MAX_PARALLEL_TOOLS, FunctionTool, ToolBox, ToolRegistry, ToolSet
from .tools import tool as make_tool
from .tools.metrics import AgentToolMetrics, ToolMetrics, tool_components
from .workflows import Workflow, WorkflowRun, Workflows
from .workflows.records import WORKFLOW_HEADER

if TYPE_CHECKING:
    from .llm.hub import AgentLLM, LLMHub
    from .llm.protocols import SharedCacheLike
    from .tools.mcp import MCPHub

__all__ = ["Runner"]

logger = logging.getLogger(__name__)
_RUNNING = State.RUNNING
_CLOSED = State.CLOSED  # module constants: reading State.X through the enum class costs on every call
_id_of = operator.attrgetter("id")

H = TypeVar("H", bound=Handler)


class Runner(Lifecycle):
    """Runs agents on a bus. Register agents, then use it as an async context manager::

        runner = Runner()

        @runner.agent("greetings")
        async def greet(event, ctx):
            return f"hello {event.payload['name']}"

        async with runner:
            print(await runner.request("greetings", {"name": "Ada"}))

    ``config`` is a :class:`~agentflow.config.Config`, a TOML path, or None for the defaults.
    """

    def __init__(
        self,
        config: Config | str | os.PathLike[str] | None = None,
        *,
        bus: Bus | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config if isinstance(config, Config) else load_config(config)
        rc = self.config.runner
        self._owns_bus = bus is None
        self.bus: Bus = bus or create_bus(self.config)
        self.metrics = metrics or Metrics()
        self._emitted = self.metrics._emitted  # the emit hot path bumps known topics inline
        self.codec = EventCodec(rc.max_event_bytes)
        self.dlq = DeadLetters(self)
        self.pool = WorkerPool(rc.worker_pool_size, max_queued=rc.max_concurrent_events)
        self._drained = True
        self._closing_since: float | None = None
        self._specs: dict[str, AgentSpec] = {}
        self._agents: list[AgentWorker] = []
        self._refused = self.metrics.calls_refused
        self._waiting = WaitingEmits(rc.max_waiting_emits, self._refused)
        self._requests = PendingRequests(rc.request_timeout_s, rc.max_pending_requests, self._refused, self._expired)
        self._replies = ReplySender(self.bus)
        self._inbox = INBOX_PREFIX + new_event_id()
        #: Topics an agent of this runner reads (a request to one needs no look at the bus), and the event loop
        #: the runner runs on; both set by start.
        self._served: frozenset[str] = frozenset()
        self._loop: asyncio.AbstractEventLoop
        self._stack: contextlib.AsyncExitStack | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._shutdown: ShutdownReport | None = None
        self._service: Any = None
        #: The state behind ``ctx.state``, ``ctx.workflow_state`` and ``ctx.memory`` (``[memory]``); started after
        #: the bus, closed after the handlers and before the bus.
        self.state_store = StateStore(self.config.memory)
        #: The workflows (``runner.workflow(name)``, ``[workflows.NAME]``): their runs, results and status.
        self.workflows = Workflows(self)
        self._sweeper: asyncio.Task[None] | None = None
        #: The LLM providers of ``[llm.*]`` (None when there are none); opened in start, closed in aclose.
        self.llm: LLMHub | None = None
        if self.config.llm:
            from .llm.hub import LLMHub  # aiohttp's client is imported only when a provider is configured

            self.llm = LLMHub(self.config.llm, metrics=self.metrics)
        #: Every tool of this runner: ``@runner.tool`` functions, and the tools of the ``[mcp.*]`` servers once
        #: the runner started; ``[tools.NAME]`` overrides are applied as tools are added.
        self.tools = ToolRegistry(self.config.tools)
        self._mcp: MCPHub | None = None
        self._tool_metrics = ToolMetrics(self.tools, self._mcp_statistics)
        self._toolboxes: dict[str, tuple[ToolSet, int, AgentToolMetrics | None]] = {}
        self.metrics.add_gauges(self._gauges)
        self.metrics.add_counters(
            "agentflow_events_unrouted",
            "Events dropped by the memory bus because no agent subscribes to their topic, by topic.",
            "topic",
            lambda: self.bus.statistics().unrouted_by_topic,
        )
        self.metrics.add_families(self._tool_metrics.collect)
        # Tools, MCP tools and the state store as rows of the profile report (agentflow.insight).
        self.metrics.add_components(lambda: tool_components(self.tools))
        self.metrics.add_components(lambda: self.state_store.components())
        self.metrics.add_families(lambda: state_families(self.state_store))
        self.pool.usage = self._pool_usage
        #: Event-loop lag, alerts, the profile and cost reports (agentflow.insight; docs/observability.md).
        self.insight = Insight(self)

    # ---- registration ----------------------------------------------------------------------------------

    def agent(
        self,
        topic: str,
        *,
        name: str | None = None,
        concurrency: int | None = None,
        timeout_s: float | None = None,
        retry: RetryConfig | RetryOverride | None = None,
        payload: Any = None,
        batch_size: int | None = None,
        breaker: CircuitBreaker | BreakerConfig | None = None,
        tools: Sequence[str] | None = None,
        max_parallel_tools: int | None = None,
        provider: str | None = None,
        model: str | None = None,
        temperature: float | None = None,
        cache_ttl_s: float | None = None,
    ) -> Callable[[H], H]:
        """Register ``async def handler(event, ctx)`` for ``topic``; its return value answers ``request``.

        ``payload`` declares the payload type (a msgspec Struct, say); payloads are converted to it, and
        ones that do not fit go to the dead-letter queue with reason ``wrong_schema``. ``[agents.NAME]`` in
        the config overrides ``concurrency``, ``timeout_s`` and ``retry`` given here.

        ``breaker`` (a :class:`~agentflow.resilience.CircuitBreaker`, or a ``BreakerConfig`` for one named after
        the agent) runs the handler inside a circuit breaker; while it is open, attempts fail with
        ``CircuitOpenError`` and are retried after its ``retry_after_s`` (docs/resilience.md).

        ``batch_size`` makes a batch agent: ``async def handler(events, ctx)`` gets a list of up to that many
        events already delivered (it never waits to fill one) and a
        :class:`~agentflow.agents.batch.BatchContext`; see :mod:`agentflow.agents.batch`.

        ``tools`` names the tools the agent may use, by name or glob (``["get_weather", "search.*"]``): they are
        ``ctx.tools``, which ``ctx.llm.run`` offers the model; ``max_parallel_tools`` (default 4) bounds the
        calls of one turn that run at once. ``[agents.NAME]`` may override both (docs/tools.md).
        ``provider``, ``model``, ``temperature`` and ``cache_ttl_s`` are what the agent's ``ctx.llm`` calls use
        when they name none (``[agents.NAME]`` overrides them too): a cheap model for simple agents, a strong one
        for hard ones.
        """
        if self._lifecycle is not State.CREATED:
            raise LifecycleError("Register agents before starting the Runner; it is already running.")
        if concurrency is not None and concurrency < 1:
            raise ValueError("concurrency must be at least 1.")
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError("timeout_s must be greater than 0.")
        if batch_size is not None and batch_size < 1:
            raise ValueError("batch_size must be at least 1.")
        if max_parallel_tools is not None and max_parallel_tools < 1:
            raise ValueError("max_parallel_tools must be at least 1.")
        if isinstance(tools, str):
            raise TypeError(f"tools must be a list of tool names or patterns, not the string {tools!r}.")
        if temperature is not None and not 0 <= temperature <= 2:
            raise ValueError("temperature must be from 0 to 2.")
        if cache_ttl_s is not None and cache_ttl_s <= 0:
            raise ValueError("cache_ttl_s must be greater than 0.")

        def register(handler: H) -> H:
            if not inspect.iscoroutinefunction(cast(Any, handler)):
                raise TypeError(f"Agent handler {handler!r} must be an async function: async def f(event, ctx).")
            agent_name = name or getattr(handler, "__name__", None) or topic
            if agent_name in self._specs:
                raise ValueError(
                    f"An agent named {agent_name!r} is already registered; pass name=... to tell them apart."
                )
            self._specs[agent_name] = AgentSpec(
                name=agent_name,
                topic=topic,
                handler=handler if breaker is None else self._guarded(agent_name, handler, breaker),
                concurrency=concurrency,
                timeout_s=timeout_s,
                retry=retry,
                payload_type=payload,
                batch_size=batch_size,
                tools=tuple(tools) if tools is not None else None,
                max_parallel_tools=max_parallel_tools,
                provider=provider,
                model=model,
                temperature=temperature,
                cache_ttl_s=cache_ttl_s,
            )
            return handler

        return register

    @overload
    def tool(self, fn: Callable[..., Any], /) -> FunctionTool: ...

    @overload
    def tool(
        self,
        *,
        name: str | None = None,
        description: str | None = None,
        timeout_s: float = DEFAULT_TOOL_TIMEOUT_S,
        concurrency: int | None = None,
        idempotent: bool = False,
        retry: RetryPolicy | RetryConfig | None = None,
        breaker: CircuitBreaker | BreakerConfig | bool | None = None,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    ) -> Callable[[Callable[..., Any]], FunctionTool]: ...

    def tool(  # fn is not positional-only here: mypy refuses that on a method's implementation of overloads
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        description: str | None = None,
        timeout_s: float = DEFAULT_TOOL_TIMEOUT_S,
        concurrency: int | None = None,
        idempotent: bool = False,
        retry: RetryPolicy | RetryConfig | None = None,
        breaker: CircuitBreaker | BreakerConfig | bool | None = None,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    ) -> FunctionTool | Callable[[Callable[..., Any]], FunctionTool]:
        """Register a tool: ``@runner.tool`` or ``@runner.tool(timeout_s=5, idempotent=True)`` on an ``async def``
        (or an async generator, a streaming tool), or ``runner.tool(existing)`` for one made with
        :func:`agentflow.tool`. Returns the tool as registered, with ``[tools.NAME]`` applied; calling it calls
        the function. The options are those of :func:`agentflow.tool` (docs/tools.md)::

            @runner.tool(timeout_s=5)
            async def get_weather(city: str, days: int = 1) -> dict:
                \"\"\"The forecast for a city.\"\"\"
        """
        if self._lifecycle is not State.CREATED:
            raise LifecycleError("Register tools before starting the Runner; it is already running.")

        options = (name, description, timeout_s, concurrency, idempotent, retry, breaker, max_result_bytes)
        defaults = (None, None, DEFAULT_TOOL_TIMEOUT_S, None, False, None, None, DEFAULT_MAX_RESULT_BYTES)

        def register(f: Callable[..., Any]) -> FunctionTool:
            if isinstance(f, FunctionTool) and options != defaults:
                raise TypeError(f"Tool {f.name!r} is made already; give its options where it was made.")
            made = (
                f
                if isinstance(f, FunctionTool)
                else make_tool(
                    name=name,
                    description=description,
                    timeout_s=timeout_s,
                    concurrency=concurrency,
                    idempotent=idempotent,
                    retry=retry,
                    breaker=breaker,
                    max_result_bytes=max_result_bytes,
                )(f)
            )
            return cast(FunctionTool, self.tools.add(made))

        return register if fn is None else register(fn)

    def workflow(self, name: str, *, max_execution_time_s: float | None = None) -> Workflow:
        """Define workflow ``name``: add steps with ``wf.step``, ``wf.parallel`` and ``wf.join`` (docs/workflows.md).
        Each step becomes an agent when the runner starts, after the graph is checked::

            wf = runner.workflow("research", max_execution_time_s=300)
            wf.step("plan", plan)
            wf.parallel("search", [web, papers, news], after="plan")
            wf.join("merge", merge, after="search", timeout_s=60)
            wf.step("write", write, after="merge")
        """
        if self._lifecycle is not State.CREATED:
            raise LifecycleError("Define workflows before starting the Runner; it is already running.")
        return self.workflows.define(name, max_execution_time_s=max_execution_time_s)

    async def start_workflow(
        self, name: str, payload: Any, *, key: str | None = None, run_id: str | None = None
    ) -> WorkflowRun:
        """Start a run of workflow ``name``: ``payload`` is its first steps' input. ``key`` (default: the run id)
        keys every event of the run; an explicit ``run_id`` makes a start idempotent (starting it again emits
        the same events, which the steps can deduplicate). ``await run.result(timeout_s=...)`` waits for it."""
        return await self.workflows.start(name, payload, key=key, run_id=run_id)

    def with_config(self, config: Config) -> Runner:
        """A new, un-started Runner with this one's agents, tools and workflows and another config (its own bus,
        state, metrics and LLM clients): ``agentcli run --dry-run`` runs an app's agents against the mock LLM this
        way::

            dry = runner.with_config(msgspec.structs.replace(runner.config, llm=mock_providers))
        """
        if self._lifecycle is not State.CREATED:
            raise LifecycleError("with_config copies an un-started Runner; call it before start().")
        other = Runner(config)
        other._specs = dict(self._specs)
        for t in self.tools:  # before start only the runner's own tools are here; MCP tools come with [mcp.*]
            other.tools.add(t, replace=True)
        other.workflows.adopt(self.workflows)
        return other

    @property
    def agent_topics(self) -> dict[str, str]:
        """Registered agents: name → topic."""
        return {name: spec.topic for name, spec in self._specs.items()}

    # ---- lifecycle -------------------------------------------------------------------------------------

    async def _open(self) -> None:
        cfg = self.config
        self._loop = asyncio.get_running_loop()
        for spec in self.workflows.build(dict(self._specs)):
            self._specs[spec.name] = spec
        self._warn_about_config()
        self._stack = contextlib.AsyncExitStack()
        if cfg.tracing.enabled:
            _tracing.configure(cfg.tracing, self)
        await self.bus.start()
        await self.state_store.start()
        if self.llm is not None:
            self._configure_llm()
            await self.llm.start()
        if cfg.mcp:
            self._mcp = self._mcp_hub()
            await self._mcp.start()  # its sessions open now, and its tools join the registry as NAME.tool
        for unused in self.tools.unused_configs():
            logger.warning(
                "The config has [tools.%s] but no tool of that name is registered; check the spelling.", unused
            )
        # max_concurrent_events is shared equally; an agent never runs more workers than it may hold events.
        max_inflight = max(1, cfg.runner.max_concurrent_events // max(1, len(self._specs)))
        # Every agent joins its group at once: on Kafka a join waits for the group's other members to rejoin (a
        # rebalance, seconds), and one agent after the other would make a worker's start the sum of them.
        specs = list(self._specs.values())
        joins = [asyncio.ensure_future(self.bus.subscribe(spec.topic, spec.name)) for spec in specs]
        try:
            subs: list[Subscription] = await asyncio.gather(*joins)
        except BaseException:
            for join in joins:  # the first failure is the error; the other joins stop (the bus closes theirs)
                join.cancel()
            await asyncio.gather(*joins, return_exceptions=True)
            raise
        for spec, sub in zip(specs, subs, strict=True):
            self._agents.append(self._make_worker(spec, max_inflight, sub))
        self._served = frozenset(a.topic for a in self._agents)
        if self._agents:
            shortest = min(a.timeout_s for a in self._agents)
            self.pool.resolution_s = min(0.25, max(0.002, shortest / 20))
        self._tg = await self._stack.enter_async_context(asyncio.TaskGroup())
        for a in self._agents:
            a.start(self._tg)
        self._watchdog = self._tg.create_task(self.pool.watchdog(), name="agentflow-watchdog")
        if self.workflows.has_timeouts:
            self._sweeper = self._tg.create_task(self.workflows.sweep(), name="agentflow-workflow-joins")
        self.insight.start(self._tg)
        mon = cfg.monitoring
        if mon.metrics_enabled:
            from .service import Service

            self._service = Service(self, host=mon.host, port=mon.port)
            await self._service.start()

    def _warn_about_config(self) -> None:
        """Log what in the config is likely a mistake but does not stop the runner."""
        cfg = self.config
        if self.workflows.graphs and cfg.bus.backend == "kafka" and cfg.memory.backend == "memory":
            logger.warning(
                'Workflows run on the Kafka bus with [memory] backend = "memory": a join\'s parts, and run status, '
                "stay in each worker's own memory, so joins and status work only with a single worker; use "
                'backend = "sqlite" (one machine) or "redis".'
            )
        for configured in cfg.agents:
            if configured not in self._specs:
                logger.warning(
                    "The config has [agents.%s] but no agent of that name is registered; check the spelling.",
                    configured,
                )

    def _make_worker(self, spec: AgentSpec, max_inflight: int, sub: Subscription) -> AgentWorker:
        """The worker of one agent, ``[agents.NAME]`` over ``@runner.agent(...)``, reading ``sub``."""
        cfg = self.config
        over = cfg.agent(spec.name)
        retry = cfg.retry
        if isinstance(spec.retry, RetryConfig):
            retry = spec.retry
        elif isinstance(spec.retry, RetryOverride):
            retry = spec.retry.apply(retry)
        if over.retry is not None:
            retry = over.retry.apply(retry)
        concurrency = min(over.concurrency or spec.concurrency or cfg.runner.worker_pool_size, max_inflight)
        self._select_tools(spec, over)
        # Another worker may write the keys of partitions this one loses: its cache forgets them.
        sub.set_rebalance_listener(self.state_store.invalidate)
        kind: Any = AgentWorker
        extra: dict[str, Any] = {}
        if spec.batch_size is not None:
            kind, extra = BatchAgentWorker, {"batch_size": spec.batch_size}
        handler = spec.handler
        if _tracing.TRACER is not None:  # only then: a traced handler costs a span per call
            wrap = _tracing.wrap_handler if spec.batch_size is None else _tracing.wrap_batch_handler
            system = "kafka" if self.bus.backend == "kafka" else "agentflow"
            handler = wrap(handler, spec.name, system, self._timed_out)
        worker: AgentWorker = kind(
            **extra,
            name=spec.name,
            handler=handler,
            sub=sub,
            pool=self.pool,
            metrics=self.metrics.agent(spec.name),
            host=self,
            codec=self.codec,
            concurrency=concurrency,
            timeout_s=over.timeout_s or spec.timeout_s or cfg.runner.event_timeout_s,
            policy=RetryPolicy.from_config(retry),
            max_inflight=max_inflight,
            payload_type=spec.payload_type,
        )
        return worker

    @property
    def http_address(self) -> tuple[str, int] | None:
        """(host, port) of the metrics/health server when it runs."""
        return None if self._service is None else self._service.address

    @property
    def mcp(self) -> MCPHub | None:
        """The pools of the ``[mcp.*]`` servers while the runner runs (``runner.mcp.statistics()``), else None."""
        return self._mcp

    @property
    def service(self) -> Any:
        """The running HTTP server (:class:`agentflow.service.Service`), or None when monitoring is off."""
        return self._service

    async def aclose(self) -> None:
        """Shut down gracefully (see the module docstring); idempotent and safe to call concurrently.

        Cancelling ``aclose`` cuts the drain short, never the cleanup: subscriptions, the HTTP server, the LLM
        clients and the bus are closed in a shielded task that ``aclose`` waits for whatever happens, so every
        later call returns and the runner ends CLOSED.
        """
        await super().aclose()

    async def _drain(self) -> None:
        """Stop intake and let in-flight events finish within ``shutdown_grace_s`` (a cancellation cuts it short)."""
        self._closing_since = time.perf_counter()
        self._waiting.release_all(self._closed_while_waiting)  # stop intake: blocked emits and requests end now
        for a in self._agents:
            await a.stop_intake()
        self._drained = await self._wait_in_flight(self.config.runner.shutdown_grace_s)

    async def _close(self) -> None:
        cancelled = sum(a.inflight for a in self._agents)  # still running: cancelled now, given back to the bus
        grace = self.config.runner.shutdown_grace_s
        try:
            await self._cleanup()
        finally:
            self._shutdown = ShutdownReport(
                grace_s=grace,
                drained=self._drained and not cancelled,
                cancelled=cancelled,
                returned=sum(a.returned for a in self._agents),
                duration_s=time.perf_counter() - (self._closing_since or time.perf_counter()),
            )
            if cancelled:
                logger.warning(
                    "Shutdown grace of %.1f s ran out: %d in-flight events were cancelled and given back to the bus.",
                    grace,
                    cancelled,
                )

    async def _cleanup(self) -> None:
        """Cancel what still runs (its events go back to the bus), fail pending requests, close every part."""
        for a in self._agents:
            await a.cancel()
        self._requests.fail_all(lambda: LifecycleError("The Runner closed before the result of this request arrived."))
        for a in self._agents:
            await a.close_subscription()
        if self._service is not None:
            await self._service.aclose()
        await self.insight.aclose()
        if self.llm is not None:
            await self.llm.aclose()
        if self._mcp is not None:
            await self._mcp.aclose()  # every session closed, stdio processes stopped and reaped
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._stack is not None:
            await self._stack.aclose()
        # Every handler has finished by now: what the store still buffers belongs to events not acknowledged.
        await self.state_store.aclose()
        await self._replies.aclose()
        if self._owns_bus:
            await self.bus.aclose()
        _tracing.release(self)

    async def _wait_in_flight(self, timeout_s: float) -> bool:
        deadline = time.perf_counter() + timeout_s
        delay = 0.0005
        while any(a.inflight for a in self._agents):
            if time.perf_counter() >= deadline:
                return False
            await asyncio.sleep(min(delay, max(0.0, deadline - time.perf_counter())))
            delay = min(delay * 2, 0.01)
        return True

    async def drain(self, timeout_s: float | None = None) -> None:
        """Wait until every event emitted so far (and every follow-up) is finished.

        Raises TimeoutError when ``timeout_s`` passes first.
        """
        self._check_running("drain")
        deadline = None if timeout_s is None else time.perf_counter() + timeout_s
        delay = 0.0002
        while True:
            if not any(a.inflight for a in self._agents):
                s = self.bus.statistics()
                if s.publishers_waiting == 0 and all(
                    sub.buffered == 0 for sub in s.subscriptions if self._is_ours(sub.group)
                ):
                    return
            if deadline is not None and time.perf_counter() >= deadline:
                raise TimeoutError(f"The Runner did not drain within {timeout_s} s.")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.001)  # at most 1 ms late: benchmarks time the drain

    def _is_ours(self, group: str) -> bool:
        return group in self._specs

    # ---- emitting --------------------------------------------------------------------------------------

    def _check_running(self, what: str) -> None:
        if self._lifecycle is not _RUNNING:
            raise LifecycleError(self._state_sentence(what))

    def _check_accepting(self) -> None:
        if self._lifecycle is not _RUNNING:
            raise LifecycleError(self._state_sentence("emit"))

    def _state_sentence(self, what: str) -> str:
        if self._lifecycle is State.CREATED or self._lifecycle is State.STARTING:
            return f"Cannot {what} before the Runner has started; use 'async with runner:' or await runner.start()."
        if self._lifecycle is State.CLOSING:
            return f"Cannot {what}: the Runner is shutting down and no longer accepts events."
        return f"Cannot {what}: the Runner has been closed; create a new Runner."

    async def emit(
        self, topic: str, payload: Any, *, key: str | None = None, headers: dict[str, str] | None = None
    ) -> str:
        """Emit one event, waiting while the topic's buffer is full; return the event id."""
        if self._lifecycle is not _RUNNING:
            self._check_accepting()
        if _tracing.TRACER is not None:
            headers = _tracing.inject(headers)
        eid = new_event_id()
        batch = (
            Event(
                topic=topic,
                payload=payload,
                key=key,
                id=eid,
                headers=headers,
                created_at=time.time(),
                correlation_id=eid,
            ),
        )
        if not self.bus.offer(topic, batch):
            await self._waiting.publish(self.bus, topic, batch)
        em = self._emitted
        if topic in em:
            em[topic] += 1
        else:
            self.metrics.emitted(topic)
        return eid

    def emit_nowait(
        self, topic: str, payload: Any, *, key: str | None = None, headers: dict[str, str] | None = None
    ) -> str:
        """Emit one event, or raise BackpressureError at once if the topic's buffer is full."""
        if self._lifecycle is not _RUNNING:
            self._check_accepting()
        if _tracing.TRACER is not None:
            headers = _tracing.inject(headers)
        eid = new_event_id()
        event = Event(
            topic=topic, payload=payload, key=key, id=eid, headers=headers, created_at=time.time(), correlation_id=eid
        )
        self.bus.publish_nowait(topic, (event,))
        self.metrics.emitted(topic)
        return eid

    async def emit_many(
        self,
        topic: str,
        payloads: Sequence[Any],
        *,
        key: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> list[str]:
        """Emit a batch of events with one bus operation; return their ids (in order)."""
        if self._lifecycle is not _RUNNING:
            self._check_accepting()
        if _tracing.TRACER is not None:
            headers = _tracing.inject(headers)
        events = make_events(topic, list(payloads), key, headers, None, 0)
        if not self.bus.offer(topic, events):
            await self._waiting.publish(self.bus, topic, events)
        self.metrics.emitted(topic, len(events))
        return list(map(_id_of, events))

    async def emit_encoded(self, topic: str, data: bytes, *, key: str | None = None) -> None:
        """Emit an event as bytes (as HTTP ingest or Kafka producers do); bad bytes end in the DLQ."""
        self._check_accepting()
        await self._waiting.publish(self.bus, topic, [RawEvent(topic, bytes(data), key)])
        self.metrics.emitted(topic)

    async def request(
        self,
        topic: str,
        payload: Any,
        *,
        key: str | None = None,
        headers: dict[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """Emit an event and return what its agent's handler returned.

        Raises :class:`RequestTimeoutError` after ``timeout_s`` (default ``runner.request_timeout_s``) and
        :class:`DeadLetteredError` when the event ends in the dead-letter queue. Raises
        :class:`BackpressureError` at once, publishing nothing, when ``runner.max_pending_requests`` requests
        already wait for their results or ``runner.max_waiting_emits`` callers for room in the bus.
        """
        if self._lifecycle is not _RUNNING:
            self._check_accepting()
        if topic not in self._served and self.bus.subscriber_count(topic) == 0:
            raise LifecycleError(f"No agent subscribes to topic {topic!r}, so a request to it cannot be answered.")
        requests = self._requests
        if _tracing.TRACER is not None:
            headers = _tracing.inject(headers)
        eid = new_event_id()
        fut = requests.open(self._loop, eid, topic, timeout_s)
        try:
            batch = (
                Event(
                    topic=topic,
                    payload=payload,
                    key=key,
                    id=eid,
                    headers=headers,
                    created_at=time.time(),
                    correlation_id=eid,
                    reply_to=self._inbox,
                ),
            )
            if not self.bus.offer(topic, batch):
                await self._waiting.publish(self.bus, topic, batch, eid)
            em = self._emitted
            if topic in em:
                em[topic] += 1
            else:
                self.metrics.emitted(topic)
            return await fut
        finally:
            requests.close_request(eid)

    def _closed_while_waiting(self, topic: str) -> LifecycleError:
        if self.bus.backend == "memory":
            outcome = "the event was not emitted"
        else:  # waiting for the brokers' confirmation: the write may have reached them
            outcome = "it may or may not have been written (the brokers had not confirmed it)"
        return LifecycleError(f"The Runner closed while an emit to {topic!r} waited for the bus; {outcome}.")

    def _expired(self, eid: str, exc: RequestTimeoutError) -> None:
        # timeout_s covers the wait for room in the bus too: a request still waiting there gives up now.
        self._waiting.release(eid, lambda _topic: exc)

    # ---- host hooks used by agents ---------------------------------------------------------------------

    def _guarded(self, agent: str, handler: Any, breaker: CircuitBreaker | BreakerConfig) -> Any:
        """``handler`` run inside a circuit breaker (``@runner.agent(..., breaker=...)``).

        While the breaker is open an attempt fails at once with CircuitOpenError, whose ``after_s`` (the
        breaker's retry_after_s) the agent's retry policy waits: the event is retried, never dropped. A timeout
        counts as a failure; a shutdown cancellation gives the permit back uncounted.
        """
        cb = breaker if isinstance(breaker, CircuitBreaker) else CircuitBreaker(agent, breaker, metrics=self.metrics)
        pool = self.pool

        async def guarded(*args: Any) -> Any:
            permit = cb.acquire()
            try:
                result = await handler(*args)
            except (Skip, Reject):
                permit.success()  # the handler answered: the event was the problem, not what it depends on
                raise
            except Exception as exc:
                permit.failure(exc)
                raise
            except BaseException:
                task = asyncio.current_task()
                if task is not None and pool.timed_out(task):  # the watchdog's timeout
                    permit.failure(HandlerTimeoutError(f"Agent {agent!r} ran past its timeout."))
                else:
                    permit.cancel()
                raise
            permit.success()
            return result

        guarded.__name__ = getattr(handler, "__name__", agent)
        return guarded

    def _timed_out(self) -> bool:
        """Whether the current task was cancelled by the watchdog (a timeout), for the event spans."""
        task = asyncio.current_task()
        return task is not None and self.pool.timed_out(task)

    def _llm_for(self, agent: str, event: Event | None) -> AgentLLM:
        if self.llm is None:
            raise LifecycleError(
                "ctx.llm needs an LLM provider: add an [llm.NAME] table with base_url to the config (docs/llm.md)."
            )
        if event is None:
            return self.llm.for_agent(agent, None)
        run = event.correlation_id
        if event.depth == 0 and run is not None:
            # A run's first event names it in the cost history: the workflow of runner.start_workflow (from its
            # header, so every worker names it alike), else the topic the chain of events started on.
            headers = event.headers
            workflow = headers.get(WORKFLOW_HEADER) if headers else None
            self.llm.costs.ledger.name_run(run, workflow or event.topic)
        return self.llm.for_agent(agent, run)

    def _mcp_hub(self) -> MCPHub:
        try:
            from .tools.mcp import MCPHub
        except ImportError as exc:
            raise LifecycleError(
                f"The config has [mcp.*] servers ({', '.join(sorted(self.config.mcp))}), which need the MCP SDK: {exc}."
            ) from None
        return MCPHub(self.config.mcp, registry=self.tools, metrics=self.metrics)

    def _mcp_statistics(self) -> dict[str, Any]:
        return self._mcp.statistics() if self._mcp is not None else {}

    def _select_tools(self, spec: AgentSpec, over: AgentConfig) -> None:
        """The agent's tool selection, checked now: a pattern that selects nothing is a typo, said at start."""
        patterns = over.tools if over.tools is not None else spec.tools
        limit = over.max_parallel_tools or spec.max_parallel_tools or DEFAULT_MAX_PARALLEL_TOOLS
        selection = self.tools.select(patterns if patterns is not None else ())
        selection.check(f"Agent {spec.name!r}")
        metrics = self._tool_metrics.agent(spec.name, selection) if patterns else None
        self._toolboxes[spec.name] = (selection, limit, metrics)

    def _tools_for(self, agent: str, event: Event | None) -> ToolBox:
        selection, limit, metrics = self._toolboxes[agent]
        if event is None:
            return ToolBox(selection, max_parallel=limit, metrics=metrics)
        return ToolBox(selection, max_parallel=limit, key=event.key, workflow=event.correlation_id, metrics=metrics)

    def _configure_llm(self) -> None:
        """Give the LLM hub each agent's settings (``[agents.NAME]`` over ``@runner.agent(...)``), and the second
        cache level when the state lives in Redis."""
        from .llm.hub import AgentSettings

        hub = self.llm
        assert hub is not None
        for spec in self._specs.values():
            over = self.config.agent(spec.name)
            settings = AgentSettings(
                provider=over.provider or spec.provider,
                model=over.model or spec.model,
                temperature=over.temperature if over.temperature is not None else spec.temperature,
                cache_ttl_s=over.cache_ttl_s or spec.cache_ttl_s,
            )
            if settings != AgentSettings():
                hub.set_agent_settings(spec.name, settings)
        shared = self.state_store.backend
        if self.config.memory.backend == "redis" and hasattr(shared, "get_blob"):
            hub.set_shared_cache(cast("SharedCacheLike", shared))

    def _reply(self, event: Event, result: Any, dead: DeadLetter | None) -> None:
        reply_to = event.reply_to
        if reply_to != self._inbox:
            if reply_to is not None and not reply_to.startswith(INBOX_PREFIX):
                self._replies.send(event, result, dead)  # a Producer.request from another process
            return
        if dead is None:
            self._requests.resolve(event.id, result)
        else:
            self._requests.fail(
                event.id, dead_lettered_error(dead.agent, dead.reason, f"{dead.error_type}: {dead.error}")
            )

    async def _emit_follow_up(
        self,
        parent: Event,
        agent: str,
        topic: str,
        payloads: list[Any],
        key: str | None,
        headers: dict[str, str] | None,
        start: int = 0,
    ) -> list[str]:
        if self._lifecycle is _CLOSED:
            raise LifecycleError(self._state_sentence("emit"))
        depth = parent.depth + 1
        if _tracing.TRACER is not None:  # the handler's span is current: the follow-up continues its trace
            headers = _tracing.inject(headers)
        events = make_events(topic, payloads, key, headers, parent.correlation_id, depth, parent.id, start)
        limit = self.config.runner.max_workflow_depth
        if depth > limit:
            for ev in events:
                await self._dead_letter(
                    DeadLetter(
                        topic=topic,
                        agent=None,
                        reason="depth_exceeded",
                        error_type="WorkflowDepthError",
                        error=(
                            f"Agent {agent!r} emitted to {topic!r} at workflow depth {depth}, over "
                            f"max_workflow_depth={limit}; look for a loop between agents or raise the limit."
                        ),
                        attempts=0,
                        failed_at=time.time(),
                        event=ev,
                    )
                )
            am = self.metrics.agent(agent)
            for _ in events:
                am.dead_letter("depth_exceeded")
            logger.warning("Agent %r exceeded max_workflow_depth=%d emitting to %r", agent, limit, topic)
            return []
        await self.bus.publish(topic, events, follow_up=True)
        self.metrics.emitted(topic, len(events))
        return [e.id for e in events]

    async def _dead_letter(self, letter: DeadLetter) -> None:
        if self.config.dlq.enabled:
            await self.bus.dead_letter(letter)
        else:
            logger.error("Dropped dead letter %s (%s): dlq.enabled is false.", letter.id, letter.reason)
        if self.workflows.graphs:
            await self.workflows.on_dead_letter(letter)  # the run the event belongs to has failed

    async def _join_timed_out(self, letter: DeadLetter) -> None:
        """A join waited past its timeout: its run fails to the dead-letter queue (written until it is)."""
        delay = 0.1
        while True:
            try:
                await self._dead_letter(letter)
                break
            except Exception as exc:  # noqa: BLE001 - retried, as a worker retries its dead letters
                logger.warning("Could not write dead letter %s (join_timeout): %s; retrying in %.1f s", letter.id,
                               exc, delay)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        if letter.agent is not None:
            self.metrics.agent(letter.agent).dead_letter("join_timeout")
        logger.warning("%s", letter.error)

    async def _publish(self, topic: str, events: Sequence[Event]) -> None:
        """Publish events made here (a workflow's first steps), waiting for room as emit does."""
        if not self.bus.offer(topic, events):
            await self._waiting.publish(self.bus, topic, events)
        self.metrics.emitted(topic, len(events))

    def _dead_letters_failing(self) -> int:
        """Dead letters whose write to the queue failed and is being retried (``/readyz`` is 503 meanwhile)."""
        return sum(a.dead_letters_failing for a in self._agents)

    # ---- introspection ---------------------------------------------------------------------------------

    def _pool_usage(self) -> tuple[int, int, int]:
        held = sum(a.inflight for a in self._agents)
        done = failed = 0
        for a in self._agents:
            m = self.metrics.agent(a.name)
            done += m.handled + m.skipped
            failed += sum(m.failures.values())
        return held, done, failed

    def _agent_stats(self, a: AgentWorker) -> AgentStatistics:
        m = self.metrics.agent(a.name)
        return AgentStatistics(
            name=a.name,
            topic=a.topic,
            concurrency=a.concurrency,
            timeout_s=a.timeout_s,
            in_flight=a.inflight,
            max_in_flight=a.max_inflight,
            handled=m.handled,
            skipped=m.skipped,
            retries=m.retries,
            failed_attempts=sum(m.failures.values()),
            dead_lettered=m.dead_lettered_total(),
            returned=a.returned,
        )

    def statistics(self) -> RunnerStatistics:
        agents = tuple(self._agent_stats(a) for a in self._agents)
        return RunnerStatistics(
            state=self.state.value,
            emitted=self.metrics.emitted_total(),
            handled=sum(a.handled for a in agents),
            skipped=sum(a.skipped for a in agents),
            dead_lettered=sum(a.dead_lettered for a in agents),
            in_flight=sum(a.in_flight for a in agents),
            returned=sum(a.returned for a in agents),
            pending_requests=len(self._requests),
            waiting_emits=len(self._waiting),
            refused_emits=self._refused["max_waiting_emits"],
            refused_requests=self._refused["max_pending_requests"],
            agents=agents,
            pool=self.pool.statistics(),
            bus=self.bus.statistics(),
            shutdown=self._shutdown,
        )

    def __repr__(self) -> str:
        s = self.statistics()
        return (
            f"<Runner state={s.state} agents={len(self._specs)} emitted={s.emitted} handled={s.handled} "
            f"in_flight={s.in_flight} dead_lettered={s.dead_lettered} busy={s.pool.busy}/{s.pool.size}>"
        )

    def _gauges(self) -> list[GaugeSample]:
        out: list[GaugeSample] = []
        for a in self._agents:
            out.append(
                (
                    "agentflow_events_in_flight",
                    "Events an agent holds: running, waiting or backing off.",
                    ("agent",),
                    (a.name,),
                    float(a.inflight),
                )
            )
            out.append(
                (
                    "agentflow_agent_concurrency",
                    "Handlers this agent may run at once: its workers ([agents.NAME] concurrency).",
                    ("agent",),
                    (a.name,),
                    float(a.concurrency),
                )
            )
            out.append(
                (
                    "agentflow_dead_letter_writes_failing",
                    "Dead letters whose write to the dead-letter queue failed and is being retried.",
                    ("agent",),
                    (a.name,),
                    float(a.dead_letters_failing),
                )
            )
        bus = self.bus.statistics()
        for sub in bus.subscriptions:
            out.append(
                (
                    "agentflow_bus_buffer_depth",
                    "Events waiting in the bus for an agent (consumer group).",
                    ("topic", "group"),
                    (sub.topic, sub.group),
                    float(sub.buffered),
                )
            )
            if sub.lag is not None:
                out.append(
                    (
                        "agentflow_consumer_lag",
                        "Events of the topic the consumer group has not finished (on Kafka: to the partitions' end).",
                        ("topic", "group"),
                        (sub.topic, sub.group),
                        float(sub.lag),
                    )
                )
        out.append(("agentflow_dead_letters", "Entries in the dead-letter queue.", (), (), float(bus.dead_letters)))
        out.append(
            (
                "agentflow_emits_waiting",
                "emit and request calls waiting for room in the bus (runner.max_waiting_emits).",
                (),
                (),
                float(len(self._waiting)),
            )
        )
        out.append(
            (
                "agentflow_requests_pending",
                "runner.request calls waiting for their results (runner.max_pending_requests).",
                (),
                (),
                float(len(self._requests)),
            )
        )
        p = self.pool
        out.append(("agentflow_worker_pool_busy", "Handlers running now.", (), (), float(p.busy)))
        out.append(("agentflow_worker_pool_size", "Handler slots (runner.worker_pool_size).", (), (), float(p.size)))
        return out
