"""docs/metrics.md and the metrics a runner renders cannot drift apart.

A small runner (an agent that succeeds and emits a follow-up past ``max_workflow_depth``, one that fails once
then succeeds, one that always fails with ``max_attempts=1``, and one that runs the agent loop with a Python tool
and an MCP server's tool until loop detection stops it) renders its metrics; every family it renders must be
documented, with its labels, and every metric the page names must be rendered. The LLM layer's families are
documented in docs/llm.md instead, and checked against it in tests/agentflow/llm/test_llm_runner.py.
"""

from __future__ import annotations

import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from conftest import REPO_ROOT
from mcp_helpers import SERVER
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from agentflow import (
    CircuitBreaker,
    Context,
    Event,
    MicroBatcher,
    RateLimiter,
    RetryBudget,
    Runner,
    RunnerStatistics,
    ToolLoopError,
    config_from_dict,
)
from agentflow.testing import MockLLM

DOC = REPO_ROOT / "docs" / "metrics.md"

#: A backticked metric name, optionally with a selector: `agentflow_x_total` or `agentflow_x_total{reason="y"}`;
#: process_* are prometheus-client's process collector on the runner's registry.
_NAME = re.compile(r"`((?:agentflow|process)_\w+)(?:\{[^`]*\})?`")
#: A row of a metric table in "## Every metric": | `agentflow_...` | `label`, `label` or none | ...
_ROW = re.compile(r"^\| `((?:agentflow|process)_\w+)` \| ([^|]*) \|", re.MULTILINE)
#: Label values that come from fixed enums, and must each be documented.
_ENUM_LABELS = ("outcome", "kind", "reason")


class Rendered:
    def __init__(self, text: str, stats: RunnerStatistics) -> None:
        self.text = text
        self.stats = stats
        self.families: list[Metric] = list(text_string_to_metric_families(text))

    def documented_name(self, family: Metric) -> str:
        """The name docs/metrics.md lists: counters with ``_total``, histograms and gauges as they are."""
        return family.name + "_total" if family.type == "counter" else family.name

    def names(self) -> set[str]:
        out = {self.documented_name(f) for f in self.families}
        out.update(s.name for f in self.families for s in f.samples)
        return out

    def labels(self, family: Metric) -> set[str]:
        return {k for s in family.samples for k in s.labels} - {"le"}

    def values(self, name: str, **labels: str) -> dict[tuple[str, ...], float]:
        return {
            tuple(s.labels.values()): s.value
            for f in self.families
            for s in f.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        }


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rendered(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rendered]:
    async with MockLLM() as llm:
        async for r in _rendered(llm, tmp_path_factory.mktemp("mcp")):
            yield r


async def _rendered(llm: MockLLM, stats: Path) -> AsyncIterator[Rendered]:
    config = config_from_dict(
        {
            "runner": {"max_workflow_depth": 0},
            "retry": {"max_attempts": 3, "initial_backoff_s": 0.0, "jitter_s": 0.0},
            "agents": {"broken": {"retry": {"max_attempts": 1}}},
            "llm": {"mock": {"base_url": llm.url, "default_model": "m"}},
            "mcp": {
                "ctr": {
                    "transport": "stdio",
                    "command": sys.executable,
                    "args": [SERVER, "stdio"],
                    "env": {"STATS_DIR": str(stats)},
                    "tools": ["echo"],
                }
            },
            # one alert checked, so agentflow_alert_firing is rendered too
            "monitoring": {"alerts": {"rss_mb": 1_000_000}},
        }
    )
    runner = Runner(config)

    @runner.agent("ok")
    async def steady(event: Event, ctx: Context) -> None:
        await ctx.emit("next", event.payload)  # depth 1 > max_workflow_depth 0: dead-lettered, depth_exceeded

    @runner.agent("flaky")
    async def flaky(event: Event, ctx: Context) -> None:
        if ctx.attempt == 1:
            raise ValueError("first attempt fails")

    @runner.agent("broken")
    async def broken(event: Event, ctx: Context) -> None:
        raise ValueError("always fails")

    @runner.tool
    async def lookup(q: str) -> str:
        """Looks q up."""
        return "nothing"

    @runner.agent("tools", tools=["lookup", "ctr.*"])
    async def tooler(event: Event, ctx: Context) -> None:
        loop = '[[loop lookup {"q": "x"}]] [[loop ctr__echo {"text": "y"}]] [[loop missing]]'
        try:  # warned at the third identical turn, stopped at the fourth
            await ctx.llm.run([{"role": "user", "content": loop}], tools=ctx.tools)
        except ToolLoopError:
            pass

    # One of each resilience part on the runner's metrics, so their families are rendered too.
    breaker = CircuitBreaker("provider/model", metrics=runner.metrics)
    breaker.acquire().success()
    breaker.force_open()
    breaker.reset()
    limiter = RateLimiter(rpm=100, name="provider/model", metrics=runner.metrics)
    budget = RetryBudget(name="provider", metrics=runner.metrics)

    async def echo(items: list[int]) -> list[int]:
        return items

    batcher: MicroBatcher[int, int] = MicroBatcher(echo, name="provider/embeddings", metrics=runner.metrics)
    await limiter.acquire()
    budget.record_call()
    budget.try_spend()
    await batcher.submit(1)
    await batcher.aclose()

    async with runner:
        await runner.emit_many("ok", [1, 2])
        await runner.emit("flaky", 1)
        await runner.emit("broken", 1)
        await runner.emit("tools", 1)
        await runner.emit("nobody-reads-this", 1)  # dropped by the memory bus as unrouted
        await runner.drain(timeout_s=5.0)
        assert runner.insight.alerts is not None
        runner.insight.alerts.check()
        yield Rendered(runner.metrics.render().decode(), runner.statistics())


def test_the_run_renders_every_kind_of_sample(rendered: Rendered) -> None:
    # Guards the two tests below: a run that rendered less would check less.
    assert rendered.values("agentflow_events_handled_total", agent="flaky", outcome="success") == {
        ("flaky", "success"): 1.0
    }
    assert rendered.values("agentflow_handler_retries_total", agent="flaky") == {("flaky",): 1.0}
    assert rendered.values("agentflow_events_dead_lettered_total", agent="broken") == {("broken", "exhausted"): 1.0}
    depth = rendered.values("agentflow_events_dead_lettered_total", agent="steady")
    assert depth == {("steady", "depth_exceeded"): 2.0}
    assert {f.type for f in rendered.families} == {"counter", "histogram", "gauge"}
    loops = rendered.values("agentflow_tool_loops_total", agent="tooler")
    assert loops == {("warned", "tooler"): 1.0, ("stopped", "tooler"): 1.0}  # labels as rendered: action, agent
    assert rendered.values("agentflow_tool_calls_total", tool="ctr.echo", outcome="ok") == {("ok", "ctr.echo"): 3.0}
    assert rendered.values("agentflow_mcp_sessions", server="ctr", state="ready") == {("ctr", "ready"): 1.0}


def documented_here(family: Metric) -> bool:
    return not family.name.startswith("agentflow_llm_")  # docs/llm.md lists those


def test_every_rendered_family_is_documented_with_its_labels(rendered: Rendered, doc: str) -> None:
    section = doc.split("\n## Every metric\n", 1)[1].split("\n## ", 1)[0]
    rows = {name: set(re.findall(r"`(\w+)`", labels)) for name, labels in _ROW.findall(section)}
    for family in filter(documented_here, rendered.families):
        name = rendered.documented_name(family)
        assert family.name.startswith(("agentflow_", "process_")), f"{name} is not in the agentflow_ namespace"
        assert f"`{name}`" in doc, f"docs/metrics.md does not document {name}; add it to a table there"
        assert name in rows, f"docs/metrics.md names {name} but has no table row for it"
        assert rows[name] == rendered.labels(family), f"docs/metrics.md lists the wrong labels for {name}"


def test_every_documented_metric_is_rendered(rendered: Rendered, doc: str) -> None:
    documented = set(_NAME.findall(doc))
    assert documented, "docs/metrics.md names no metric"
    stale = sorted(documented - rendered.names())
    assert stale == [], f"docs/metrics.md names metrics the runner does not render: {stale}"


def test_every_rendered_enum_value_is_documented(rendered: Rendered, doc: str) -> None:
    values = {
        (label, value)
        for f in filter(documented_here, rendered.families)
        for s in f.samples
        for label, value in s.labels.items()
        if label in _ENUM_LABELS
    }
    assert {label for label, _ in values} == set(_ENUM_LABELS)
    missing = sorted(f"{label}={value}" for label, value in values if f"`{value}`" not in doc)
    assert missing == [], f"docs/metrics.md does not document these label values: {missing}"


def test_bucket_layout_is_as_documented(rendered: Rendered, doc: str) -> None:
    les = {
        s.labels["le"]
        for f in rendered.families
        if f.type == "histogram" and f.name.endswith("_seconds")  # batch size and fill ratio have their own
        for s in f.samples
        if s.name.endswith("_bucket")
    }
    assert les == {repr(2.0**i / 1_000_000) for i in range(36)} | {"+Inf"}
    for shown in ("1e-06", "0.001024", "1.048576", "1073.741824", "34359.738368", "+Inf"):
        assert shown in les and f"`{shown}`" in doc


def test_dead_lettered_outcome_excludes_depth_exceeded(rendered: Rendered) -> None:
    for agent in ("steady", "flaky", "broken"):
        outcome = rendered.values("agentflow_events_handled_total", agent=agent, outcome="dead_lettered")
        reasons = rendered.values("agentflow_events_dead_lettered_total", agent=agent)
        by_reason = sum(v for (_, reason), v in reasons.items() if reason != "depth_exceeded")
        assert list(outcome.values()) == [by_reason], agent


def test_statistics_agree_with_the_metrics(rendered: Rendered) -> None:
    stats = rendered.stats
    emitted = sum(rendered.values("agentflow_events_emitted_total").values())
    success = sum(rendered.values("agentflow_events_handled_total", outcome="success").values())
    dead = sum(rendered.values("agentflow_events_handled_total", outcome="dead_lettered").values())
    failures = sum(rendered.values("agentflow_handler_failures_total").values())
    assert (stats.emitted, stats.handled, stats.dead_lettered) == (emitted, success, dead) == (6, 4, 1)
    unrouted = rendered.values("agentflow_events_unrouted_total")
    assert unrouted == {("nobody-reads-this",): 1.0} and stats.bus.unrouted == 1
    assert stats.pool.failed == failures == 2
    assert rendered.values("agentflow_dead_letters") == {(): float(stats.bus.dead_letters)}
    assert rendered.values("agentflow_worker_pool_size") == {(): float(stats.pool.size)}
