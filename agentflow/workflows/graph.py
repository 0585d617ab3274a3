"""A workflow's definition: its steps, the edges between them, and the checks made when the runner starts.

Built in Python (:class:`Workflow`, from ``runner.workflow(name)``) or from ``[workflows.NAME]`` in the config
(:func:`from_config`). A step names the steps it comes ``after``; a parallel group is several steps under one
name, and naming the group in ``after`` means all of its steps. :meth:`Workflow.compile` resolves the names,
refuses a cycle (naming it) and an unknown step (naming the closest), and returns the :class:`Graph` the runtime
works from::

    wf = runner.workflow("research", max_execution_time_s=300)
    wf.step("plan", plan)
    wf.parallel("search", [web, papers, news], after="plan")
    wf.join("merge", merge, after="search", timeout_s=60)
    wf.step("write", write, after="merge")
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import WorkflowConfig
from ..errors import WorkflowGraphError

__all__ = ["Graph", "Step", "StepOptions", "Workflow", "from_config", "step_agent", "step_topic"]

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
#: Topics of workflow steps start with this; agents are named ``WORKFLOW.STEP``.
TOPIC_PREFIX = "wf."


def step_topic(workflow: str, step: str) -> str:
    """The topic a step's agent reads: ``wf.WORKFLOW.STEP``."""
    return f"{TOPIC_PREFIX}{workflow}.{step}"


def step_agent(workflow: str, step: str) -> str:
    """The name of a step's agent (its consumer group, its ``[agents.NAME]`` table): ``WORKFLOW.STEP``."""
    return f"{workflow}.{step}"


@dataclass(frozen=True, slots=True)
class StepOptions:
    """What a step's agent takes beside its handler, as ``@runner.agent(...)`` does."""

    concurrency: int | None = None
    retry: Any = None
    provider: str | None = None
    model: str | None = None
    temperature: float | None = None
    cache_ttl_s: float | None = None


@dataclass(slots=True)
class Step:
    """One step as defined: its handler (a function, an import path, or a registered agent's name), the names it
    comes after (steps or groups), and for a join its timeout."""

    name: str
    handler: Any
    after: tuple[str, ...]
    join: bool = False
    timeout_s: float | None = None
    options: StepOptions = field(default_factory=StepOptions)
    group: str | None = None


@dataclass(frozen=True, slots=True)
class Node:
    """One step of a compiled graph: its resolved handler, parents and children (step names, in order)."""

    name: str
    handler: Callable[..., Any]
    parents: tuple[str, ...]
    children: tuple[str, ...]
    join: bool
    timeout_s: float | None
    options: StepOptions


@dataclass(frozen=True, slots=True)
class Graph:
    """A validated workflow: every step with its parents and children; roots start a run, sinks end it."""

    name: str
    max_execution_time_s: float | None
    nodes: dict[str, Node]
    roots: tuple[str, ...]
    sinks: tuple[str, ...]

    def topic(self, step: str) -> str:
        return step_topic(self.name, step)

    def agent(self, step: str) -> str:
        return step_agent(self.name, step)


def _check_name(what: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise WorkflowGraphError(
            f"{what} {name!r} is not a valid name: use 1 to 100 letters, digits, '_' and '-' (it becomes part of "
            "agent and topic names)."
        )


def _after(after: str | Sequence[str] | None) -> tuple[str, ...]:
    if after is None:
        return ()
    return (after,) if isinstance(after, str) else tuple(after)


def _handler_name(handler: Any) -> str:
    if isinstance(handler, str):
        return handler.rpartition(":")[2].rpartition(".")[2] or handler
    return str(getattr(handler, "__name__", "") or type(handler).__name__)


class Workflow:
    """A workflow being defined: steps, parallel groups and joins. Made by ``runner.workflow(name)``; checked
    and turned into agents when the runner starts.

    A handler is ``async def handler(event, ctx)`` (``event.payload`` is the step's input: the run's payload
    for a first step, the parent's result after one parent, and ``{parent step: result}`` for a join), an import
    path ``"package.module:function"``, or the name of an agent registered with ``@runner.agent``.
    """

    def __init__(self, name: str, *, max_execution_time_s: float | None = None) -> None:
        _check_name("Workflow name", name)
        if max_execution_time_s is not None and max_execution_time_s <= 0:
            raise ValueError("max_execution_time_s must be greater than 0, or None for no limit.")
        self.name = name
        self.max_execution_time_s = max_execution_time_s
        self._steps: dict[str, Step] = {}
        self._groups: dict[str, tuple[str, ...]] = {}

    def __repr__(self) -> str:
        return f"<Workflow {self.name!r} steps={list(self._steps)}>"

    @property
    def step_names(self) -> list[str]:
        return list(self._steps)

    def _add(self, step: Step) -> None:
        if step.name in self._steps or step.name in self._groups:
            raise WorkflowGraphError(
                f"Workflow {self.name!r} already has a step or group named {step.name!r}; give each a name of its own."
            )
        if step.timeout_s is not None and step.timeout_s <= 0:
            raise ValueError("timeout_s must be greater than 0, or None to wait as long as the run may take.")
        self._steps[step.name] = step

    def step(
        self,
        name: str,
        handler: Any,
        *,
        after: str | Sequence[str] | None = None,
        concurrency: int | None = None,
        retry: Any = None,
        provider: str | None = None,
        model: str | None = None,
        temperature: float | None = None,
        cache_ttl_s: float | None = None,
    ) -> Workflow:
        """Add a step that runs ``handler`` after ``after`` (a step or group name, or several: then it is a join
        without a timeout of its own). Returns the workflow, so calls chain."""
        _check_name("Step name", name)
        options = StepOptions(concurrency, retry, provider, model, temperature, cache_ttl_s)
        self._add(Step(name, handler, _after(after), options=options))
        return self

    def parallel(
        self,
        name: str,
        handlers: Sequence[Any] | Mapping[str, Any],
        *,
        after: str | Sequence[str] | None = None,
        concurrency: int | None = None,
        retry: Any = None,
        provider: str | None = None,
        model: str | None = None,
        temperature: float | None = None,
        cache_ttl_s: float | None = None,
    ) -> Workflow:
        """Add a group of steps that run side by side, each after ``after``: ``NAME.<function name>`` for a list
        (``NAME.<i>`` when names repeat), ``NAME.<key>`` for a dict. ``after="NAME"`` elsewhere waits for all."""
        _check_name("Group name", name)
        if name in self._steps or name in self._groups:
            raise WorkflowGraphError(f"Workflow {self.name!r} already has a step or group named {name!r}.")
        if isinstance(handlers, Mapping):
            pairs = list(handlers.items())
        else:
            names = [_handler_name(h) for h in handlers]
            unique = len(set(names)) == len(names) and all(_NAME.match(n) for n in names)
            pairs = [(n if unique else str(i), h) for i, (n, h) in enumerate(zip(names, handlers, strict=True))]
        if not pairs:
            raise WorkflowGraphError(f"Parallel group {name!r} of workflow {self.name!r} needs at least one handler.")
        options = StepOptions(concurrency, retry, provider, model, temperature, cache_ttl_s)
        members = []
        for member, handler in pairs:
            _check_name(f"Step name in group {name!r}", member)
            full = f"{name}.{member}"
            self._add(Step(full, handler, _after(after), options=options, group=name))
            members.append(full)
        self._groups[name] = tuple(members)
        return self

    def join(
        self,
        name: str,
        handler: Any,
        *,
        after: str | Sequence[str],
        timeout_s: float | None = None,
        concurrency: int | None = None,
        retry: Any = None,
        provider: str | None = None,
        model: str | None = None,
        temperature: float | None = None,
        cache_ttl_s: float | None = None,
    ) -> Workflow:
        """Add a step that waits, within one run, for every step of ``after`` (groups count as all their steps)
        and gets ``{step: result}``; a join still waiting ``timeout_s`` after its first part fails the run to
        the dead-letter queue (reason ``join_timeout``, with the parts it had)."""
        _check_name("Step name", name)
        options = StepOptions(concurrency, retry, provider, model, temperature, cache_ttl_s)
        self._add(Step(name, handler, _after(after), join=True, timeout_s=timeout_s, options=options))
        return self

    # ---- compiling ---------------------------------------------------------------------------------------

    def compile(self, resolve: Callable[[str, str, Any], Callable[..., Any]]) -> Graph:
        """Check the graph and resolve handlers (``resolve(workflow, step, handler)``); raise
        :class:`~agentflow.errors.WorkflowGraphError` naming a cycle, or an unknown step and the closest name."""
        if not self._steps:
            raise WorkflowGraphError(f"Workflow {self.name!r} has no steps; add some with wf.step(...).")
        parents: dict[str, tuple[str, ...]] = {}
        for step in self._steps.values():
            expanded: list[str] = []
            for name in step.after:
                if name in self._groups:
                    expanded += self._groups[name]
                elif name in self._steps:
                    expanded.append(name)
                else:
                    raise self._unknown(step.name, name)
            if step.name in expanded:
                raise WorkflowGraphError(
                    f"Workflow {self.name!r} has a cycle: {step.name} → {step.name}; a step cannot come after itself."
                )
            parents[step.name] = tuple(dict.fromkeys(expanded))
        self._check_cycles(parents)
        children: dict[str, list[str]] = {name: [] for name in self._steps}
        for name, ps in parents.items():
            for p in ps:
                children[p].append(name)
        nodes = {
            name: Node(
                name=name,
                handler=resolve(self.name, name, step.handler),
                parents=parents[name],
                children=tuple(children[name]),
                join=step.join or len(parents[name]) > 1,
                timeout_s=step.timeout_s,
                options=step.options,
            )
            for name, step in self._steps.items()
        }
        roots = tuple(n for n, node in nodes.items() if not node.parents)
        sinks = tuple(n for n, node in nodes.items() if not node.children)
        return Graph(self.name, self.max_execution_time_s, nodes, roots, sinks)

    def _unknown(self, step: str, name: str) -> WorkflowGraphError:
        known = sorted({*self._steps, *self._groups} - {step})
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else "."
        return WorkflowGraphError(
            f"Workflow {self.name!r}: step {step!r} comes after {name!r}, which is not a step or group of it{hint} "
            f"Its steps and groups: {', '.join(known) or 'none'}."
        )

    def _check_cycles(self, parents: dict[str, tuple[str, ...]]) -> None:
        # Depth-first over "comes after" edges; a step met again while on the current path closes a cycle.
        done: set[str] = set()
        for start in parents:
            if start in done:
                continue
            path: list[str] = []
            on_path: set[str] = set()
            stack: list[tuple[str, int]] = [(start, 0)]
            while stack:
                node, i = stack.pop()
                if i == 0:
                    if node in done:
                        continue
                    path.append(node)
                    on_path.add(node)
                ps = parents[node]
                if i < len(ps):
                    stack.append((node, i + 1))
                    nxt = ps[i]
                    if nxt in on_path:
                        cycle = path[path.index(nxt) :] + [nxt]
                        cycle.reverse()  # in the order the steps run: each comes after the one before it
                        raise WorkflowGraphError(
                            f"Workflow {self.name!r} has a cycle: {' → '.join(cycle)}; a step cannot (indirectly) "
                            "come after itself. Remove one of these 'after' edges."
                        )
                    if nxt not in done:
                        stack.append((nxt, 0))
                else:
                    path.pop()
                    on_path.discard(node)
                    done.add(node)


def import_handler(path: str) -> Callable[..., Any]:
    """The function at ``"package.module:function"``; a sentence saying what is wrong otherwise."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise WorkflowGraphError(
            f"Handler {path!r} is not an import path; write it as 'package.module:function', or name a registered "
            "agent with agent = '...'."
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise WorkflowGraphError(f"Handler {path!r}: module {module_name!r} cannot be imported ({exc}).") from None
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise WorkflowGraphError(f"Handler {path!r}: {module_name!r} has no attribute {attr!r}.")
        target = getattr(target, part)
    if not inspect.iscoroutinefunction(target):
        raise WorkflowGraphError(f"Handler {path!r} must be an async function: async def f(event, ctx).")
    handler: Callable[..., Any] = target
    return handler


def from_config(name: str, config: WorkflowConfig) -> Workflow:
    """A :class:`Workflow` from ``[workflows.NAME]``: each step's ``handler``, ``agent`` or ``parallel``, its
    ``after``, and for a join ``timeout_s``."""
    wf = Workflow(name, max_execution_time_s=config.max_execution_time_s)
    for step, sc in config.steps.items():
        given = [k for k in ("handler", "agent", "parallel") if getattr(sc, k)]
        if len(given) != 1:
            raise WorkflowGraphError(
                f"[workflows.{name}.steps.{step}] needs exactly one of handler, agent or parallel; it has "
                f"{', '.join(given) or 'none'}."
            )
        after = list(sc.after)
        if sc.parallel:
            wf.parallel(step, list(sc.parallel), after=after or None)
        elif len(after) > 1 or sc.timeout_s is not None:
            wf.join(step, sc.handler or _AgentRef(sc.agent), after=after, timeout_s=sc.timeout_s)
        else:
            wf.step(step, sc.handler or _AgentRef(sc.agent), after=after or None)
    return wf


class _AgentRef(str):
    """A handler named by a registered agent's name (``agent = "..."`` in TOML), not an import path."""

    __slots__ = ()


def is_agent_ref(handler: Any) -> bool:
    return isinstance(handler, _AgentRef)
