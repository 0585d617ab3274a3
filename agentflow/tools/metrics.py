"""The tool layer's Prometheus families, built at scrape time like every other family (docs/metrics.md).

Calls by tool and outcome, their durations and the calls running now come from each tool's own counters
(:class:`~agentflow.tools.Tool` keeps them); what belongs to an agent — how many tool calls ran at once, model
turns per ``ctx.llm.run``, runs by outcome, loop warnings and stops — is an :class:`AgentToolMetrics` the agent's
:class:`~agentflow.tools.ToolBox` and the agent loop bump inline (a list index or a dict entry); the MCP pools'
sessions and replicas are read from their statistics. Labels are bounded: tools are the registry's, agents the
runner's, outcomes and actions fixed sets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from ..components import ComponentSample, HistSample
from .base import OUTCOMES
from .registry import ToolRegistry
from .toolbox import ToolSet

__all__ = ["LOOP_ACTIONS", "RUN_OUTCOMES", "AgentToolMetrics", "ToolMetrics", "tool_components"]

#: Bucket bounds of the small counts (tool calls at once, model turns per run): exact up to 4, then coarser.
COUNT_BOUNDS: Final = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
#: How a ``ctx.llm.run`` ended (the ``outcome`` label of ``agentflow_agent_runs_total``).
RUN_OUTCOMES: Final = ("answered", "max_turns", "tool_loop", "timeout", "budget", "error")
#: What loop detection did (the ``action`` label of ``agentflow_tool_loops_total``).
LOOP_ACTIONS: Final = ("warned", "stopped")
#: The label value under which calls to a tool the agent does not have are counted.
UNKNOWN_TOOL: Final = "_unknown"


def _bucket(n: int) -> int:
    for i, bound in enumerate(COUNT_BOUNDS):
        if n <= bound:
            return i
    return len(COUNT_BOUNDS)


class AgentToolMetrics:
    """One agent's tool-loop counters, written inline by its tool boxes and by ``ctx.llm.run``."""

    __slots__ = ("loops", "runs", "turns", "turns_sum", "width", "width_sum")

    def __init__(self) -> None:
        self.width = [0] * (len(COUNT_BOUNDS) + 1)
        self.width_sum = 0
        self.turns = [0] * (len(COUNT_BOUNDS) + 1)
        self.turns_sum = 0
        self.runs: dict[str, int] = dict.fromkeys(RUN_OUTCOMES, 0)
        self.loops: dict[str, int] = dict.fromkeys(LOOP_ACTIONS, 0)

    def observe_width(self, n: int) -> None:
        """``n`` tool calls started together (one ``call_many``)."""
        self.width[n - 1 if n <= 4 else _bucket(n)] += 1
        self.width_sum += n

    def observe_run(self, turns: int, outcome: str) -> None:
        self.turns[turns - 1 if 0 < turns <= 4 else _bucket(turns)] += 1
        self.turns_sum += turns
        self.runs[outcome] += 1


def _cumulative(counts: list[int]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    acc = 0
    for bound, n in zip(COUNT_BOUNDS, counts, strict=False):
        acc += n
        out.append((repr(float(bound)), float(acc)))
    out.append(("+Inf", float(sum(counts))))
    return out


class ToolMetrics:
    """The families of one runner's tools, agents' tool loops and MCP pools; ``collect`` is registered with
    :meth:`agentflow.metrics.Metrics.add_families`.

    ``mcp`` returns each MCP server's pool statistics (duck-typed: this module does not import the MCP SDK).
    """

    def __init__(self, registry: ToolRegistry, mcp: Callable[[], Mapping[str, Any]] | None = None) -> None:
        self.registry = registry
        self.agents: dict[str, AgentToolMetrics] = {}
        self.sets: dict[str, ToolSet] = {}
        self.mcp = mcp

    def agent(self, name: str, tools: ToolSet | None = None) -> AgentToolMetrics:
        """The counters of agent ``name`` (made on first use); ``tools`` is its selection, whose calls to
        unknown tools are counted."""
        m = self.agents.get(name)
        if m is None:
            m = self.agents[name] = AgentToolMetrics()
        if tools is not None:
            self.sets[name] = tools
        return m

    def collect(self) -> Iterator[Metric]:
        tools = sorted(self.registry, key=lambda t: t.name)
        if tools or self.sets:
            yield from self._tool_families(tools)
        if self.agents:
            yield from self._agent_families()
        pools = self.mcp() if self.mcp is not None else {}
        if pools:
            yield from _mcp_families(pools)

    def _tool_families(self, tools: list[Any]) -> Iterator[Metric]:
        calls = CounterMetricFamily(
            "agentflow_tool_calls",
            "Tool calls finished, by tool and outcome (a retried call counts once).",
            labels=["tool", "outcome"],
        )
        duration = HistogramMetricFamily(
            "agentflow_tool_duration_seconds",
            "Time of a tool call, from the call to its result: retries and the wait for a slot included.",
            labels=["tool"],
        )
        running = GaugeMetricFamily("agentflow_tool_calls_in_flight", "Tool calls running now.", labels=["tool"])
        for t in tools:
            st = t.statistics()
            for outcome in OUTCOMES:
                calls.add_metric([t.name, outcome], st.outcomes[outcome])
            duration.add_metric([t.name], t.duration.cumulative_buckets(), t.duration.sum)
            running.add_metric([t.name], st.in_flight)
        unknown = sum(s.unknown_calls for s in self.sets.values())
        calls.add_metric([UNKNOWN_TOOL, "unknown_tool"], unknown)
        yield from (calls, duration, running)

    def _agent_families(self) -> Iterator[Metric]:
        width = HistogramMetricFamily(
            "agentflow_tool_parallel_width",
            "Tool calls an agent started together (one model turn, or one ctx.tools.call_many).",
            labels=["agent"],
        )
        turns = HistogramMetricFamily(
            "agentflow_agent_run_turns", "Model turns of one ctx.llm.run, however it ended.", labels=["agent"]
        )
        runs = CounterMetricFamily(
            "agentflow_agent_runs",
            "Runs of the agent loop (ctx.llm.run), by how they ended.",
            labels=["agent", "outcome"],
        )
        loops = CounterMetricFamily(
            "agentflow_tool_loops",
            "Repeated identical tool calls detected: warned (the model was told) or stopped (ToolLoopError).",
            labels=["agent", "action"],
        )
        for name, m in sorted(self.agents.items()):
            width.add_metric([name], _cumulative(m.width), float(m.width_sum))
            turns.add_metric([name], _cumulative(m.turns), float(m.turns_sum))
            for outcome, n in m.runs.items():
                runs.add_metric([name, outcome], n)
            for action, n in m.loops.items():
                loops.add_metric([name, action], n)
        yield from (width, turns, runs, loops)


def _mcp_families(pools: Mapping[str, Any]) -> Iterator[Metric]:
    sessions = GaugeMetricFamily(
        "agentflow_mcp_sessions", "Sessions of an MCP server, by state: ready or not_ready.", labels=["server", "state"]
    )
    replicas = GaugeMetricFamily(
        "agentflow_mcp_replicas_up", "Replicas of an MCP server that answer (not marked down).", labels=["server"]
    )
    reconnects = CounterMetricFamily(
        "agentflow_mcp_reconnects", "Sessions reopened after they failed, hung or were recycled.", labels=["server"]
    )
    failovers = CounterMetricFamily(
        "agentflow_mcp_failovers", "Calls sent again on another session after theirs failed.", labels=["server"]
    )
    for name, st in sorted(pools.items()):
        sessions.add_metric([name, "ready"], st.ready)
        sessions.add_metric([name, "not_ready"], st.sessions - st.ready)
        replicas.add_metric([name], sum(r.up for r in st.replicas))
        reconnects.add_metric([name], st.reconnects)
        failovers.add_metric([name], st.failovers)
    yield from (sessions, replicas, reconnects, failovers)


def tool_components(registry: ToolRegistry) -> list[ComponentSample]:
    """Every registered tool as a row of the profile report: kind ``tool`` for the runner's functions, ``mcp``
    for the tools of ``[mcp.NAME]`` servers (named ``NAME.tool``), with the ``[tools.NAME]`` keys that change them."""
    rows: list[ComponentSample] = []
    for t in registry:
        st = t.statistics()
        table = f'[tools."{t.name}"]' if "." in t.name else f"[tools.{t.name}]"
        rows.append(
            ComponentSample(
                kind="mcp" if getattr(t, "remote_name", None) is not None else "tool",
                name=t.name,
                calls=st.calls,
                errors=st.calls - st.outcomes.get("ok", 0),
                timeouts=st.outcomes.get("timeout", 0),
                duration=HistSample.of(t.duration),
                concurrency=t.concurrency,
                in_flight=st.in_flight,
                settings={"concurrency": f"{table} concurrency", "timeout": f"{table} timeout_s"},
            )
        )
    return rows
