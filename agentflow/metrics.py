"""Prometheus metrics through one :class:`Metrics` object with its own registry.

The hot path never touches prometheus-client: handlers bump plain integers and :class:`Pow2Histogram` buckets
(a list index, ~60 ns), and a custom collector turns them into metric families only when scraped. Histogram
buckets are powers of two of a microsecond (1 µs … ~9.5 h), the layout of Prometheus native histograms at
schema 0, so one layout fits handler durations from a no-op to a slow LLM call.

Label sets are bounded: agents are the ones registered in code, outcomes and reasons are fixed enums, and
topics beyond ``max_topic_labels`` are counted under ``topic="_other"``.

The registry also holds prometheus-client's process collector (``process_cpu_seconds_total``,
``process_resident_memory_bytes``, ``process_open_fds``, ...; where the platform has ``/proc``) and
``agentflow_build_info`` (agentflow's and Python's versions), so a dashboard sees what runs and what it costs.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .components import ComponentSample

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
        if not 0.0 <= value_s <= MAX_OBSERVED_S:  # also catches inf and NaN (both stored as the maximum)
            value_s = 0.0 if value_s < 0.0 else MAX_OBSERVED_S
        self.counts[int(value_s * 1_000_000).bit_length()] += 1
        self.sum += value_s

    def observe_many(self, value_s: float, n: int) -> None:
        """Observe the same value ``n`` times (events of one batch that waited equally long)."""
        if not 0.0 <= value_s <= MAX_OBSERVED_S:
            value_s = 0.0 if value_s < 0.0 else MAX_OBSERVED_S
        self.counts[int(value_s * 1_000_000).bit_length()] += n
        self.sum += value_s * n

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


#: The ``[runner]`` bounds that refuse emit/request calls (``agentflow_calls_refused_total{limit}``).
REFUSAL_LIMITS: Final = ("max_waiting_emits", "max_pending_requests")
#: Circuit breaker states, in the order the state gauge renders them (values of ``BreakerState``).
BREAKER_STATES: Final = ("closed", "open", "half_open", "forced_open", "disabled")
#: Batch-size histogram bounds: 1, 2, 4 … 4096 items; fill-ratio bounds: 0.1, 0.2 … 1.0.
_SIZE_BOUNDS: Final = tuple(2**i for i in range(13))
_FILL_BOUNDS: Final = tuple(i / 10 for i in range(1, 11))


class BreakerMetrics:
    """One circuit breaker's state and counts, written by the breaker on each call and transition."""

    __slots__ = ("calls", "name", "slow", "state", "transitions")

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = "closed"
        self.calls = {"success": 0, "failure": 0, "ignored": 0, "rejected": 0, "cancelled": 0}
        self.slow = 0
        self.transitions: dict[tuple[str, str], int] = {}


class LimiterMetrics:
    """One rate limiter's queue depth, waits (``wait.count`` is the grants) and refusals."""

    __slots__ = ("name", "queued", "rejected", "wait")

    def __init__(self, name: str) -> None:
        self.name = name
        self.queued = 0
        self.rejected = 0
        self.wait = Pow2Histogram()


class BudgetMetrics:
    """One retry budget's allowed and refused retries."""

    __slots__ = ("exhausted", "name", "retries")

    def __init__(self, name: str) -> None:
        self.name = name
        self.retries = 0
        self.exhausted = 0


class BatcherMetrics:
    """One micro-batcher's batch sizes, fill ratios and queue waits."""

    __slots__ = ("fill", "fill_sum", "name", "queue_wait", "size_sum", "sizes")

    def __init__(self, name: str) -> None:
        self.name = name
        self.sizes = [0] * (len(_SIZE_BOUNDS) + 1)
        self.size_sum = 0
        self.fill = [0] * len(_FILL_BOUNDS)
        self.fill_sum = 0.0
        self.queue_wait = Pow2Histogram()

    def observe_batch(self, size: int, fill: float) -> None:
        self.sizes[min(len(_SIZE_BOUNDS), (size - 1).bit_length())] += 1
        self.size_sum += size
        fill = min(1.0, max(0.0, fill))
        self.fill[min(9, max(0, math.ceil(round(fill * 10, 9)) - 1))] += 1
        self.fill_sum += fill


def _cumulative(counts: list[int], bounds: tuple[float, ...]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    acc = 0
    for bound, n in zip(bounds, counts, strict=False):
        acc += n
        out.append((repr(float(bound)), float(acc)))
    out.append(("+Inf", float(sum(counts))))
    return out


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
        #: emit/request calls refused with BackpressureError, by the ``[runner]`` bound that refused them
        self.calls_refused: dict[str, int] = dict.fromkeys(REFUSAL_LIMITS, 0)
        self._max_topics = max_topic_labels
        self._gauges: list[Callable[[], Iterable[GaugeSample]]] = []
        self._breakers: dict[str, BreakerMetrics] = {}
        self._limiters: dict[str, LimiterMetrics] = {}
        self._budgets: dict[str, BudgetMetrics] = {}
        self._batchers: dict[str, BatcherMetrics] = {}
        self._families: list[Callable[[], Iterable[Metric]]] = []
        self._components: list[Callable[[], Iterable[ComponentSample]]] = []
        #: How late the event loop ran a timer that asked to run on time: measured always (agentflow.insight).
        self.loop_lag = Pow2Histogram()
        self.registry.register(self)
        try:
            ProcessCollector(registry=self.registry)
        except ValueError:  # a registry that has one already (the process-wide default has)
            pass

    def agent(self, name: str) -> AgentMetrics:
        m = self._agents.get(name)
        if m is None:
            m = self._agents[name] = AgentMetrics(name)
        return m

    # One record per name: a breaker, limiter, budget or batcher made again under the same name (a new client
    # for the same provider/model) continues its series instead of adding one. Names come from code and config.
    def breaker(self, name: str) -> BreakerMetrics:
        return self._breakers.setdefault(name, BreakerMetrics(name))

    def rate_limiter(self, name: str) -> LimiterMetrics:
        return self._limiters.setdefault(name, LimiterMetrics(name))

    def retry_budget(self, name: str) -> BudgetMetrics:
        return self._budgets.setdefault(name, BudgetMetrics(name))

    def batcher(self, name: str) -> BatcherMetrics:
        return self._batchers.setdefault(name, BatcherMetrics(name))

    def agents(self) -> dict[str, AgentMetrics]:
        """Every agent's counters, by name (the profile and the alerts read them)."""
        return dict(self._agents)

    def breakers(self) -> dict[str, BreakerMetrics]:
        return dict(self._breakers)

    def rate_limiters(self) -> dict[str, LimiterMetrics]:
        return dict(self._limiters)

    def add_components(self, source: Callable[[], Iterable[ComponentSample]]) -> None:
        """Register a callable that describes tools, MCP servers, state stores or workflow steps for the profile
        report (:class:`~agentflow.components.ComponentSample`); read when a profile or an alert needs it."""
        self._components.append(source)

    def components(self) -> list[ComponentSample]:
        return [sample for source in self._components for sample in source()]

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

    def add_counters(self, name: str, help_: str, label: str, source: Callable[[], Mapping[str, int]]) -> None:
        """Register a counter family ``name`` read at scrape time from ``source``: label value → count (the
        caller keeps the label values bounded)."""

        def family() -> Iterator[Metric]:
            fam = CounterMetricFamily(name, help_, labels=[label])
            for value, n in sorted(source().items()):
                fam.add_metric([value], n)
            yield fam

        self._families.append(family)

    def add_families(self, source: Callable[[], Iterable[Metric]]) -> None:
        """Register a callable that yields whole metric families at scrape time (the LLM layer's)."""
        self._families.append(source)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        from . import __version__  # the package's version; imported here, as the package imports this module

        build = GaugeMetricFamily(
            "agentflow_build_info",
            "The agentflow and Python versions of this process (always 1).",
            labels=["version", "python"],
        )
        build.add_metric([__version__, platform.python_version()], 1.0)
        yield build
        emitted = CounterMetricFamily("agentflow_events_emitted", "Events emitted, by topic.", labels=["topic"])
        for topic, n in sorted(self._emitted.items()):
            emitted.add_metric([topic], n)
        yield emitted
        refused = CounterMetricFamily(
            "agentflow_calls_refused",
            "emit and request calls refused with BackpressureError, by the runner bound that was reached.",
            labels=["limit"],
        )
        for limit, n in self.calls_refused.items():
            refused.add_metric([limit], n)
        yield refused
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
        lag = HistogramMetricFamily(
            "agentflow_event_loop_lag_seconds",
            "How late the event loop ran a periodic timer: time it could not run callbacks on time.",
        )
        lag.add_metric([], self.loop_lag.cumulative_buckets(), self.loop_lag.sum)
        yield lag
        yield from self._resilience_families()
        families: dict[str, GaugeMetricFamily] = {}
        for source in self._gauges:
            for name, help_, labels, values, value in source():
                fam = families.get(name)
                if fam is None:
                    fam = families[name] = GaugeMetricFamily(name, help_, labels=list(labels))
                fam.add_metric(list(values), value)
        yield from families.values()
        for family_source in self._families:
            yield from family_source()

    def _resilience_families(self) -> Iterator[Metric]:
        # A family is rendered only once something of its kind exists, like the per-agent families.
        if self._breakers:
            state = GaugeMetricFamily(
                "agentflow_breaker_state",
                "Circuit breaker state: 1 for the current state.",
                labels=["breaker", "state"],
            )
            trans = CounterMetricFamily(
                "agentflow_breaker_transitions", "Circuit breaker state changes.", labels=["breaker", "from", "to"]
            )
            calls = CounterMetricFamily(
                "agentflow_breaker_calls", "Calls through a circuit breaker, by outcome.", labels=["breaker", "outcome"]
            )
            slow = CounterMetricFamily(
                "agentflow_breaker_slow_calls", "Calls slower than slow_call_duration_s.", labels=["breaker"]
            )
            for name, b in sorted(self._breakers.items()):
                for st in BREAKER_STATES:
                    state.add_metric([name, st], 1.0 if b.state == st else 0.0)
                for (src, dst), n in sorted(b.transitions.items()):
                    trans.add_metric([name, src, dst], n)
                for outcome, n in b.calls.items():
                    calls.add_metric([name, outcome], n)
                slow.add_metric([name], b.slow)
            yield from (state, trans, calls, slow)
        if self._limiters:
            queued = GaugeMetricFamily(
                "agentflow_rate_limit_queued", "Callers waiting for a rate limiter now.", labels=["limiter"]
            )
            lwait = HistogramMetricFamily(
                "agentflow_rate_limit_wait_seconds", "Time from acquire to grant, per grant.", labels=["limiter"]
            )
            refused = CounterMetricFamily(
                "agentflow_rate_limit_rejected", "Callers refused because the queue was full.", labels=["limiter"]
            )
            for name, lim in sorted(self._limiters.items()):
                queued.add_metric([name], lim.queued)
                lwait.add_metric([name], lim.wait.cumulative_buckets(), lim.wait.sum)
                refused.add_metric([name], lim.rejected)
            yield from (queued, lwait, refused)
        if self._budgets:
            spent = CounterMetricFamily(
                "agentflow_retry_budget_retries", "Retries a retry budget allowed.", labels=["budget"]
            )
            exhausted = CounterMetricFamily(
                "agentflow_retry_budget_exhausted", "Retries a retry budget refused.", labels=["budget"]
            )
            for name, bud in sorted(self._budgets.items()):
                spent.add_metric([name], bud.retries)
                exhausted.add_metric([name], bud.exhausted)
            yield from (spent, exhausted)
        if self._batchers:
            size = HistogramMetricFamily("agentflow_batch_size", "Items per dispatched batch.", labels=["batcher"])
            fill = HistogramMetricFamily(
                "agentflow_batch_fill_ratio",
                "How full each batch was against its size or token limit.",
                labels=["batcher"],
            )
            bwait = HistogramMetricFamily(
                "agentflow_batch_queue_wait_seconds", "Time from submit to dispatch, per item.", labels=["batcher"]
            )
            for name, bat in sorted(self._batchers.items()):
                size.add_metric([name], _cumulative(bat.sizes, _SIZE_BOUNDS), float(bat.size_sum))
                fill.add_metric([name], _cumulative(bat.fill, _FILL_BOUNDS), bat.fill_sum)
                bwait.add_metric([name], bat.queue_wait.cumulative_buckets(), bat.queue_wait.sum)
            yield from (size, fill, bwait)
