"""The LLM layer's Prometheus families, rendered from plain counters at scrape time.

Labels are bounded: ``provider`` names come from the config, ``model`` values beyond
:data:`MAX_MODELS` per provider are counted under ``model="_other"``, ``agent`` names are the agents
registered in code (``_none`` for calls made outside an agent), and ``outcome``/``kind``/``result`` are fixed
sets. The families are listed in docs/llm.md ("Metrics").
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from ..metrics import Pow2Histogram
from .cache import TTLCache
from .cost import CostTracker

__all__ = ["CACHE_USES", "OUTCOMES", "LLMMetrics", "ModelMetrics", "SharedCacheStats"]

#: Values of the ``outcome`` label, one per member of the LLM error tree plus success.
OUTCOMES = (
    "success",
    "timeout",
    "rate_limited",
    "unavailable",
    "bad_request",
    "auth",
    "circuit_open",
    "interrupted",
    "error",
)
MAX_MODELS = 100
#: Values of the ``cache`` label of agentflow_llm_deterministic_calls_total.
CACHE_USES = ("hit", "miss", "off")


class ModelMetrics:
    """Counters of one (provider, model): HTTP requests by outcome, retries and latencies."""

    __slots__ = ("duration", "inter_token", "outcomes", "retries", "ttft")

    def __init__(self) -> None:
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self.retries = 0
        self.duration = Pow2Histogram()
        self.ttft = Pow2Histogram()
        self.inter_token = Pow2Histogram()


class SharedCacheStats:
    """Lookups of one provider's shared (second-level) response cache: hits, misses, and failed reads or writes."""

    __slots__ = ("errors", "hits", "misses")

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        self.errors = 0


class LLMMetrics:
    """Everything the LLM layer counts; :meth:`collect` turns it into Prometheus families."""

    def __init__(self, costs: CostTracker) -> None:
        self.costs = costs
        self._models: dict[tuple[str, str], ModelMetrics] = {}
        self._caches: dict[str, TTLCache[object, object]] = {}
        self._shared: dict[str, tuple[str, SharedCacheStats]] = {}
        #: Chat calls with temperature 0, by (provider, agent) and how the cache answered: hit, miss, off.
        self._deterministic: dict[tuple[str, str], dict[str, int]] = {}

    def model(self, provider: str, model: str) -> ModelMetrics:
        key = (provider, model)
        m = self._models.get(key)
        if m is None:
            if sum(1 for p, _ in self._models if p == provider) >= MAX_MODELS:
                key = (provider, "_other")
                m = self._models.get(key)
            if m is None:
                m = self._models[key] = ModelMetrics()
        return m

    def add_cache(self, provider: str, cache: TTLCache[object, object]) -> None:
        self._caches[provider] = cache

    def add_shared_cache(self, provider: str, level: str, stats: SharedCacheStats) -> None:
        """Count the second cache level of ``provider`` (``level`` names it: ``redis``)."""
        self._shared[provider] = (level, stats)

    def deterministic(self, provider: str, agent: str | None, cache: str) -> None:
        """Count one chat call with temperature 0; ``cache`` is ``hit``, ``miss`` or ``off`` (not looked up)."""
        key = (provider, agent or "_none")
        counts = self._deterministic.get(key)
        if counts is None:
            counts = self._deterministic[key] = dict.fromkeys(CACHE_USES, 0)
        counts[cache] += 1

    def deterministic_calls(self) -> dict[tuple[str, str], dict[str, int]]:
        """Chat calls with temperature 0 by (provider, agent): ``{"hit": n, "miss": n, "off": n}``."""
        return {k: dict(v) for k, v in self._deterministic.items()}

    def models(self) -> dict[tuple[str, str], ModelMetrics]:
        return dict(self._models)

    def caches(self) -> dict[str, TTLCache[object, object]]:
        return dict(self._caches)

    def requests_total(self) -> int:
        return sum(sum(m.outcomes.values()) for m in self._models.values())

    def collect(self) -> Iterator[Metric]:
        if not self._models and not self._caches:
            return
        requests = CounterMetricFamily(
            "agentflow_llm_requests",
            "HTTP requests to LLM providers (each retry counts), by outcome.",
            labels=["provider", "model", "outcome"],
        )
        retries = CounterMetricFamily(
            "agentflow_llm_retries", "LLM requests retried after a retriable failure.", labels=["provider", "model"]
        )
        duration = HistogramMetricFamily(
            "agentflow_llm_request_duration_seconds",
            "Time of one HTTP request to the provider, to the last byte of the answer.",
            labels=["provider", "model"],
        )
        ttft = HistogramMetricFamily(
            "agentflow_llm_time_to_first_token_seconds",
            "Streamed chat: time from sending the request to the first token (text or tool-call fragment).",
            labels=["provider", "model"],
        )
        inter = HistogramMetricFamily(
            "agentflow_llm_inter_token_seconds",
            "Streamed chat: time between consecutive chunks carrying tokens.",
            labels=["provider", "model"],
        )
        for (provider, model), m in sorted(self._models.items()):
            for outcome, n in m.outcomes.items():
                requests.add_metric([provider, model, outcome], n)
            retries.add_metric([provider, model], m.retries)
            duration.add_metric([provider, model], m.duration.cumulative_buckets(), m.duration.sum)
            ttft.add_metric([provider, model], m.ttft.cumulative_buckets(), m.ttft.sum)
            inter.add_metric([provider, model], m.inter_token.cumulative_buckets(), m.inter_token.sum)
        yield from (requests, retries, duration, ttft, inter)
        tokens = CounterMetricFamily(
            "agentflow_llm_tokens",
            "Tokens the provider reported, by kind: prompt or completion.",
            labels=["provider", "model", "agent", "kind"],
        )
        cost = CounterMetricFamily(
            "agentflow_llm_cost_usd",
            "Cost in US dollars from the [llm.NAME.prices] table.",
            labels=["provider", "model", "agent"],
        )
        for row in self.costs.rows():
            tokens.add_metric([row.provider, row.model, row.agent, "prompt"], row.prompt_tokens)
            tokens.add_metric([row.provider, row.model, row.agent, "completion"], row.completion_tokens)
            cost.add_metric([row.provider, row.model, row.agent], row.cost_usd)
        yield from (tokens, cost)
        lookups = CounterMetricFamily(
            "agentflow_llm_cache_lookups",
            "Response cache lookups, by level (memory: this process; redis: shared by the workers) and result.",
            labels=["provider", "level", "result"],
        )
        entries = GaugeMetricFamily(
            "agentflow_llm_cache_entries", "Entries in the in-process response cache.", labels=["provider"]
        )
        for provider, cache in sorted(self._caches.items()):
            lookups.add_metric([provider, "memory", "hit"], cache.hits)
            lookups.add_metric([provider, "memory", "miss"], cache.misses)
            entries.add_metric([provider], len(cache))
        errors = CounterMetricFamily(
            "agentflow_llm_cache_errors",
            "Reads and writes of the shared response cache level that failed (each read counted as a miss too).",
            labels=["provider", "level"],
        )
        for provider, (level, stats) in sorted(self._shared.items()):
            lookups.add_metric([provider, level, "hit"], stats.hits)
            lookups.add_metric([provider, level, "miss"], stats.misses)
            errors.add_metric([provider, level], stats.errors)
        yield from (lookups, entries, errors)
        det = CounterMetricFamily(
            "agentflow_llm_deterministic_calls",
            "Chat calls with temperature 0, by how the response cache answered: hit, miss or off (not looked up).",
            labels=["provider", "agent", "cache"],
        )
        for (provider, agent), counts in sorted(self._deterministic.items()):
            for use, n in counts.items():
                det.add_metric([provider, agent, use], n)
        yield det
        refused = CounterMetricFamily(
            "agentflow_llm_budget_refusals", "LLM calls refused because the workflow's token budget was used up."
        )
        refused.add_metric([], self.costs.budget_refusals)
        yield refused
        warned = CounterMetricFamily(
            "agentflow_llm_budget_warnings",
            "Workflows that passed token_budget_warn_share of their token budget (each counted once).",
        )
        warned.add_metric([], self.costs.budget_warnings)
        yield warned
