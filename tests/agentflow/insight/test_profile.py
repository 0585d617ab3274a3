"""The profile report from known inputs: each flag and recommendation from the figures that must trigger it, and
nothing where nothing is wrong; the histogram figures it is built on; and a real runner's profile."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import msgspec
import pytest

from agentflow import ComponentFigures, ComponentSample, Context, Event, HistSample, ProfileSnapshot, build_profile
from agentflow.insight import AgentSample, CacheUse, ProviderSample
from agentflow.insight.profile import BUSY_UTILISATION, MIN_CALLS, ProfileReport
from agentflow.llm.ledger import CostLine
from agentflow.metrics import Pow2Histogram

if TYPE_CHECKING:
    from conftest import RunnerFactory


def hist(*values_s: float) -> HistSample:
    h = Pow2Histogram()
    for v in values_s:
        h.observe(v)
    return HistSample.of(h)


def agent(name: str, *, n: int = 100, service_s: float = 0.01, wait_s: float = 0.001, busy_s: float = 1.0,
          concurrency: int = 8, **kw: object) -> AgentSample:  # fmt: skip
    return AgentSample(
        name=name,
        topic=name,
        concurrency=concurrency,
        timeout_s=30.0,
        handled=n,
        duration=hist(*[service_s] * n),
        queue_wait=hist(*[wait_s] * n),
        busy_s=busy_s,
        max_in_flight=1024,
        **kw,  # type: ignore[arg-type]
    )


def snap(*agents: AgentSample, window_s: float = 10.0, pool: int = 64, **kw: object) -> ProfileSnapshot:
    return ProfileSnapshot(taken_at=0.0, window_s=window_s, pool_size=pool, agents=list(agents), **kw)  # type: ignore[arg-type]


def row(report: ProfileReport, kind: str, name: str) -> msgspec.Struct:
    return next(r for r in report.rows if r.kind == kind and r.name == name)


def flags(report: ProfileReport, name: str, kind: str = "agent") -> list[str]:
    return [f.flag for f in row(report, kind, name).flags]  # type: ignore[attr-defined]


# ---- histogram figures ---------------------------------------------------------------------------------------


def test_quantiles_interpolate_inside_the_bucket_as_histogram_quantile_does() -> None:
    h = hist(*[0.003] * 100)  # 3000 µs: bucket 12, [2048 µs, 4096 µs)
    q = h.quantile(0.5)
    assert q is not None and 0.002048 <= q <= 0.004096
    assert h.quantile(1.0) == pytest.approx(0.004096)
    assert HistSample().quantile(0.95) is None
    assert h.count == 100 and h.sum == pytest.approx(0.3)


def test_a_window_is_the_difference_of_two_snapshots() -> None:
    earlier = agent("a", n=10, busy_s=1.0)
    later = agent("a", n=30, busy_s=4.0)
    window = snap(later, window_s=50.0).minus(snap(earlier, window_s=20.0))
    assert window.window_s == 30.0
    assert window.agents[0].handled == 20 and window.agents[0].duration.count == 20
    assert window.agents[0].busy_s == 3.0


# ---- flags and recommendations -------------------------------------------------------------------------------


def test_a_saturated_agent_is_a_bottleneck_and_gets_the_concurrency_recommendation() -> None:
    # 16 slots, 15.5 s busy per second of window: 97% busy; it waits 420 ms for 35 ms of work.
    research = agent("research", concurrency=16, service_s=0.035, wait_s=0.42, busy_s=155.0)
    quiet = agent("notify", concurrency=8, service_s=0.002, wait_s=0.0005, busy_s=0.2)
    report = build_profile(snap(research, quiet), source="test")
    r = row(report, "agent", "research")
    assert r.utilisation == pytest.approx(155.0 / 10 / 16)  # type: ignore[attr-defined]
    [flag] = r.flags  # type: ignore[attr-defined]
    assert flag.flag == "BOTTLENECK" and flag.value >= BUSY_UTILISATION
    assert "15.5 of 16 slots busy" in flag.figure and "queue wait p95" in flag.figure
    [rec] = report.recommendations
    assert rec.setting == "[agents.research] concurrency"
    assert rec.figure == flag.figure and "(16 now)" in rec.text
    assert flags(report, "notify") == []  # no problem, no flag


def test_a_busy_agent_that_keeps_up_is_no_bottleneck() -> None:
    # 95% busy, but work waits less for a slot than it takes: the agent keeps up.
    steady = agent("steady", concurrency=4, service_s=0.05, wait_s=0.002, busy_s=38.0)
    report = build_profile(snap(steady), source="test")
    assert flags(report, "steady") == [] and report.recommendations == []


def test_an_agent_at_the_pools_size_gets_the_pool_recommendation() -> None:
    big = agent("big", concurrency=8, service_s=0.03, wait_s=0.5, busy_s=79.0)
    report = build_profile(snap(big, pool=8), source="test")
    assert "BOTTLENECK" in flags(report, "worker_pool", "pool")
    settings = {r.setting for r in report.recommendations}
    assert settings == {"[runner] worker_pool_size"}


def test_an_agent_capped_by_max_concurrent_events_gets_that_recommendation() -> None:
    capped = msgspec.structs.replace(
        agent("capped", concurrency=4, service_s=0.03, wait_s=0.5, busy_s=39.0), max_in_flight=4
    )
    [rec] = build_profile(snap(capped), source="test").recommendations
    assert rec.setting == "[runner] max_concurrent_events"


def test_slow_against_its_peers_and_against_its_slo() -> None:
    fast = [agent(f"fast{i}", service_s=0.004) for i in range(3)]
    slow = agent("slow", service_s=0.2)
    report = build_profile(snap(*fast, slow), source="test")
    assert flags(report, "slow") == ["SLOW"] and all(flags(report, a.name) == [] for a in fast)
    assert "x the median p95 of its peers" in row(report, "agent", "slow").flags[0].figure  # type: ignore[attr-defined]
    slo = msgspec.structs.replace(agent("alone", service_s=0.3), slo_p95_s=0.25)
    [flag] = row(build_profile(snap(slo), source="t"), "agent", "alone").flags  # type: ignore[attr-defined]
    assert flag.flag == "SLOW" and "over its SLO of 250 ms" in flag.figure and flag.threshold == 0.25


def test_costly_is_the_largest_share_of_cost() -> None:
    costs = [
        CostLine(provider="p", model="m", agent="writer", calls=10, prompt_tokens=9000, completion_tokens=900,
                 cost_usd=0.9),
        CostLine(provider="p", model="m", agent="reader", calls=10, prompt_tokens=900, completion_tokens=90,
                 cost_usd=0.1),
    ]  # fmt: skip
    report = build_profile(snap(agent("writer"), agent("reader"), costs=costs), source="test")
    assert flags(report, "writer") == ["COSTLY"] and flags(report, "reader") == []
    assert "90% of the cost" in row(report, "agent", "writer").flags[0].figure  # type: ignore[attr-defined]
    assert report.totals.most_expensive == "writer" and report.totals.cost_usd == pytest.approx(1.0)


def test_a_tie_for_the_largest_share_flags_nobody() -> None:
    line = {"provider": "p", "model": "m", "calls": 10, "prompt_tokens": 900, "completion_tokens": 90, "cost_usd": 0.1}
    costs = [CostLine(agent="writer", **line), CostLine(agent="reader", **line)]  # type: ignore[arg-type]
    report = build_profile(snap(agent("writer"), agent("reader"), costs=costs), source="test")
    assert flags(report, "writer") == [] and flags(report, "reader") == []
    steps = []
    for name in ("charge", "ship"):
        step = ComponentFigures("step", name, workflow="order")
        for _ in range(MIN_CALLS):
            step.observe(0.1)
        steps.append(step.sample())
    report = build_profile(snap(agent("a"), components=steps), source="test")
    assert flags(report, "charge", "step") == [] and flags(report, "ship", "step") == []


def test_zero_cache_hits_on_deterministic_calls_get_the_cache_recommendation() -> None:
    off = CacheUse(provider="openai", agent="classify", off=1200, cache_enabled=False, ttl_s=300.0)
    [rec] = build_profile(snap(agent("classify"), cache=[off]), source="test").recommendations
    assert rec.setting == "[llm.openai.cache] enabled"
    assert rec.text.startswith("agent `classify`: 0% cache hits on 1,200 deterministic calls")
    expired = CacheUse(provider="openai", agent="classify", miss=500, ttl_s=60.0, expirations=400)
    [rec] = build_profile(snap(agent("classify"), cache=[expired]), source="test").recommendations
    assert rec.setting == "[llm.openai.cache] ttl_s" and "(60 s now)" in rec.text
    hits = CacheUse(provider="openai", agent="classify", hit=300, miss=500, ttl_s=60.0, expirations=400)
    assert build_profile(snap(agent("classify"), cache=[hits]), source="test").recommendations == []
    unique = CacheUse(provider="openai", agent="classify", miss=500, ttl_s=60.0)  # nothing repeated: no figure
    assert build_profile(snap(agent("classify"), cache=[unique]), source="test").recommendations == []


def test_calls_waiting_on_the_rate_limiter_get_the_limit_recommendation() -> None:
    waits = hist(*[0.0] * 62, *[0.8] * 38)
    p = ProviderSample(provider="openai", model="gpt-4o", outcomes={"success": 100}, duration=hist(*[0.4] * 100),
                       limiter_wait=waits, rpm=500.0)  # fmt: skip
    report = build_profile(snap(agent("a"), providers=[p]), source="test")
    r = row(report, "provider", "openai/gpt-4o")
    assert r.limiter_wait_share == pytest.approx(0.38)  # type: ignore[attr-defined]
    [rec] = report.recommendations
    assert rec.setting == "[llm.openai.limits] rpm"
    assert "38% of 100 calls waited on the rate limiter" in rec.text and "(500 now)" in rec.text


def test_a_limiter_without_configured_limits_still_gets_the_limit_recommendation() -> None:
    # A limiter the application registered under the provider's name: no rpm or tpm in [llm.NAME.limits].
    p = ProviderSample(provider="openai", model="gpt-4o", outcomes={"success": 100}, duration=hist(*[0.4] * 100),
                       limiter_wait=hist(*[0.0] * 50, *[0.8] * 50))  # fmt: skip
    [rec] = build_profile(snap(agent("a"), providers=[p]), source="test").recommendations
    assert rec.setting == "[llm.openai.limits]"
    assert rec.text == (
        "provider `openai/gpt-4o`: 50% of 100 calls waited on the rate limiter (p95 wait 996 ms) → raise the limits "
        "of the rate limiter `openai/gpt-4o` or add a provider"
    )


def test_a_tool_with_a_large_share_of_run_time_gets_its_recommendation() -> None:
    search = ComponentFigures(
        "tool", "search.query", concurrency=4,
        settings={"concurrency": "[tools.search.query] concurrency", "cache": "[tools.search.query] cache_ttl_s"},
    )  # fmt: skip
    for _ in range(50):
        search.observe(2.1)
    report = build_profile(snap(agent("research", busy_s=200.0), components=[search.sample()]), source="test")
    tool = row(report, "tool", "search.query")
    assert tool.share_of_time == pytest.approx(105 / 200)  # type: ignore[attr-defined]
    [rec] = report.recommendations
    assert rec.kind == "tool" and rec.setting == "[tools.search.query] concurrency"
    assert rec.text.startswith("tool `search.query`: p95 ") and "52% of run time" in rec.text
    assert "cache it (`[tools.search.query] cache_ttl_s`)" in rec.text


def test_every_component_kind_is_a_row_and_a_steps_share_of_its_workflow_flags_it() -> None:
    comps: list[ComponentSample] = [
        ComponentSample(kind="mcp", name="github", calls=20, duration=hist(*[0.05] * 20)),
        ComponentSample(kind="state", name="sqlite", calls=40, errors=2, duration=hist(*[0.002] * 40)),
    ]
    for name, d in (("validate", 0.01), ("charge", 0.5), ("ship", 0.02)):
        step = ComponentFigures("step", name, workflow="order")
        for _ in range(MIN_CALLS):
            step.observe(d)
        comps.append(step.sample())
    report = build_profile(snap(agent("a"), components=comps), source="test")
    assert {(r.kind, r.name) for r in report.rows} >= {("mcp", "github"), ("state", "sqlite"), ("step", "charge")}
    assert row(report, "state", "sqlite").error_rate == pytest.approx(0.05)  # type: ignore[attr-defined]
    assert "BOTTLENECK" in flags(report, "charge", "step")
    assert flags(report, "validate", "step") == [] and flags(report, "ship", "step") == []
    [wf] = report.workflows
    assert (wf.workflow, wf.steps, wf.slowest_step) == ("order", 3, "charge")


def test_steps_of_the_same_name_in_two_workflows_each_get_their_own_setting() -> None:
    comps: list[ComponentSample] = []
    for workflow in ("order", "refund"):
        for name, d in (("check", 0.01), ("pay", 0.5)):
            step = ComponentFigures("step", name, workflow=workflow, concurrency=2,
                                    settings={"concurrency": f"[agents.{workflow}.{name}] concurrency"})  # fmt: skip
            for _ in range(2 * MIN_CALLS):
                step.observe(d)
            comps.append(step.sample())
    # pay: 10 s busy in a 5 s window, both of its slots full
    report = build_profile(snap(agent("a"), components=comps, window_s=5.0), source="test")
    recs = sorted((r.setting, r.text) for r in report.recommendations if r.kind == "step")
    assert [s for s, _ in recs] == ["[agents.order.pay] concurrency", "[agents.refund.pay] concurrency"]
    assert "of workflow 'order''s step time" in recs[0][1] and "of workflow 'refund''s step time" in recs[1][1]


def test_a_step_with_most_of_its_workflows_time_but_free_slots_gets_no_concurrency_advice() -> None:
    comps = []
    for name, d in (("check", 0.01), ("pay", 0.5)):
        step = ComponentFigures("step", name, workflow="order", concurrency=64,
                                settings={"concurrency": f"[agents.order.{name}] concurrency"})  # fmt: skip
        for _ in range(MIN_CALLS):
            step.observe(d)
        comps.append(step.sample())
    report = build_profile(snap(agent("a"), components=comps), source="test")
    assert "BOTTLENECK" in flags(report, "pay", "step")  # the figure stays: most of the workflow's time
    assert [r for r in report.recommendations if r.kind == "step"] == []  # 64 slots, 1% busy: more would not help


def test_timeouts_get_the_timeout_recommendation() -> None:
    a = agent("slowpoke", n=40, timeouts=10, failed_attempts=10)
    [rec] = build_profile(snap(a), source="test").recommendations
    assert rec.setting == "[agents.slowpoke] timeout_s" and "25% of 40 attempts timed out at 30 s" in rec.text


def test_too_few_calls_get_no_flag() -> None:
    few = agent("few", n=MIN_CALLS - 1, concurrency=1, service_s=0.03, wait_s=5.0, busy_s=10.0)
    report = build_profile(snap(few), source="test")
    assert flags(report, "few") == [] and report.recommendations == []


# ---- a real runner --------------------------------------------------------------------------------------------


async def test_a_runners_profile_flags_its_saturated_agent_and_not_the_other(make_runner: RunnerFactory) -> None:
    runner = make_runner({"agents": {"slow": {"concurrency": 2}}})

    @runner.agent("slow")
    async def slow(event: Event, ctx: Context) -> None:
        await asyncio.sleep(0.01)
        await ctx.emit("fast", event.payload)

    @runner.agent("fast")
    async def fast(event: Event, ctx: Context) -> None:
        return None

    async with runner:
        await runner.emit_many("slow", list(range(100)))
        await runner.drain(timeout_s=10.0)
        report = runner.insight.profile()
    assert flags(report, "slow") == ["BOTTLENECK"] and flags(report, "fast") == []
    assert [r.setting for r in report.recommendations] == ["[agents.slow] concurrency"]
    assert report.totals.events == 200 and report.totals.slowest == "slow"
    # the report travels as JSON and reads back the same
    assert msgspec.json.decode(msgspec.json.encode(report), type=ProfileReport) == report
