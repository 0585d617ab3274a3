"""The Runner: wires config, bus, pool, agents, metrics and the HTTP service, and owns their lifecycle.

Shutdown has one path (:meth:`Runner.aclose`, also run by ``async with``): stop intake → drain in-flight events
for ``shutdown_grace_s`` → cancel the rest (their events go back to the bus, counted in ``returned``) → close
subscriptions → stop background tasks → close the bus if the runner created it.
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
from typing import TYPE_CHECKING, Any, TypeVar, cast

from . import tracing as _tracing
from ._waiting import WaitingEmits
from .agents import AgentSpec, AgentWorker, BatchAgentWorker, Handler
from .bus import create_bus
from .bus.base import Bus
from .config import Config, RetryConfig, RetryOverride, load_config
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
from .statistics import AgentStatistics, RunnerStatistics, ShutdownReport

if TYPE_CHECKING:
    from .llm.hub import AgentLLM, LLMHub

__all__ = ["Runner"]

logger = logging.getLogger(__name__)
_RUNNING = State.RUNNING
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
        self._stack: contextlib.AsyncExitStack | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._shutdown: ShutdownReport | None = None
        self._service: Any = None
        #: The LLM providers of ``[llm.*]`` (None when there are none); opened in start, closed in aclose.
        self.llm: LLMHub | None = None
        if self.config.llm:
            from .llm.hub import LLMHub  # aiohttp's client is imported only when a provider is configured

            self.llm = LLMHub(self.config.llm, metrics=self.metrics)
        self.metrics.add_gauges(self._gauges)
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
        """
        if self._lifecycle is not State.CREATED:
            raise LifecycleError("Register agents before starting the Runner; it is already running.")
        if concurrency is not None and concurrency < 1:
            raise ValueError("concurrency must be at least 1.")
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError("timeout_s must be greater than 0.")
        if batch_size is not None and batch_size < 1:
            raise ValueError("batch_size must be at least 1.")

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
            )
            return handler

        return register

    def with_config(self, config: Config) -> Runner:
        """A new, un-started Runner with this one's agents and another config (its own bus, metrics and LLM
        clients): ``agentcli run --dry-run`` runs an app's agents against the mock LLM this way::

            dry = runner.with_config(msgspec.structs.replace(runner.config, llm=mock_providers))
        """
        other = Runner(config)
        other._specs = dict(self._specs)
        return other

    @property
    def agent_topics(self) -> dict[str, str]:
        """Registered agents: name → topic."""
        return {name: spec.topic for name, spec in self._specs.items()}

    # ---- lifecycle -------------------------------------------------------------------------------------

    async def _open(self) -> None:
        cfg = self.config
        for configured in cfg.agents:
            if configured not in self._specs:
                logger.warning(
                    "The config has [agents.%s] but no agent of that name is registered; check the spelling.",
                    configured,
                )
        self._stack = contextlib.AsyncExitStack()
        if cfg.tracing.enabled:
            _tracing.configure(cfg.tracing, self)
        await self.bus.start()
        if self.llm is not None:
            await self.llm.start()
        n = max(1, len(self._specs))
        for spec in self._specs.values():
            over = cfg.agent(spec.name)
            retry = cfg.retry
            if isinstance(spec.retry, RetryConfig):
                retry = spec.retry
            elif isinstance(spec.retry, RetryOverride):
                retry = spec.retry.apply(retry)
            if over.retry is not None:
                retry = over.retry.apply(retry)
            # max_concurrent_events is shared equally; an agent never runs more workers than it may hold events.
            max_inflight = max(1, cfg.runner.max_concurrent_events // n)
            concurrency = min(over.concurrency or spec.concurrency or cfg.runner.worker_pool_size, max_inflight)
            sub = await self.bus.subscribe(spec.topic, spec.name)
            kind: Any = AgentWorker
            extra: dict[str, Any] = {}
            if spec.batch_size is not None:
                kind, extra = BatchAgentWorker, {"batch_size": spec.batch_size}
            handler = spec.handler
            if _tracing.TRACER is not None:  # only then: a traced handler costs a span per call
                wrap = _tracing.wrap_handler if spec.batch_size is None else _tracing.wrap_batch_handler
                system = "kafka" if self.bus.backend == "kafka" else "agentflow"
                handler = wrap(handler, spec.name, system, self._timed_out)
            self._agents.append(
                kind(
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
            )
        if self._agents:
            shortest = min(a.timeout_s for a in self._agents)
            self.pool.resolution_s = min(0.25, max(0.002, shortest / 20))
        self._tg = await self._stack.enter_async_context(asyncio.TaskGroup())
        for a in self._agents:
            a.start(self._tg)
        self._watchdog = self._tg.create_task(self.pool.watchdog(), name="agentflow-watchdog")
        self.insight.start(self._tg)
        mon = cfg.monitoring
        if mon.metrics_enabled:
            from .service import Service

            self._service = Service(self, host=mon.host, port=mon.port)
            await self._service.start()

    @property
    def http_address(self) -> tuple[str, int] | None:
        """(host, port) of the metrics/health server when it runs."""
        return None if self._service is None else self._service.address

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
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._stack is not None:
            await self._stack.aclose()
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
        if self.bus.subscriber_count(topic) == 0:
            raise LifecycleError(f"No agent subscribes to topic {topic!r}, so a request to it cannot be answered.")
        requests = self._requests
        requests.check_room(topic)
        if _tracing.TRACER is not None:
            headers = _tracing.inject(headers)
        loop = asyncio.get_running_loop()
        eid = new_event_id()
        fut = requests.open(loop, eid, topic, timeout_s)
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
            # A workflow's first event names it in the cost history (its topic), unless the workflow layer does.
            self.llm.costs.ledger.name_run(run, event.topic)
        return self.llm.for_agent(agent, run)

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
    ) -> list[str]:
        if self._lifecycle is State.CLOSED:
            raise LifecycleError(self._state_sentence("emit"))
        depth = parent.depth + 1
        if _tracing.TRACER is not None:  # the handler's span is current: the follow-up continues its trace
            headers = _tracing.inject(headers)
        events = make_events(topic, payloads, key, headers, parent.correlation_id, depth)
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
