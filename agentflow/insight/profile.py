"""The profile report: where the time and the money go, flags, and what to change — from a :class:`ProfileSnapshot`.

One row per agent, LLM provider/model, tool, MCP server, state store and workflow step, and one for the worker
pool. Each row carries calls, p50/p95/p99 duration, queue wait against service time, utilisation (busy slots /
concurrency), share of time, tokens, cost, error/timeout/retry/cache-hit rates, breaker opens and rate-limiter
waits, whichever apply to its kind. Flags are computed from those figures and carry the figure that triggered
them; recommendations name the setting to change and the figure behind them, and there is none without one.

The rules, with their constants below (docs/observability.md explains them):

* ``SLOW``: p95 at least :data:`SLOW_FACTOR` times the median p95 of its peers (at least :data:`MIN_PEERS`
  other rows of the same kind) and at least :data:`SLOW_MIN_P95_S`, or above the agent's ``slo_p95_s``.
* ``BOTTLENECK``: an agent, tool or the pool at :data:`BUSY_UTILISATION` or more of its slots while work waits
  longer for a slot than it takes to run (queue-wait p95 above service p95); a workflow step with the largest
  share of its workflow's step time, at least :data:`CRITICAL_SHARE`.
* ``COSTLY``: the largest share of cost among rows of its kind, at least :data:`COSTLY_SHARE`.

Rows with fewer than :data:`MIN_CALLS` calls get no flag: too little to go on::

    report = build_profile(take_snapshot(runner), source="worker")
    for rec in report.recommendations:
        print(rec.text)
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from typing import Final, Literal, get_args

import msgspec

from ..components import ComponentSample, HistSample
from .snapshot import AgentSample, CacheUse, ProfileSnapshot, ProviderSample

__all__ = [
    "BUSY_UTILISATION",
    "COSTLY_SHARE",
    "CRITICAL_SHARE",
    "MIN_CALLS",
    "PROFILE_FORMAT",
    "SLOW_FACTOR",
    "SLOW_MIN_P95_S",
    "Flag",
    "ProfileReport",
    "ProfileRow",
    "Recommendation",
    "Totals",
    "WorkflowTotals",
    "build_profile",
]

ProfileFormat = Literal["agentflow.profile/1"]
PROFILE_FORMAT: Final[ProfileFormat] = get_args(ProfileFormat)[0]

SLOW_FACTOR: Final = 3.0
SLOW_MIN_P95_S: Final = 0.010
BUSY_UTILISATION: Final = 0.85
CRITICAL_SHARE: Final = 0.5
COSTLY_SHARE: Final = 0.5
MIN_CALLS: Final = 10
#: ``SLOW`` against peers needs this many of them: one other row is no yardstick.
MIN_PEERS: Final = 2
#: Recommendations need at least this much behind them.
LIMITER_WAIT_SHARE: Final = 0.2
CACHE_MIN_CALLS: Final = 50
TIMEOUT_RATE: Final = 0.05
TOOL_TIME_SHARE: Final = 0.3


class Flag(msgspec.Struct, frozen=True, kw_only=True):
    """``SLOW``, ``BOTTLENECK`` or ``COSTLY``, the sentence with the figure that triggered it, that figure and the
    threshold it passed."""

    flag: str
    figure: str
    value: float
    threshold: float


class ProfileRow(msgspec.Struct, kw_only=True):
    """One agent, provider/model, tool, MCP server, state store, workflow step or the worker pool; a figure is
    None where it does not apply to the kind. Durations in milliseconds, rates and shares from 0 to 1."""

    kind: str
    name: str
    workflow: str | None = None
    calls: int = 0
    attempts: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    queue_wait_p50_ms: float | None = None
    queue_wait_p95_ms: float | None = None
    busy_s: float = 0.0
    concurrency: int | None = None
    busy_slots: float | None = None
    utilisation: float | None = None
    share_of_time: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    share_of_cost: float | None = None
    error_rate: float | None = None
    timeout_rate: float | None = None
    retry_rate: float | None = None
    cache_hit_rate: float | None = None
    breaker_opens: int = 0
    limiter_wait_share: float | None = None
    limiter_wait_p95_ms: float | None = None
    flags: list[Flag] = msgspec.field(default_factory=list)


class Recommendation(msgspec.Struct, frozen=True, kw_only=True):
    """What to change (``setting``: a config key, or an action when no key applies) and the figure behind it."""

    kind: str
    name: str
    setting: str
    figure: str
    text: str


class Totals(msgspec.Struct, frozen=True, kw_only=True):
    """The run as a whole: events finished, handler time, tokens, cost, the slowest and most expensive agent."""

    events: int
    busy_s: float
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    slowest: str | None
    slowest_p95_ms: float | None
    most_expensive: str | None
    most_expensive_usd: float | None
    loop_lag_p99_ms: float | None


class WorkflowTotals(msgspec.Struct, frozen=True, kw_only=True):
    """One workflow's steps: their time and cost, the slowest step and the most expensive one."""

    workflow: str
    steps: int
    calls: int
    busy_s: float
    cost_usd: float
    slowest_step: str | None
    slowest_p95_ms: float | None
    most_expensive_step: str | None
    most_expensive_usd: float | None


class ProfileReport(msgspec.Struct, kw_only=True):
    """The profile of a runner over ``window_s`` seconds ending at ``taken_at`` (Unix time)."""

    format: ProfileFormat = PROFILE_FORMAT
    source: str
    taken_at: float
    window_s: float
    rows: list[ProfileRow]
    totals: Totals
    workflows: list[WorkflowTotals]
    recommendations: list[Recommendation]
    notes: list[str] = msgspec.field(default_factory=list)


# ---- figures -------------------------------------------------------------------------------------------------


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1e3, 3)


def _ratio(n: float, d: float) -> float | None:
    return n / d if d else None


def _pct(v: float) -> str:
    return f"{100 * v:.0f}%"


def fmt_s(seconds: float) -> str:
    """A duration for people: 420 ms, 2.1 s, 35 µs."""
    if seconds >= 1:
        return f"{seconds:.1f} s"
    if seconds >= 0.001:
        return f"{seconds * 1e3:.0f} ms"
    return f"{seconds * 1e6:.0f} µs"


def _hist_figures(row: ProfileRow, hist: HistSample | None) -> None:
    if hist is None:
        return
    row.p50_ms, row.p95_ms, row.p99_ms = (_ms(hist.quantile(q)) for q in (0.5, 0.95, 0.99))


def _agent_row(a: AgentSample, window_s: float) -> ProfileRow:
    attempts = a.duration.count
    row = ProfileRow(
        kind="agent",
        name=a.name,
        calls=a.handled + a.skipped + a.dead_lettered,
        attempts=attempts,
        busy_s=a.busy_s,
        concurrency=a.concurrency,
        error_rate=_ratio(a.failed_attempts - a.timeouts + a.rejected, attempts),
        timeout_rate=_ratio(a.timeouts, attempts),
        retry_rate=_ratio(a.retries, attempts),
    )
    _hist_figures(row, a.duration)
    row.queue_wait_p50_ms = _ms(a.queue_wait.quantile(0.5))
    row.queue_wait_p95_ms = _ms(a.queue_wait.quantile(0.95))
    if window_s > 0:
        row.busy_slots = a.busy_s / window_s
        row.utilisation = min(1.0, row.busy_slots / a.concurrency) if a.concurrency else None
    return row


def _provider_row(p: ProviderSample) -> ProfileRow:
    calls = sum(p.outcomes.values())
    failed = calls - p.outcomes.get("success", 0)
    row = ProfileRow(
        kind="provider",
        name=p.key,
        calls=calls,
        attempts=p.duration.count,
        busy_s=p.duration.sum,
        error_rate=_ratio(failed - p.outcomes.get("timeout", 0), calls),
        timeout_rate=_ratio(p.outcomes.get("timeout", 0), calls),
        retry_rate=_ratio(p.retries, calls),
        breaker_opens=p.breaker_opens,
    )
    _hist_figures(row, p.duration)
    wait = p.limiter_wait
    if wait is not None and wait.count:
        waited = wait.count - (wait.counts[0] if wait.counts else 0)  # bucket 0: under 1 µs, no wait
        row.limiter_wait_share = waited / wait.count
        row.limiter_wait_p95_ms = _ms(wait.quantile(0.95))
    return row


def _component_row(c: ComponentSample, window_s: float) -> ProfileRow:
    busy = c.busy_s if c.busy_s is not None else (c.duration.sum if c.duration is not None else 0.0)
    row = ProfileRow(
        kind=c.kind,
        name=c.name,
        workflow=c.workflow,
        calls=c.calls,
        attempts=c.calls,
        busy_s=busy,
        concurrency=c.concurrency,
        error_rate=_ratio(c.errors - c.timeouts, c.calls),
        timeout_rate=_ratio(c.timeouts, c.calls),
        retry_rate=_ratio(c.retries, c.calls),
        breaker_opens=c.breaker_opens,
        prompt_tokens=c.prompt_tokens,
        completion_tokens=c.completion_tokens,
        cost_usd=c.cost_usd,
    )
    _hist_figures(row, c.duration)
    if c.cache_lookups:
        row.cache_hit_rate = (c.cache_hits or 0) / c.cache_lookups
    if window_s > 0:
        row.busy_slots = busy / window_s
        if c.concurrency:
            row.utilisation = min(1.0, row.busy_slots / c.concurrency)
    return row


def _add_costs(rows: dict[tuple[str, str], ProfileRow], snap: ProfileSnapshot) -> None:
    for line in snap.costs:
        for key in (("agent", line.agent), ("provider", f"{line.provider}/{line.model}")):
            row = rows.get(key)
            if row is not None:
                row.prompt_tokens += line.prompt_tokens
                row.completion_tokens += line.completion_tokens
                row.cost_usd += line.cost_usd


def _add_cache(rows: dict[tuple[str, str], ProfileRow], cache: list[CacheUse]) -> None:
    hits: dict[tuple[str, str], list[int]] = {}
    for c in cache:
        for key in (("agent", c.agent), ("provider", c.provider)):
            acc = hits.setdefault(key, [0, 0])
            acc[0] += c.hit
            acc[1] += c.calls
    for (kind, name), row in rows.items():
        found = hits.get((kind, name.split("/", 1)[0] if kind == "provider" else name))
        if found is not None and found[1]:
            row.cache_hit_rate = found[0] / found[1]


def _shares(rows: list[ProfileRow]) -> None:
    """Share of time within each kind (tools, MCP servers and state against the agents' handler time, since
    that is the run time they spend in), and share of cost within each kind."""
    by_kind: dict[str, list[ProfileRow]] = {}
    for r in rows:
        by_kind.setdefault(r.kind, []).append(r)
    agent_time = sum(r.busy_s for r in by_kind.get("agent", []))
    for kind, group in by_kind.items():
        if kind == "pool":
            continue
        total = agent_time if kind in ("tool", "mcp", "state") and agent_time else sum(r.busy_s for r in group)
        if kind == "step":
            totals: dict[str | None, float] = {}
            for r in group:
                totals[r.workflow] = totals.get(r.workflow, 0.0) + r.busy_s
            for r in group:
                r.share_of_time = _ratio(r.busy_s, totals[r.workflow])
        else:
            for r in group:
                r.share_of_time = _ratio(r.busy_s, total)
        cost = sum(r.cost_usd for r in group)
        for r in group:
            r.share_of_cost = _ratio(r.cost_usd, cost)


# ---- flags ---------------------------------------------------------------------------------------------------


def _flag_slow(rows: list[ProfileRow], slo: dict[str, float]) -> None:
    by_kind: dict[str, list[ProfileRow]] = {}
    for r in rows:
        if r.p95_ms is not None and r.calls >= MIN_CALLS and r.kind != "pool":
            by_kind.setdefault(r.kind, []).append(r)
    for group in by_kind.values():
        for r in group:
            assert r.p95_ms is not None
            limit = slo.get(r.name) if r.kind == "agent" else None
            if limit is not None and r.p95_ms > limit * 1e3:
                r.flags.append(
                    Flag(
                        flag="SLOW",
                        figure=f"p95 {fmt_s(r.p95_ms / 1e3)} over its SLO of {fmt_s(limit)} (slo_p95_s)",
                        value=r.p95_ms / 1e3,
                        threshold=limit,
                    )
                )
                continue
            peers = [p.p95_ms for p in group if p is not r and p.p95_ms is not None]
            if len(peers) < MIN_PEERS:
                continue
            median = statistics.median(peers)
            threshold = max(SLOW_FACTOR * median, SLOW_MIN_P95_S * 1e3)
            if r.p95_ms >= threshold:
                r.flags.append(
                    Flag(
                        flag="SLOW",
                        figure=f"p95 {fmt_s(r.p95_ms / 1e3)}, {r.p95_ms / median:.1f}x the median p95 of its peers "
                        f"({fmt_s(median / 1e3)})"
                        if median
                        else f"p95 {fmt_s(r.p95_ms / 1e3)} against peers near 0",
                        value=r.p95_ms / 1e3,
                        threshold=threshold / 1e3,
                    )
                )


def _waits_longer(r: ProfileRow) -> bool:
    """Work waits longer for a slot than it takes to run (queue-wait p95 above service p95, and above 1 ms)."""
    return r.queue_wait_p95_ms is not None and r.p95_ms is not None and r.queue_wait_p95_ms > max(r.p95_ms, 1.0)


def _saturated(r: ProfileRow) -> bool:
    if r.kind == "pool" or r.calls < MIN_CALLS or r.utilisation is None or r.utilisation < BUSY_UTILISATION:
        return False
    if r.kind != "agent":
        return True  # tools and stores do not measure their queue: their slots being full is the figure
    return _waits_longer(r)


def _busy_figure(r: ProfileRow) -> str:
    assert r.utilisation is not None and r.busy_slots is not None
    slots = f"{r.busy_slots:.1f} of {r.concurrency} slots busy on average ({_pct(r.utilisation)})"
    if r.kind == "pool" or r.queue_wait_p95_ms is None or r.p95_ms is None:
        return slots
    return f"{slots}, queue wait p95 {fmt_s(r.queue_wait_p95_ms / 1e3)} against service p95 {fmt_s(r.p95_ms / 1e3)}"


def _unique_top(group: list[ProfileRow], figure: Callable[[ProfileRow], float]) -> ProfileRow | None:
    """The row with the largest figure among at least two, None on a tie: two rows at 50% each are not "the
    largest share", and flagging one of them would single it out by the order of the rows."""
    if len(group) < 2:
        return None
    first, second = sorted(group, key=figure, reverse=True)[:2]
    return first if figure(first) > figure(second) else None


def _flag_bottleneck(rows: list[ProfileRow]) -> None:
    waiting = [r for r in rows if r.kind == "agent" and _waits_longer(r)]
    for r in rows:
        if r.kind == "step":
            continue
        if r.kind == "pool" and waiting and r.utilisation is not None and r.utilisation >= BUSY_UTILISATION:
            worst = max(waiting, key=lambda a: a.queue_wait_p95_ms or 0.0)
            assert worst.queue_wait_p95_ms is not None and worst.p95_ms is not None
            figure = (
                f"{_busy_figure(r)}; agent `{worst.name}` waits p95 {fmt_s(worst.queue_wait_p95_ms / 1e3)} for "
                f"{fmt_s(worst.p95_ms / 1e3)} of work"
            )
            r.flags.append(Flag(flag="BOTTLENECK", figure=figure, value=r.utilisation, threshold=BUSY_UTILISATION))
        elif _saturated(r):
            assert r.utilisation is not None
            r.flags.append(
                Flag(flag="BOTTLENECK", figure=_busy_figure(r), value=r.utilisation, threshold=BUSY_UTILISATION)
            )
    steps: dict[str | None, list[ProfileRow]] = {}
    for r in rows:
        if r.kind == "step" and r.calls >= MIN_CALLS:
            steps.setdefault(r.workflow, []).append(r)
    for workflow, group in steps.items():
        top = _unique_top(group, lambda r: r.busy_s)
        if top is not None and top.share_of_time is not None and top.share_of_time >= CRITICAL_SHARE:
            top.flags.append(
                Flag(
                    flag="BOTTLENECK",
                    figure=f"{_pct(top.share_of_time)} of workflow {workflow!r}'s step time "
                    f"({top.busy_s:.1f} s of {sum(r.busy_s for r in group):.1f} s)",
                    value=top.share_of_time,
                    threshold=CRITICAL_SHARE,
                )
            )


def _flag_costly(rows: list[ProfileRow]) -> None:
    by_kind: dict[str, list[ProfileRow]] = {}
    for r in rows:
        if r.cost_usd > 0 and r.kind != "pool":
            by_kind.setdefault(r.kind, []).append(r)
    for group in by_kind.values():
        top = _unique_top(group, lambda r: r.cost_usd)
        if top is not None and top.share_of_cost is not None and top.share_of_cost >= COSTLY_SHARE:
            total = sum(r.cost_usd for r in group)
            top.flags.append(
                Flag(
                    flag="COSTLY",
                    figure=f"{_pct(top.share_of_cost)} of the cost (${top.cost_usd:,.4f} of ${total:,.4f}), "
                    f"{top.prompt_tokens + top.completion_tokens:,} tokens",
                    value=top.share_of_cost,
                    threshold=COSTLY_SHARE,
                )
            )


# ---- recommendations -----------------------------------------------------------------------------------------


def _rec(row: ProfileRow, setting: str, figure: str, action: str) -> Recommendation:
    label = f"{row.kind} `{row.name}`" if row.kind != "pool" else "the worker pool"
    return Recommendation(
        kind=row.kind, name=row.name, setting=setting, figure=figure, text=f"{label}: {figure} → {action}"
    )


def _bottleneck_recs(
    rows: list[ProfileRow], pool: ProfileRow | None, snap: ProfileSnapshot
) -> Iterable[Recommendation]:
    pool_saturated = pool is not None and any(f.flag == "BOTTLENECK" for f in pool.flags)
    agents = {a.name: a for a in snap.agents}
    size = snap.pool_size
    for r in rows:
        flag = next((f for f in r.flags if f.flag == "BOTTLENECK"), None)
        if flag is None:
            continue
        if r.kind == "agent":
            a = agents[r.name]
            if pool_saturated or a.concurrency >= size:
                setting = "[runner] worker_pool_size"
                action = f"raise `{setting}` ({size} now) or run more workers"
            elif a.max_in_flight and a.concurrency >= a.max_in_flight:
                # The agent's share of max_concurrent_events caps its workers: its concurrency cannot go higher.
                setting = "[runner] max_concurrent_events"
                action = f"raise `{setting}` (this agent may hold {a.max_in_flight} events now)"
            else:
                setting = f"[agents.{r.name}] concurrency"
                action = f"raise `{setting}` ({r.concurrency} now)"
            yield _rec(r, setting, flag.figure, action)
        elif r.kind == "pool":
            setting = "[runner] worker_pool_size"
            yield _rec(r, setting, flag.figure, f"raise `{setting}` ({size} now) or run more workers")


def _component_recs(
    rows: list[ProfileRow], settings: dict[tuple[str, str, str | None], dict[str, str]]
) -> Iterable[Recommendation]:
    for r in rows:
        if r.kind not in ("tool", "mcp", "state", "step") or r.calls < MIN_CALLS:
            continue
        keys = settings.get((r.kind, r.name, r.workflow), {})  # two workflows may each have a step "plan"
        flagged = any(f.flag in ("BOTTLENECK", "SLOW") for f in r.flags)
        big = r.share_of_time is not None and r.share_of_time >= TOOL_TIME_SHARE and r.kind != "step"
        if not (flagged or big) or r.p95_ms is None:
            continue
        share = f", {_pct(r.share_of_time)} of run time" if r.share_of_time is not None and r.kind != "step" else ""
        if r.kind == "step" and r.share_of_time is not None:
            share = f", {_pct(r.share_of_time)} of workflow {r.workflow!r}'s step time"
        figure = f"p95 {fmt_s(r.p95_ms / 1e3)}{share}"
        conc = keys.get("concurrency")
        if conc and r.kind == "step" and not _saturated(r):
            conc = None  # a step with most of its workflow's time but free slots: more of them would not help
        cache = keys.get("cache")
        actions = [f"raise its concurrency (`{conc}`)"] if conc else []
        if cache:
            actions.append(f"cache it (`{cache}`)")
        if not actions:
            continue
        yield _rec(r, conc or cache or "", figure, " or ".join(actions))


def _provider_recs(rows: list[ProfileRow], snap: ProfileSnapshot) -> Iterable[Recommendation]:
    limits = {p.key: p for p in snap.providers}
    for r in rows:
        if r.kind != "provider" or r.limiter_wait_share is None or r.calls < MIN_CALLS:
            continue
        if r.limiter_wait_share < LIMITER_WAIT_SHARE:
            continue
        p = limits[r.name]
        figure = f"{_pct(r.limiter_wait_share)} of {r.calls:,} calls waited on the rate limiter"
        if r.limiter_wait_p95_ms is not None:
            figure += f" (p95 wait {fmt_s(r.limiter_wait_p95_ms / 1e3)})"
        if p.rpm is None and p.tpm is None:
            # A limiter under the provider's name that [llm.NAME.limits] did not set up (one the application
            # registered on the runner's metrics): there is no configured figure to quote.
            setting = f"[llm.{p.provider}.limits]"
            yield _rec(r, setting, figure, f"raise the limits of the rate limiter `{r.name}` or add a provider")
            continue
        which = "rpm" if p.rpm is not None else "tpm"
        now = p.rpm if p.rpm is not None else p.tpm
        setting = f"[llm.{p.provider}.limits] {which}"
        yield _rec(r, setting, figure, f"raise `{setting}` ({now:,.0f} now) or add a provider")


def _cache_recs(snap: ProfileSnapshot) -> Iterable[Recommendation]:
    for c in snap.cache:
        if c.calls < CACHE_MIN_CALLS or c.hit:
            continue
        row = ProfileRow(kind="agent", name=c.agent)
        base = f"0% cache hits on {c.calls:,} deterministic calls (temperature 0) to `{c.provider}`"
        if not c.cache_enabled or c.off:
            setting = f"[llm.{c.provider}.cache] enabled"
            why = "the cache is off" if not c.cache_enabled else f"{c.off:,} were not looked up (cache=False)"
            yield _rec(row, setting, f"{base}, {why}", f"set `{setting} = true` (ttl_s {c.ttl_s:g} s)")
        elif c.expirations >= c.evictions and c.expirations:
            setting = f"[llm.{c.provider}.cache] ttl_s"
            figure = f"{base}, {c.expirations:,} entries expired unused"
            yield _rec(row, setting, figure, f"raise `{setting}` ({c.ttl_s:g} s now)")
        elif c.evictions:
            setting = f"[llm.{c.provider}.cache] max_entries"
            figure = f"{base}, {c.evictions:,} entries evicted for room"
            yield _rec(row, setting, figure, f"raise `{setting}` ({c.max_entries:,} now)")


def _timeout_recs(rows: list[ProfileRow], agents: dict[str, AgentSample]) -> Iterable[Recommendation]:
    for r in rows:
        if r.kind != "agent" or r.attempts < MIN_CALLS or not r.timeout_rate or r.timeout_rate < TIMEOUT_RATE:
            continue
        a = agents[r.name]
        setting = f"[agents.{r.name}] timeout_s"
        figure = f"{_pct(r.timeout_rate)} of {r.attempts:,} attempts timed out at {a.timeout_s:g} s"
        yield _rec(r, setting, figure, f"raise `{setting}` or make the handler faster")


# ---- the report ----------------------------------------------------------------------------------------------


def _pool_row(agents: list[ProfileRow], size: int, window_s: float) -> ProfileRow | None:
    if not agents or not size or window_s <= 0:
        return None
    busy = sum(r.busy_s for r in agents)
    attempts = sum(r.attempts for r in agents)
    row = ProfileRow(kind="pool", name="worker_pool", calls=attempts, attempts=attempts, busy_s=busy, concurrency=size)
    row.busy_slots = busy / window_s
    row.utilisation = min(1.0, row.busy_slots / size)
    return row


def _totals(rows: list[ProfileRow], snap: ProfileSnapshot) -> Totals:
    agents = [r for r in rows if r.kind == "agent"]
    timed = [r for r in agents if r.p95_ms is not None and r.calls]
    slow = max(timed, key=lambda r: r.p95_ms or 0.0) if timed else None
    paid = [r for r in agents if r.cost_usd > 0]
    dear = max(paid, key=lambda r: r.cost_usd) if paid else None
    lag = snap.loop_lag.quantile(0.99)
    return Totals(
        events=sum(r.calls for r in agents),
        busy_s=sum(r.busy_s for r in agents),
        prompt_tokens=sum(c.prompt_tokens for c in snap.costs),
        completion_tokens=sum(c.completion_tokens for c in snap.costs),
        cost_usd=sum(c.cost_usd for c in snap.costs),
        slowest=None if slow is None else slow.name,
        slowest_p95_ms=None if slow is None else slow.p95_ms,
        most_expensive=None if dear is None else dear.name,
        most_expensive_usd=None if dear is None else dear.cost_usd,
        loop_lag_p99_ms=_ms(lag),
    )


def _workflows(rows: list[ProfileRow]) -> list[WorkflowTotals]:
    groups: dict[str, list[ProfileRow]] = {}
    for r in rows:
        if r.kind == "step":
            groups.setdefault(r.workflow or "", []).append(r)
    out = []
    for name, group in sorted(groups.items()):
        timed = [r for r in group if r.p95_ms is not None]
        slow = max(timed, key=lambda r: r.p95_ms or 0.0) if timed else None
        paid = [r for r in group if r.cost_usd > 0]
        dear = max(paid, key=lambda r: r.cost_usd) if paid else None
        out.append(
            WorkflowTotals(
                workflow=name,
                steps=len(group),
                calls=sum(r.calls for r in group),
                busy_s=sum(r.busy_s for r in group),
                cost_usd=sum(r.cost_usd for r in group),
                slowest_step=None if slow is None else slow.name,
                slowest_p95_ms=None if slow is None else slow.p95_ms,
                most_expensive_step=None if dear is None else dear.name,
                most_expensive_usd=None if dear is None else dear.cost_usd,
            )
        )
    return out


def build_profile(snap: ProfileSnapshot, *, source: str) -> ProfileReport:
    """The profile report of ``snap`` (cumulative, or a window made with ``ProfileSnapshot.minus``)."""
    window = snap.window_s
    rows: list[ProfileRow] = [_agent_row(a, window) for a in snap.agents]
    pool = _pool_row(rows, snap.pool_size, window)
    rows += [_provider_row(p) for p in snap.providers]
    rows += [_component_row(c, window) for c in snap.components]
    index = {(r.kind, r.name): r for r in rows if r.kind in ("agent", "provider")}
    _add_costs(index, snap)
    _add_cache(index, snap.cache)
    _shares(rows)
    if pool is not None:
        rows.insert(len(snap.agents), pool)
    _flag_slow(rows, {a.name: a.slo_p95_s for a in snap.agents if a.slo_p95_s is not None})
    _flag_bottleneck(rows)
    _flag_costly(rows)
    settings = {(c.kind, c.name, c.workflow): c.settings for c in snap.components}
    recs = [
        *_bottleneck_recs(rows, pool, snap),
        *_timeout_recs(rows, {a.name: a for a in snap.agents}),
        *_provider_recs(rows, snap),
        *_cache_recs(snap),
        *_component_recs(rows, settings),
    ]
    notes = []
    if any(r.p95_ms is not None for r in rows):
        notes.append(
            "Percentiles come from power-of-two histogram buckets: each lies within a factor of two of the true "
            "value (docs/metrics.md)."
        )
    return ProfileReport(
        source=source,
        taken_at=snap.taken_at,
        window_s=window,
        rows=rows,
        totals=_totals(rows, snap),
        workflows=_workflows(rows),
        recommendations=recs,
        notes=notes,
    )
