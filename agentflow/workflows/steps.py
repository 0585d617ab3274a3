"""A workflow step at run time: the handler its agent runs around the user's, and a join's parts.

For each event of a run the step agent checks the run's deadline (before each attempt), gathers a join's parts,
records the step's state, calls the user's handler with the step's input as ``event.payload``, emits the
result to each child step (a part, for a join) as follow-ups of the event, and records the step as done.
Follow-up ids are derived from the event's id, so a redelivered step emits the same ids again; a join records
each part with ``once=True``, so a redelivered part is counted once, and only the event that completed the join
runs its handler (again, if that event is redelivered, emitting the same ids).
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec

from .. import tracing as _tracing
from ..agents.context import Context
from ..components import ComponentFigures
from ..errors import Reject, Skip, WorkflowDeadlineError
from ..events import Event
from ..state.handle import StateHandle
from .graph import Graph, Node
from .records import (
    DEADLINE_HEADER,
    JOIN_NS,
    PART_HEADER,
    PENDING_SHARDS,
    RUN_HEADER,
    STEP_NS,
    JoinRecord,
    StepRecord,
    pending_namespace,
)

if TYPE_CHECKING:
    from .runs import Workflows

__all__ = ["pending_shard", "step_handler"]

logger = logging.getLogger("agentflow.workflows")

StepHandler = Callable[[Event, Context], Awaitable[Any]]


def pending_shard(run_id: str) -> str:
    return str(zlib.crc32(run_id.encode()) % PENDING_SHARDS)


def check_deadline(graph: Graph, step: str, run_id: str, headers: dict[str, str]) -> None:
    """Raise WorkflowDeadlineError when the run is past its ``max_execution_time_s``."""
    raw = headers.get(DEADLINE_HEADER)
    if raw is None:
        return
    deadline = float(raw)
    now = time.time()
    if now > deadline:
        raise WorkflowDeadlineError(
            f"Run {run_id} of workflow {graph.name!r} passed its deadline ({graph.max_execution_time_s:g} s, "
            f"max_execution_time_s) {now - deadline:.3f} s before step {step!r} could start; raise "
            "max_execution_time_s, or make the steps faster.",
            run_id=run_id,
        )


def step_handler(workflows: Workflows, graph: Graph, node: Node, figures: ComponentFigures) -> StepHandler:
    """The handler of ``node``'s agent; each attempt that runs the step counts into ``figures`` (duration,
    outcome, tokens and cost: the profile report's step row) and, while tracing is on, is a span."""
    user = node.handler
    name = node.name
    workflow = graph.name
    agent = graph.agent(name)
    children = [(graph.topic(c), graph.nodes[c].join) for c in node.children]
    to_join = any(j for _, j in children)
    sink = not node.children
    join = node.join
    replace = msgspec.structs.replace
    usage = workflows.usage

    async def run_step(event: Event, ctx: Context) -> Any:
        headers = event.headers or {}
        run_id = headers.get(RUN_HEADER)
        if run_id is None:
            raise Reject(
                f"Event {event.id} on {event.topic!r} belongs to no run of workflow {workflow!r} (it has no "
                f"{RUN_HEADER} header); start runs with runner.start_workflow({workflow!r}, payload)."
            )
        check_deadline(graph, name, run_id, headers)
        payload = event.payload
        if join and PART_HEADER in headers:
            parts = await add_part(workflows, graph, node, ctx, run_id, headers[PART_HEADER], event)
            if parts is None:
                return None  # the join waits for more parts (or another event completed it)
            payload = parts
        t0 = time.perf_counter()
        spent = usage(run_id, agent)  # a retry's earlier attempts spent this already
        figures.in_flight += 1
        if event.attempt > 1:
            figures.retries += 1
        outcome = "ok"
        try:
            return await _run(event if payload is event.payload else replace(event, payload=payload), ctx, run_id)
        except (Skip, Reject) as exc:
            outcome = "ok" if isinstance(exc, Skip) else "rejected"  # a Skip is the step's own answer
            raise
        except Exception:
            outcome = "error"
            raise
        except BaseException:
            outcome = "timeout" if workflows.timed_out() else ""  # "": a shutdown, the event comes back
            raise
        finally:
            figures.in_flight -= 1
            if outcome:
                _observe(figures, time.perf_counter() - t0, outcome, spent, usage(run_id, agent))

    async def _run(event: Event, ctx: Context, run_id: str) -> Any:
        headers = event.headers or {}
        status = ctx.state.of(STEP_NS, f"{run_id}/{name}")
        started = time.time()
        await status.set(StepRecord(state="running", started_at=started, attempts=event.attempt))
        if _tracing.TRACER is None:
            result = await user(event, ctx)
        else:
            with _tracing.workflow_step(workflow, name, run_id):
                result = await user(event, ctx)
        if children:
            # Each emit copies the headers it is given (make_events), so these are built once per step and only
            # when needed: without the part header this event came with, and with this step's for a join.
            out = headers if PART_HEADER not in headers else {k: v for k, v in headers.items() if k != PART_HEADER}
            part = {**out, PART_HEADER: name} if to_join else out
            for topic, joins in children:
                await ctx.emit(topic, result, key=event.key, headers=part if joins else out)
        prompt, completion, cost = usage(run_id, agent)
        done = StepRecord(
            state="done",
            started_at=started,
            finished_at=time.time(),
            attempts=event.attempt,
            tokens=prompt + completion,
            cost_usd=cost,
            result=result if sink else None,
        )
        await status.set(done)
        if sink:
            workflows.sink_done(run_id, name, result)
        return result

    run_step.__name__ = getattr(user, "__name__", name)
    return run_step


_Spent = tuple[int, int, float]  # prompt tokens, completion tokens, US dollars


def _observe(figures: ComponentFigures, duration_s: float, outcome: str, spent: _Spent, now: _Spent) -> None:
    """Count one attempt of a step: its duration and outcome, and what its LLM calls spent (``now - spent``)."""
    figures.observe(duration_s, outcome)
    if now[0] >= spent[0] and now[1] >= spent[1]:  # else the tracker forgot the run meanwhile (after 100,000 more)
        figures.add_usage(now[0] - spent[0], now[1] - spent[1], now[2] - spent[2])


async def add_part(
    workflows: Workflows, graph: Graph, node: Node, ctx: Context, run_id: str, parent: str, event: Event
) -> dict[str, Any] | None:
    """Record ``parent``'s result for the join ``node`` of ``run_id``; the parts by step name (in the order of
    the parents) when this event completes the join (or is a redelivery of the one that did), else None."""
    if parent not in node.parents:
        raise Reject(
            f"Join {node.name!r} of workflow {graph.name!r} got a part from {parent!r}, which is not one of its "
            f"parents ({', '.join(node.parents)})."
        )
    now = time.time()
    timeout = node.timeout_s
    wanted = set(node.parents)
    payload = event.payload

    def add(rec: JoinRecord) -> JoinRecord:
        if rec.state != "waiting":
            return rec  # completed or timed out already: a late part changes nothing
        parts = {**rec.parts, parent: payload}
        first = rec.first_at if rec.parts else now
        deadline = rec.deadline if rec.parts else (None if timeout is None else now + timeout)
        if wanted.issubset(parts):
            return JoinRecord(parts=parts, first_at=first, deadline=deadline, state="done", completed_by=event.id)
        return JoinRecord(parts=parts, first_at=first, deadline=deadline)

    handle = ctx.state.of(JOIN_NS, f"{run_id}/{node.name}").typed(JoinRecord)
    rec = await handle.update(add, default=JoinRecord(), once=True)
    if rec.state == "done":
        if rec.completed_by != event.id:
            return None
        if timeout is not None:
            await workflows.forget_pending(graph, node, run_id, ctx)
        return {p: rec.parts[p] for p in node.parents}
    if rec.state == "timed_out":
        logger.info(
            "Join %r of run %s (workflow %r) timed out before the part from %r arrived; it is dropped.",
            node.name,
            run_id,
            graph.name,
            parent,
        )
        return None
    if timeout is not None and rec.deadline is not None and list(rec.parts) == [parent]:
        await workflows.watch_pending(graph, node, run_id, event.key or run_id, rec.deadline, ctx)
    return None


def pending_handle(graph: Graph, node: Node, run_id: str, ctx: Context | None, store: Any) -> StateHandle[Any]:
    ns = pending_namespace(graph.name, node.name)
    if ctx is not None:
        return ctx.state.of(ns, pending_shard(run_id))
    return StateHandle(store, ns, pending_shard(run_id))
