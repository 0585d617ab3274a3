"""``runner.workflows``: the workflows of one runner, their runs, their status, and the joins that time out.

:class:`Workflows` turns every workflow into agents when the runner starts (one per step, on topic
``wf.WORKFLOW.STEP``), starts runs (:meth:`Workflows.start`, also ``runner.start_workflow``), answers
:meth:`Workflows.status` from the state store (so any worker can answer for any run), waits for a run's result
(:class:`WorkflowRun`), marks a run failed when one of its events ends in the dead-letter queue, and runs the
sweeper that fails joins still waiting past their ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from ..agents.context import Context
from ..agents.spec import AgentSpec
from ..components import ComponentFigures, ComponentSample
from ..errors import WorkflowError, WorkflowFailedError, WorkflowGraphError
from ..events import DeadLetter, Event, new_event_id
from ..state.handle import StateHandle
from ..state.store import MISSING, StateStore
from .graph import Graph, Node, Workflow, from_config, import_handler, is_agent_ref, step_agent
from .records import (
    DEADLINE_HEADER,
    FAILED_NS,
    JOIN_NS,
    PENDING_SHARDS,
    RUN_HEADER,
    RUN_NS,
    STEP_NS,
    WORKFLOW_HEADER,
    Failure,
    JoinRecord,
    RunRecord,
    StepRecord,
    StepStatus,
    WorkflowStatus,
    pending_namespace,
)
from .steps import pending_handle, step_handler

if TYPE_CHECKING:
    from ..runner import Runner

__all__ = ["WorkflowRun", "Workflows"]

logger = logging.getLogger("agentflow.workflows")

# How often run.result() looks in the state store for a run finished on another worker: from 20 ms, doubling
# to 1 s. Runs whose steps all run in this process (the memory bus) are answered by the step itself.
_POLL_FIRST_S = 0.02
_POLL_MAX_S = 1.0
_RUN_DEC = msgspec.msgpack.Decoder(RunRecord)
_STEP_DEC = msgspec.msgpack.Decoder(StepRecord)
_FAILURE_DEC = msgspec.msgpack.Decoder(Failure)
_PENDING_DEC = msgspec.msgpack.Decoder(dict[str, tuple[float, str]])


class WorkflowRun:
    """One run of a workflow, as ``runner.start_workflow`` returns it::

    run = await runner.start_workflow("research", {"topic": "tides"})
    report = await run.result(timeout_s=60)
    print(await run.status())
    """

    __slots__ = ("_workflows", "run_id", "workflow")

    def __init__(self, workflows: Workflows, run_id: str, workflow: str) -> None:
        self._workflows = workflows
        self.run_id = run_id
        self.workflow = workflow

    def __repr__(self) -> str:
        return f"<WorkflowRun {self.workflow!r} run_id={self.run_id!r}>"

    async def result(self, timeout_s: float | None = None) -> Any:
        """The run's result: the last step's (``{step: result}`` with several last steps). Raises
        :class:`~agentflow.errors.WorkflowFailedError` when a step ended in the dead-letter queue, and
        ``TimeoutError`` after ``timeout_s`` (the run goes on)."""
        return await self._workflows.result(self.run_id, self.workflow, timeout_s)

    async def status(self) -> WorkflowStatus | None:
        """Where the run stands (:meth:`Workflows.status`)."""
        return await self._workflows.status(self.run_id)


class Workflows:
    """The workflows of a runner (``runner.workflows``); see the module docstring."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner
        self._defined: dict[str, Workflow] = {}
        self.graphs: dict[str, Graph] = {}
        self._by_topic: dict[str, tuple[Graph, str]] = {}
        # run id -> (a future per result() call waiting for it, the workflow): bounded by the runs being awaited.
        # One future per call, not one shared: a call that times out cancels only its own, and a step that
        # finishes the run wakes each caller directly (a shared future behind asyncio.shield would cost every
        # run one more pass of the event loop, which under load is milliseconds).
        self._waiters: dict[str, tuple[list[asyncio.Future[Any]], Graph]] = {}
        self._sinks: dict[str, dict[str, Any]] = {}
        # (workflow, step) -> what each step's runs took and spent: the profile report's step rows
        self._figures: dict[tuple[str, str], ComponentFigures] = {}
        runner.metrics.add_components(self.components)

    def __repr__(self) -> str:
        return f"<Workflows {sorted(self._defined) or sorted(self.graphs)} waiting={len(self._waiters)}>"

    @property
    def store(self) -> StateStore:
        return self._runner.state_store

    # ---- definition ----------------------------------------------------------------------------------

    def define(self, name: str, *, max_execution_time_s: float | None = None) -> Workflow:
        """A new workflow ``name`` (``runner.workflow(name)``); its steps are checked when the runner starts."""
        if name in self._defined or name in self._runner.config.workflows:
            raise WorkflowGraphError(f"A workflow named {name!r} is already defined; give each its own name.")
        wf = Workflow(name, max_execution_time_s=max_execution_time_s)
        self._defined[name] = wf
        return wf

    def adopt(self, other: Workflows) -> None:
        """Define here the workflows ``other`` defined in code (``Runner.with_config``)."""
        self._defined.update(other._defined)

    def build(self, registered: dict[str, AgentSpec]) -> list[AgentSpec]:
        """Check every workflow (code and ``[workflows.*]``) and return one agent per step; called at start."""
        defined = dict(self._defined)
        for name, cfg in self._runner.config.workflows.items():
            defined[name] = from_config(name, cfg)
        specs: list[AgentSpec] = []
        for name, wf in defined.items():

            def resolve(workflow: str, step: str, handler: Any) -> Callable[..., Any]:
                return self._resolve(workflow, step, handler, registered)

            graph = wf.compile(resolve)
            self.graphs[name] = graph
            for step, node in graph.nodes.items():
                agent = graph.agent(step)
                if agent in registered:
                    raise WorkflowGraphError(
                        f"Step {step!r} of workflow {name!r} runs as agent {agent!r}, but an agent of that name is "
                        "already registered; rename the step or the agent."
                    )
                self._by_topic[graph.topic(step)] = (graph, step)
                figures = ComponentFigures(
                    "step", step, workflow=name, settings={"concurrency": f"[agents.{agent}] concurrency"}
                )
                self._figures[name, step] = figures
                o = node.options
                specs.append(
                    AgentSpec(
                        name=agent,
                        topic=graph.topic(step),
                        handler=step_handler(self, graph, node, figures),
                        concurrency=o.concurrency,
                        retry=o.retry,
                        provider=o.provider,
                        model=o.model,
                        temperature=o.temperature,
                        cache_ttl_s=o.cache_ttl_s,
                    )  # fmt: skip
                )
        return specs

    @staticmethod
    def _resolve(workflow: str, step: str, handler: Any, registered: dict[str, AgentSpec]) -> Callable[..., Any]:
        if isinstance(handler, str) and (is_agent_ref(handler) or ":" not in handler):
            spec = registered.get(handler)
            if spec is None:
                close = difflib.get_close_matches(handler, list(registered), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else "."
                raise WorkflowGraphError(
                    f"Step {step!r} of workflow {workflow!r} runs agent {handler!r}, which is not registered{hint}"
                )
            if spec.batch_size is not None:
                raise WorkflowGraphError(
                    f"Step {step!r} of workflow {workflow!r} names batch agent {handler!r}; a step takes one event."
                )
            found: Callable[..., Any] = spec.handler
            return found
        if isinstance(handler, str):
            return import_handler(handler)
        import inspect

        if not inspect.iscoroutinefunction(handler):
            raise WorkflowGraphError(
                f"Step {step!r} of workflow {workflow!r}: handler {handler!r} must be an async function: "
                "async def f(event, ctx)."
            )
        fn: Callable[..., Any] = handler
        return fn

    @property
    def has_timeouts(self) -> bool:
        return any(n.timeout_s is not None for g in self.graphs.values() for n in g.nodes.values())

    def _graph(self, name: str) -> Graph:
        graph = self.graphs.get(name)
        if graph is None:
            known = sorted(self.graphs) or sorted(self._defined)
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "."
            raise WorkflowError(
                f"No workflow named {name!r} runs here{hint} Workflows: {', '.join(known) or 'none'} (define them "
                "with runner.workflow(name) or [workflows.NAME] before the runner starts)."
            )
        return graph

    # ---- runs ----------------------------------------------------------------------------------------

    async def start(self, name: str, payload: Any, *, key: str | None = None, run_id: str | None = None) -> WorkflowRun:
        """Start a run of ``name`` with ``payload`` as its first steps' input; see ``runner.start_workflow``."""
        runner = self._runner
        runner._check_accepting()
        graph = self._graph(name)
        run_id = run_id or new_event_id()
        now = time.time()
        limit = graph.max_execution_time_s
        deadline = None if limit is None else now + limit
        key = key or run_id
        store = self.store
        unit = store.unit(scope=f"_wf:{run_id}")
        record = RunRecord(workflow=name, key=key, started_at=now, deadline=deadline)
        run: StateHandle[RunRecord] = StateHandle(store, RUN_NS, run_id, unit)
        await run.set(record, once=True)  # a repeated start keeps the first
        await unit.committed()
        headers = {WORKFLOW_HEADER: name, RUN_HEADER: run_id}
        if deadline is not None:
            headers[DEADLINE_HEADER] = repr(deadline)
        for i, root in enumerate(graph.roots):
            topic = graph.topic(root)
            event = Event(
                topic=topic, payload=payload, key=key, id=f"{run_id}/{i}", headers=headers, created_at=now,
                correlation_id=run_id,
            )  # fmt: skip
            await runner._publish(topic, (event,))
        return WorkflowRun(self, run_id, name)

    def usage(self, run_id: str, agent: str) -> tuple[int, int, float]:
        """Prompt tokens, completion tokens and cost of ``agent`` (a step) in run ``run_id`` so far, here."""
        llm = self._runner.llm
        return (0, 0, 0.0) if llm is None else llm.costs.step_usage(run_id, agent)

    def timed_out(self) -> bool:
        """Whether the current step was cancelled by the watchdog (its timeout), not by a shutdown."""
        return self._runner._timed_out()

    def components(self) -> list[ComponentSample]:
        """The profile's step rows (``runner.metrics.add_components``): one per step of every workflow, with its
        agent's concurrency once the runner started."""
        workers = {a.name: a.concurrency for a in self._runner._agents}
        out = []
        for (workflow, step), figures in self._figures.items():
            figures.concurrency = workers.get(step_agent(workflow, step))
            out.append(figures.sample())
        return out

    def sink_done(self, run_id: str, step: str, result: Any) -> None:
        """A last step of ``run_id`` returned here: answer whoever waits for the run in this process."""
        waiting = self._waiters.get(run_id)
        if waiting is None:
            return
        graph = waiting[1]
        if len(graph.sinks) == 1:
            _settle(waiting[0], result, None)
            return
        got = self._sinks.setdefault(run_id, {})
        got[step] = result
        if len(got) == len(graph.sinks):
            _settle(waiting[0], {s: got[s] for s in graph.sinks}, None)

    async def result(self, run_id: str, workflow: str, timeout_s: float | None) -> Any:
        graph = self._graph(workflow)
        loop = asyncio.get_running_loop()
        waiting = self._waiters.get(run_id)
        if waiting is None:
            waiting = self._waiters[run_id] = ([], graph)
        futures = waiting[0]
        fut: asyncio.Future[Any] = loop.create_future()
        futures.append(fut)
        local = self._runner.bus.backend == "memory"  # every step runs in this process: it answers itself
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        delay = _POLL_FIRST_S
        try:
            while not fut.done():
                outcome = await self._outcome(run_id, graph)
                if outcome is not None:
                    if isinstance(outcome, WorkflowFailedError):
                        _settle(futures, None, outcome)
                    else:
                        _settle(futures, outcome[0], None)
                    break
                wait = None if local else delay
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(
                            f"Run {run_id} of workflow {workflow!r} did not finish within {timeout_s} s; it goes "
                            "on: see runner.workflows.status(run_id)."
                        )
                    wait = left if wait is None else min(wait, left)
                try:
                    async with asyncio.timeout(wait):
                        await fut
                except TimeoutError:
                    if fut.cancelled():  # the wait ran out (not the run's answer): wait on a fresh future
                        futures.remove(fut)
                        fut = loop.create_future()
                        futures.append(fut)
                    delay = min(delay * 2, _POLL_MAX_S)
            return fut.result()
        finally:
            if fut in futures:
                futures.remove(fut)
            if not futures and self._waiters.get(run_id) is waiting:
                del self._waiters[run_id]
                self._sinks.pop(run_id, None)

    async def _outcome(self, run_id: str, graph: Graph) -> tuple[Any] | WorkflowFailedError | None:
        """``(result,)`` when every last step is done, else the error when the run failed, else None; read
        fresh from the state store."""
        store = self.store
        results: dict[str, Any] = {}
        for sink in graph.sinks:
            rec = await store.get(f"{STEP_NS}:{run_id}/{sink}", _STEP_DEC, fresh=True)
            if rec is MISSING or rec.state != "done":
                break
            results[sink] = rec.result
        else:
            return (results[graph.sinks[0]] if len(graph.sinks) == 1 else results,)
        failure = await store.get(f"{FAILED_NS}:{run_id}", _FAILURE_DEC, fresh=True)
        return None if failure is MISSING else _failed_error(run_id, graph.name, failure)

    async def status(self, run_id: str) -> WorkflowStatus | None:
        """Where run ``run_id`` stands, read from the state store (any worker can answer for any run); None when
        no run of that id is known (never started, or its records expired)."""
        store = self.store
        run = await store.get(f"{RUN_NS}:{run_id}", _RUN_DEC, fresh=True)
        if run is MISSING:
            return None
        graph = self.graphs.get(run.workflow)
        names = list(graph.nodes) if graph is not None else []
        steps: list[StepStatus] = []
        for step in names:
            rec = await store.get(f"{STEP_NS}:{run_id}/{step}", _STEP_DEC, fresh=True)
            steps.append(_step_status(step, None if rec is MISSING else rec))
        failure = await store.get(f"{FAILED_NS}:{run_id}", _FAILURE_DEC, fresh=True)
        failed = failure is not MISSING
        sinks = graph.sinks if graph is not None else ()
        by_name = {s.name: s for s in steps}
        done = bool(sinks) and all(by_name[s].state == "done" for s in sinks)
        ends = [s.finished_at for s in steps if s.finished_at is not None]
        finished = (max(ends) if ends else None) if done else failure.failed_at if failed else None
        return WorkflowStatus(
            run_id=run_id, workflow=run.workflow, key=run.key,
            state="done" if done else "failed" if failed else "running",
            started_at=run.started_at, deadline=run.deadline, finished_at=finished,
            duration_s=None if finished is None else finished - run.started_at,
            tokens=sum(s.tokens for s in steps), cost_usd=sum(s.cost_usd for s in steps), steps=steps,
            failed_step=failure.step if failed else None,
        )  # fmt: skip

    # ---- failures --------------------------------------------------------------------------------------

    async def on_dead_letter(self, letter: DeadLetter) -> None:
        """A dead letter was written: if its event belongs to a run, mark the step and the run failed. Never
        raises (the caller retries a dead-letter write that raised)."""
        ev = letter.event
        if ev is None or not ev.headers or RUN_HEADER not in ev.headers:
            return
        found = self._by_topic.get(ev.topic)
        if found is None:
            return
        graph, step = found
        run_id = ev.headers[RUN_HEADER]
        try:
            store = self.store
            failed = StepRecord(
                state="failed", finished_at=letter.failed_at, attempts=letter.attempts, reason=letter.reason,
                error=f"{letter.error_type}: {letter.error}",
            )  # fmt: skip
            status: StateHandle[StepRecord] = StateHandle(store, STEP_NS, f"{run_id}/{step}")
            await status.set(failed)
            failure = Failure(step=step, reason=letter.reason, error=failed.error or "", failed_at=letter.failed_at)
            first: StateHandle[Any] = StateHandle(store, FAILED_NS, run_id)
            await first.update(lambda f: failure if f is None else f)  # the first failure of the run stays
        except Exception:  # noqa: BLE001 - the dead letter is written; only the status could not be
            logger.exception("Could not mark run %s of workflow %r failed", run_id, graph.name)
            return
        waiting = self._waiters.get(run_id)
        if waiting is not None:
            _settle(waiting[0], None, _failed_error(run_id, graph.name, failure))

    async def replaying(self, events: list[Event]) -> None:
        """Dead letters of runs' events are replayed: their runs are running again (the failure is forgotten,
        the step pending), so ``run.result()`` waits for them instead of raising."""
        if not self.graphs:
            return
        store = self.store
        for ev in events:
            run_id = (ev.headers or {}).get(RUN_HEADER)
            found = self._by_topic.get(ev.topic)
            if run_id is None or found is None:
                continue
            await StateHandle(store, FAILED_NS, run_id).delete()
            await StateHandle(store, STEP_NS, f"{run_id}/{found[1]}").delete()
        await store.flush()

    # ---- join timeouts ---------------------------------------------------------------------------------

    async def watch_pending(
        self, graph: Graph, node: Node, run_id: str, key: str, deadline: float, ctx: Context
    ) -> None:
        """List ``run_id`` among the runs ``node`` waits for with a timeout (the sweeper looks at them)."""
        await pending_handle(graph, node, run_id, ctx, self.store).update(
            lambda d: {**(d or {}), run_id: (deadline, key)}, default={}
        )

    async def forget_pending(self, graph: Graph, node: Node, run_id: str, ctx: Context | None) -> None:
        def drop(d: dict[str, Any] | None) -> dict[str, Any]:
            return {k: v for k, v in (d or {}).items() if k != run_id}

        await pending_handle(graph, node, run_id, ctx, self.store).update(drop, default={})

    def sweep_interval_s(self) -> float:
        timeouts = [n.timeout_s for g in self.graphs.values() for n in g.nodes.values() if n.timeout_s is not None]
        return min(1.0, max(0.01, min(timeouts) / 10)) if timeouts else 1.0

    async def sweep(self) -> None:
        """Forever: fail the joins whose timeout passed. Every worker sweeps; a version check lets one of them
        move a join from waiting to timed out, and only that one writes the dead letter."""
        interval = self.sweep_interval_s()
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep_once()
            except Exception:  # noqa: BLE001 - the next sweep tries again
                logger.warning("Sweeping workflow joins for timeouts failed; trying again", exc_info=True)

    async def sweep_once(self) -> int:
        """One pass over every join with a timeout; returns how many it failed."""
        failed = 0
        store = self.store
        now = time.time()
        for graph in self.graphs.values():
            for node in graph.nodes.values():
                if node.timeout_s is None:
                    continue
                ns = pending_namespace(graph.name, node.name)
                for shard in range(PENDING_SHARDS):
                    waiting = await store.get(f"{ns}:{shard}", _PENDING_DEC, fresh=True)
                    if waiting is MISSING:
                        continue
                    for run_id, (deadline, key) in waiting.items():
                        if deadline <= now:
                            failed += await self._time_out(graph, node, run_id, key, now)
        return failed

    async def _time_out(self, graph: Graph, node: Node, run_id: str, key: str, now: float) -> int:
        made = False

        def expire(rec: JoinRecord) -> JoinRecord:
            nonlocal made
            made = rec.state == "waiting" and rec.deadline is not None and rec.deadline <= now
            return msgspec.structs.replace(rec, state="timed_out") if made else rec

        store = self.store
        handle = StateHandle(store, JOIN_NS, f"{run_id}/{node.name}").typed(JoinRecord)
        rec = await handle.update(expire, default=JoinRecord())
        await self.forget_pending(graph, node, run_id, None)
        if not made:
            return 0
        await self._runner._join_timed_out(self._timeout_letter(graph, node, run_id, key, rec, now))
        return 1

    def _timeout_letter(
        self, graph: Graph, node: Node, run_id: str, key: str, rec: JoinRecord, now: float
    ) -> DeadLetter:
        from ..errors import JoinTimeoutError

        missing = tuple(p for p in node.parents if p not in rec.parts)
        error = JoinTimeoutError(
            f"Join {node.name!r} of run {run_id} (workflow {graph.name!r}) got {len(rec.parts)} of "
            f"{len(node.parents)} parts within {node.timeout_s:g} s; missing: {', '.join(missing)}. The dead letter "
            "holds the parts it had; replaying it runs the join with them.",
            run_id=run_id,
            missing=missing,
        )
        headers = {WORKFLOW_HEADER: graph.name, RUN_HEADER: run_id}
        run_deadline = None
        if graph.max_execution_time_s is not None:
            run_deadline = rec.first_at + graph.max_execution_time_s  # an upper bound: the run started earlier
            headers[DEADLINE_HEADER] = repr(run_deadline)
        parts = {p: rec.parts[p] for p in node.parents if p in rec.parts}
        topic = graph.topic(node.name)
        event = Event(
            topic=topic, payload=parts, key=key, id=f"{run_id}/{node.name}/timeout", headers=headers, created_at=now,
            correlation_id=run_id,
        )  # fmt: skip
        return DeadLetter(
            topic=topic, agent=graph.agent(node.name), reason="join_timeout", error_type="JoinTimeoutError",
            error=str(error), attempts=0, failed_at=now, event=event,
        )  # fmt: skip


def _settle(futures: list[asyncio.Future[Any]], result: Any, error: WorkflowFailedError | None) -> None:
    """Answer every result() call waiting for a run: with its result, or with the error that failed it."""
    for fut in futures:
        if not fut.done():
            if error is None:
                fut.set_result(result)
            else:
                fut.set_exception(error)


def _failed_error(run_id: str, workflow: str, failure: Failure) -> WorkflowFailedError:
    return WorkflowFailedError(
        f"Run {run_id} of workflow {workflow!r} failed: step {failure.step!r} ended in the dead-letter queue "
        f"({failure.reason}: {failure.error}).",
        run_id=run_id,
        step=failure.step,
        reason=failure.reason,
    )


def _step_status(name: str, rec: StepRecord | None) -> StepStatus:
    if rec is None:
        return StepStatus(name=name, state="pending")
    duration = None
    if rec.started_at is not None and rec.finished_at is not None:
        duration = rec.finished_at - rec.started_at
    return StepStatus(
        name=name, state=rec.state, started_at=rec.started_at, finished_at=rec.finished_at, duration_s=duration,
        attempts=rec.attempts, tokens=rec.tokens, cost_usd=rec.cost_usd, reason=rec.reason, error=rec.error,
    )  # fmt: skip
