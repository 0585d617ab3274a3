"""The state store's Prometheus families, rendered from :meth:`StateStore.statistics` at scrape time.

The only label is ``backend`` (``memory``, ``sqlite`` or ``redis``), plus ``result`` (``hit``, ``miss``) on cache
lookups: one runner has one store, so the families stay a handful of series. Listed in docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .store import StateStore

__all__ = ["state_families"]


def state_families(store: StateStore) -> Iterator[Metric]:
    s = store.statistics()
    b = [s.backend]

    def counter(name: str, doc: str, value: int) -> CounterMetricFamily:
        family = CounterMetricFamily(name, doc, labels=["backend"])
        family.add_metric(b, value)
        return family

    yield counter("agentflow_state_writes", "State writes made by handlers (set, delete, update).", s.writes)
    yield counter(
        "agentflow_state_coalesced_writes",
        "Buffered writes replaced by a later write of the same key before their flush.",
        s.coalesced,
    )
    yield counter("agentflow_state_flushes", "Flushes of the write-behind buffer that committed.", s.flushes)
    yield counter(
        "agentflow_state_flush_failures",
        "Flushes that failed: the events with writes in them were not acknowledged and are retried.",
        s.flush_failures,
    )
    yield counter("agentflow_state_update_conflicts", "update() calls that found the value changed and retried.",
                  s.update_conflicts)  # fmt: skip
    yield counter(
        "agentflow_state_duplicates",
        "once=True writes skipped because the same event had already made them (a redelivery or a retry).",
        s.duplicates,
    )
    lookups = CounterMetricFamily(
        "agentflow_state_cache_lookups", "Reads answered by the state cache (hit) or the backend (miss).",
        labels=["backend", "result"],
    )  # fmt: skip
    lookups.add_metric([s.backend, "hit"], s.cache_hits)
    lookups.add_metric([s.backend, "miss"], s.cache_misses)
    yield lookups
    pending = GaugeMetricFamily(
        "agentflow_state_pending_writes", "Writes waiting in the write-behind buffer or in a flush now.",
        labels=["backend"],
    )  # fmt: skip
    pending.add_metric(b, s.pending + s.inflight)
    yield pending
