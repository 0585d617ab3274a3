"""A profile snapshot: the raw, cumulative figures of a runner at one moment, and the difference of two.

Everything the profile report (:mod:`.profile`) and the alerts (:mod:`.alerts`) compute comes from these
Structs, so a report from a running worker, from a benchmark's JSON report (which embeds the snapshot of its
measured phase) or from a saved snapshot is computed by the same code. Taking one reads counters the hot path
already keeps — the handler-duration histogram's sum is each agent's busy time — plus the handlers running at
that moment, so the hot path pays nothing for it::

    before = take_snapshot(runner)
    ...                                  # load
    window = take_snapshot(runner).minus(before)
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final, Literal, get_args

import msgspec

from ..components import ComponentSample, HistSample
from ..llm.ledger import CostLine

if TYPE_CHECKING:
    from ..runner import Runner

__all__ = ["SNAPSHOT_FORMAT", "AgentSample", "CacheUse", "ProfileSnapshot", "ProviderSample", "take_snapshot"]

SnapshotFormat = Literal["agentflow.profile-snapshot/1"]
SNAPSHOT_FORMAT: Final[SnapshotFormat] = get_args(SnapshotFormat)[0]
_OPEN_STATES: Final = ("open", "forced_open")


class AgentSample(msgspec.Struct, frozen=True, kw_only=True):
    """One agent: its settings, counts, and histograms of handler duration (per attempt) and queue wait."""

    name: str
    topic: str
    batch: bool = False
    concurrency: int
    timeout_s: float
    slo_p95_s: float | None = None
    handled: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    rejected: int = 0
    failed_attempts: int = 0
    timeouts: int = 0
    retries: int = 0
    duration: HistSample = msgspec.field(default_factory=HistSample)
    queue_wait: HistSample = msgspec.field(default_factory=HistSample)
    busy_s: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0
    running: int = 0

    def minus(self, earlier: AgentSample) -> AgentSample:
        return msgspec.structs.replace(
            self,
            handled=max(0, self.handled - earlier.handled),
            skipped=max(0, self.skipped - earlier.skipped),
            dead_lettered=max(0, self.dead_lettered - earlier.dead_lettered),
            rejected=max(0, self.rejected - earlier.rejected),
            failed_attempts=max(0, self.failed_attempts - earlier.failed_attempts),
            timeouts=max(0, self.timeouts - earlier.timeouts),
            retries=max(0, self.retries - earlier.retries),
            duration=self.duration.minus(earlier.duration),
            queue_wait=self.queue_wait.minus(earlier.queue_wait),
            busy_s=max(0.0, self.busy_s - earlier.busy_s),
        )


class ProviderSample(msgspec.Struct, frozen=True, kw_only=True):
    """One LLM (provider, model): HTTP attempts by outcome, their durations, its rate limiter and breaker."""

    provider: str
    model: str
    outcomes: dict[str, int] = msgspec.field(default_factory=dict)
    retries: int = 0
    duration: HistSample = msgspec.field(default_factory=HistSample)
    limiter_wait: HistSample | None = None
    limiter_rejected: int = 0
    rpm: float | None = None
    tpm: float | None = None
    breaker_state: str | None = None
    breaker_opens: int = 0

    @property
    def key(self) -> str:
        return f"{self.provider}/{self.model}"

    def minus(self, earlier: ProviderSample) -> ProviderSample:
        wait = self.limiter_wait
        if wait is not None and earlier.limiter_wait is not None:
            wait = wait.minus(earlier.limiter_wait)
        return msgspec.structs.replace(
            self,
            outcomes={k: max(0, n - earlier.outcomes.get(k, 0)) for k, n in self.outcomes.items()},
            retries=max(0, self.retries - earlier.retries),
            duration=self.duration.minus(earlier.duration),
            limiter_wait=wait,
            limiter_rejected=max(0, self.limiter_rejected - earlier.limiter_rejected),
            breaker_opens=max(0, self.breaker_opens - earlier.breaker_opens),
        )


class CacheUse(msgspec.Struct, frozen=True, kw_only=True):
    """Chat calls with temperature 0 of one (provider, agent), by how the response cache answered, and the
    provider's cache settings and counts (expirations and evictions say whether a longer TTL or more entries
    would have helped)."""

    provider: str
    agent: str
    hit: int = 0
    miss: int = 0
    off: int = 0
    cache_enabled: bool = True
    ttl_s: float = 0.0
    max_entries: int = 0
    expirations: int = 0
    evictions: int = 0

    @property
    def calls(self) -> int:
        return self.hit + self.miss + self.off

    def minus(self, earlier: CacheUse) -> CacheUse:
        return msgspec.structs.replace(
            self,
            hit=max(0, self.hit - earlier.hit),
            miss=max(0, self.miss - earlier.miss),
            off=max(0, self.off - earlier.off),
            expirations=max(0, self.expirations - earlier.expirations),
            evictions=max(0, self.evictions - earlier.evictions),
        )


class ProfileSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a profile report is computed from; cumulative since the runner started, or (after
    :meth:`minus`) over a window of ``window_s`` seconds ending at ``taken_at``."""

    format: SnapshotFormat = SNAPSHOT_FORMAT
    taken_at: float
    window_s: float
    bus: str = "memory"
    pool_size: int = 0
    agents: list[AgentSample] = msgspec.field(default_factory=list)
    providers: list[ProviderSample] = msgspec.field(default_factory=list)
    cache: list[CacheUse] = msgspec.field(default_factory=list)
    costs: list[CostLine] = msgspec.field(default_factory=list)
    components: list[ComponentSample] = msgspec.field(default_factory=list)
    loop_lag: HistSample = msgspec.field(default_factory=HistSample)
    dead_letters_written: int = 0

    def minus(self, earlier: ProfileSnapshot) -> ProfileSnapshot:
        """What happened between ``earlier`` and this snapshot (parts that appeared meanwhile count whole)."""
        agents = {a.name: a for a in earlier.agents}
        providers = {p.key: p for p in earlier.providers}
        cache = {(c.provider, c.agent): c for c in earlier.cache}
        costs = {(c.provider, c.model, c.agent): c for c in earlier.costs}
        comps = {(c.kind, c.name, c.workflow): c for c in earlier.components}
        return msgspec.structs.replace(
            self,
            window_s=max(0.0, self.window_s - earlier.window_s),
            agents=[a.minus(agents[a.name]) if a.name in agents else a for a in self.agents],
            providers=[p.minus(providers[p.key]) if p.key in providers else p for p in self.providers],
            cache=[c.minus(cache[(c.provider, c.agent)]) if (c.provider, c.agent) in cache else c for c in self.cache],
            costs=[_cost_minus(c, costs.get((c.provider, c.model, c.agent))) for c in self.costs],
            components=[
                c.minus(comps[(c.kind, c.name, c.workflow)]) if (c.kind, c.name, c.workflow) in comps else c
                for c in self.components
            ],
            loop_lag=self.loop_lag.minus(earlier.loop_lag),
            dead_letters_written=max(0, self.dead_letters_written - earlier.dead_letters_written),
        )


def _cost_minus(line: CostLine, earlier: CostLine | None) -> CostLine:
    if earlier is None:
        return line
    return CostLine(
        provider=line.provider,
        model=line.model,
        agent=line.agent,
        calls=max(0, line.calls - earlier.calls),
        prompt_tokens=max(0, line.prompt_tokens - earlier.prompt_tokens),
        completion_tokens=max(0, line.completion_tokens - earlier.completion_tokens),
        cost_usd=max(0.0, line.cost_usd - earlier.cost_usd),
    )


def take_snapshot(runner: Runner, *, uptime_s: float | None = None) -> ProfileSnapshot:
    """The runner's figures now; ``uptime_s`` (seconds since it started) defaults to what its insight measured."""
    now = time.perf_counter()
    if uptime_s is None:
        uptime_s = runner.insight.uptime_s()
    metrics = runner.metrics
    cfg = runner.config
    by_name = metrics.agents()
    agents: list[AgentSample] = []
    dead = 0
    for worker in runner._agents:
        m = by_name.get(worker.name)
        if m is None:
            continue
        running, running_s = 0, 0.0
        for slot in worker._slots:
            if slot.deadline:
                running += 1
                running_s += max(0.0, now - (slot.deadline - worker.timeout_s))
        dead += sum(m.dead_lettered.values())
        agents.append(
            AgentSample(
                name=worker.name,
                topic=worker.topic,
                batch=hasattr(worker, "batch_size"),
                concurrency=worker.concurrency,
                timeout_s=worker.timeout_s,
                slo_p95_s=cfg.agent(worker.name).slo_p95_s,
                handled=m.handled,
                skipped=m.skipped,
                dead_lettered=m.dead_lettered_total(),
                rejected=m.dead_lettered.get("rejected", 0),
                failed_attempts=sum(m.failures.values()),
                timeouts=m.failures.get("timeout", 0),
                retries=m.retries,
                duration=HistSample.of(m.duration),
                queue_wait=HistSample.of(m.queue_wait),
                busy_s=m.duration.sum + running_s,
                in_flight=worker.inflight,
                max_in_flight=worker.max_inflight,
                running=running,
            )
        )
    providers, cache, costs = _llm_samples(runner)
    return ProfileSnapshot(
        taken_at=time.time(),
        window_s=uptime_s,
        bus=runner.bus.backend,
        pool_size=runner.pool.size,
        agents=agents,
        providers=providers,
        cache=cache,
        costs=costs,
        components=metrics.components(),
        loop_lag=HistSample.of(metrics.loop_lag),
        dead_letters_written=dead,
    )


def _llm_samples(runner: Runner) -> tuple[list[ProviderSample], list[CacheUse], list[CostLine]]:
    hub = runner.llm
    if hub is None:
        return [], [], []
    metrics = runner.metrics
    breakers = metrics.breakers()
    limiters = metrics.rate_limiters()
    providers = []
    for (provider, model), mm in sorted(hub.llm_metrics.models().items()):
        name = f"{provider}/{model}"
        limits = runner.config.llm[provider].limits if provider in runner.config.llm else None
        lim = limiters.get(name)
        br = breakers.get(name)
        providers.append(
            ProviderSample(
                provider=provider,
                model=model,
                outcomes=dict(mm.outcomes),
                retries=mm.retries,
                duration=HistSample.of(mm.duration),
                limiter_wait=None if lim is None else HistSample.of(lim.wait),
                limiter_rejected=0 if lim is None else lim.rejected,
                rpm=None if limits is None else limits.rpm,
                tpm=None if limits is None else limits.tpm,
                breaker_state=None if br is None else br.state,
                breaker_opens=0
                if br is None
                else sum(n for (_, to), n in br.transitions.items() if to in _OPEN_STATES),
            )
        )
    caches = hub.llm_metrics.caches()
    cache = []
    for (provider, agent), counts in sorted(hub.llm_metrics.deterministic_calls().items()):
        cfg = runner.config.llm[provider].cache if provider in runner.config.llm else None
        c = caches.get(provider)
        cache.append(
            CacheUse(
                provider=provider,
                agent=agent,
                hit=counts["hit"],
                miss=counts["miss"],
                off=counts["off"],
                cache_enabled=c is not None,
                ttl_s=0.0 if cfg is None else cfg.ttl_s,
                max_entries=0 if cfg is None else cfg.max_entries,
                expirations=0 if c is None else c.expirations,
                evictions=0 if c is None else c.evictions,
            )
        )
    costs = [
        CostLine(
            provider=r.provider,
            model=r.model,
            agent=r.agent,
            calls=r.calls,
            prompt_tokens=r.prompt_tokens,
            completion_tokens=r.completion_tokens,
            cost_usd=r.cost_usd,
        )
        for r in hub.costs.rows()
    ]
    return providers, cache, costs
