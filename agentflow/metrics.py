"""Prometheus metrics through one :class:`Metrics` object with its own registry.

The hot path never touches prometheus-client: handlers bump plain integers and :class:`Pow2Histogram` buckets
(a list index, ~60 ns), and a custom collector turns them into metric families only when scraped. Histogram
buckets are powers of two of a microsecond (1 µs … ~9.5 h), the layout of Prometheus native histograms at
schema 0, so one layout fits handler durations from a no-op to a slow LLM call.

Label sets are bounded: agents are the ones registered in code, outcomes and reasons are fixed enums, and
topics beyond ``max_topic_labels`` are counted under ``topic="_other"``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["MAX_OBSERVED_S", "AgentMetrics", "GaugeSample", "Metrics", "Pow2Histogram"]

_SLOTS: Final = 64
#: Observations are clamped to this (~31 years) so a bogus timestamp cannot index past the last bucket.
MAX_OBSERVED_S: Final = 1e9
#: Exported bucket upper bounds: 2**i microseconds for i in 0..35, in seconds.
_EXPORTED: Final = 36
_BOUNDS_S: Final = tuple(2.0**i / 1_000_000 for i in range(_EXPORTED))

#: (metric name, help, label names, label values, value)
GaugeSample = tuple[str, str, tuple[str, ...], tuple[str, ...], float]


class Pow2Histogram:
    """A fixed-size histogram with power-of-two microsecond buckets; ``observe`` is one list index.

    Bucket ``i`` holds values ``v`` with ``int(v * 1e6).bit_length() == i``, i.e. ``v < 2**i µs``.
    """

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * _SLOTS
        self.sum = 0.0

    def observe(self, value_s: float) -> None:
        if value_s < 0.0:
            value_s = 0.0
        elif value_s > MAX_OBSERVED_S:
            value_s = MAX_OBSERVED_S  # also catches inf; NaN fails both tests and is stored as the maximum
        elif value_s != value_s:
            value_s = MAX_OBSERVED_S
        self.counts[int(value_s * 1_000_000).bit_length()] += 1
        self.sum += value_s

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative_buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        acc = 0
        for i in range(_EXPORTED):
            acc += self.counts[i]
            out.append((repr(_BOUNDS_S[i]), float(acc)))
        out.append(("+Inf", float(acc + sum(self.counts[_EXPORTED:]))))
        return out


class AgentMetrics:
    """Counters and histograms of one agent, bumped inline by the agent's workers."""

    __slots__ = ("dead_lettered", "duration", "failures", "handled", "name", "queue_wait", "retries", "skipped")

    def __init__(self, name: str) -> None:
        self.name = name
        self.handled = 0
        self.skipped = 0
        self.retries = 0
        self.failures: dict[str, int] = {}
        self.dead_lettered: dict[str, int] = {}
        self.duration = Pow2Histogram()
        self.queue_wait = Pow2Histogram()

    def failed(self, kind: str) -> None:
        self.failures[kind] = self.failures.get(kind, 0) + 1

    def dead_letter(self, reason: str) -> None:
        self.dead_lettered[reason] = self.dead_lettered.get(reason, 0) + 1

    def dead_lettered_total(self) -> int:
        """Events this agent received and dead-lettered (follow-ups it emitted past the depth limit excluded)."""
        return sum(n for reason, n in self.dead_lettered.items() if reason != "depth_exceeded")


class Metrics(Collector):
    """The runner's metrics, registered in ``registry`` (a fresh one by default, never the global one).

    ``render()`` gives the Prometheus text format; ``/metrics`` on the runner's HTTP server serves it::

        metrics = Metrics()
        a = metrics.agent("summarize")
        a.handled += 1
        print(metrics.render().decode())
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, max_topic_labels: int = 1000) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=False)
        self._agents: dict[str, AgentMetrics] = {}
        self._emitted: dict[str, int] = {}
        self._max_topics = max_topic_labels
        self._gauges: list[Callable[[], Iterable[GaugeSample]]] = []
        self.registry.register(self)

    def agent(self, name: str) -> AgentMetrics:
        m = self._agents.get(name)
        if m is None:
            m = self._agents[name] = AgentMetrics(name)
        return m

    def emitted(self, topic: str, n: int = 1) -> None:
        e = self._emitted
        if topic in e:
            e[topic] += n
        elif len(e) < self._max_topics:
            e[topic] = n
        else:
            e["_other"] = e.get("_other", 0) + n

    def emitted_total(self) -> int:
        return sum(self._emitted.values())

    def add_gauges(self, source: Callable[[], Iterable[GaugeSample]]) -> None:
        """Register a callable that yields gauge samples at scrape time (in-flight work, buffer depth)."""
        self._gauges.append(source)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        emitted = CounterMetricFamily("agentflow_events_emitted", "Events emitted, by topic.", labels=["topic"])
        for topic, n in sorted(self._emitted.items()):
            emitted.add_metric([topic], n)
        yield emitted
        handled = CounterMetricFamily(
            "agentflow_events_handled",
            "Events finished by an agent, by outcome: success, skipped or dead_lettered.",
            labels=["agent", "outcome"],
        )
        failures = CounterMetricFamily(
            "agentflow_handler_failures",
            "Failed handler attempts, by kind: error or timeout (each retry that fails counts).",
            labels=["agent", "kind"],
        )
        retries = CounterMetricFamily(
            "agentflow_handler_retries", "Attempts retried after a failure.", labels=["agent"]
        )
        dead = CounterMetricFamily(
            "agentflow_events_dead_lettered",
            "Events sent to the dead-letter queue, by reason.",
            labels=["agent", "reason"],
        )
        duration = HistogramMetricFamily(
            "agentflow_handler_duration_seconds", "Time in the handler, per attempt.", labels=["agent"]
        )
        wait = HistogramMetricFamily(
            "agentflow_queue_wait_seconds", "Time from emit to the start of the first attempt.", labels=["agent"]
        )
        for name, a in sorted(self._agents.items()):
            handled.add_metric([name, "success"], a.handled)
            handled.add_metric([name, "skipped"], a.skipped)
            handled.add_metric([name, "dead_lettered"], a.dead_lettered_total())
            for kind, n in sorted(a.failures.items()):
                failures.add_metric([name, kind], n)
            retries.add_metric([name], a.retries)
            for reason, n in sorted(a.dead_lettered.items()):
                dead.add_metric([name, reason], n)
            duration.add_metric([name], a.duration.cumulative_buckets(), a.duration.sum)
            wait.add_metric([name], a.queue_wait.cumulative_buckets(), a.queue_wait.sum)
        yield from (handled, failures, retries, dead, duration, wait)
        families: dict[str, GaugeMetricFamily] = {}
        for source in self._gauges:
            for name, help_, labels, values, value in source():
                fam = families.get(name)
                if fam is None:
                    fam = families[name] = GaugeMetricFamily(name, help_, labels=list(labels))
                fam.add_metric(list(values), value)
        yield from families.values()
