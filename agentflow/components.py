"""What a part of a runner reports to the profile and the alerts: histogram snapshots and one row shape.

Layer L2: a tool, an MCP server, a state store or a workflow step each describe themselves as a
:class:`ComponentSample` (calls, failures, a duration histogram, how many may run at once and the config keys
that change it), so the profile report (:mod:`agentflow.insight`) has one row type for all of them and needs
no knowledge of their layers. A part that keeps no statistics of its own counts into a
:class:`ComponentFigures` (O(1) per call) and hands out its samples::

    step = ComponentFigures("step", "order/charge", workflow="order", concurrency=8,
                            settings={"concurrency": "[agents.charge] concurrency"})
    step.observe(0.120, "ok")
    metrics.add_components(lambda: [step.sample()])
"""

from __future__ import annotations

from typing import Final

import msgspec

from .metrics import Pow2Histogram

__all__ = ["KINDS", "ComponentFigures", "ComponentSample", "HistSample"]

#: The kinds of component rows besides agents and LLM providers (the report's ``kind`` column).
KINDS: Final = ("tool", "mcp", "state", "step")
#: Outcomes a ComponentFigures counts as failures, and which of them are timeouts.
_TIMEOUTS: Final = frozenset({"timeout"})
_OK: Final = frozenset({"ok", "success"})


class HistSample(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of a :class:`~agentflow.metrics.Pow2Histogram`: bucket ``i`` counts values under 2**i µs
    (trailing empty buckets left out), and the sum of the values in seconds."""

    counts: list[int] = msgspec.field(default_factory=list)
    sum: float = 0.0

    @classmethod
    def of(cls, hist: Pow2Histogram) -> HistSample:
        counts = hist.counts
        end = len(counts)
        while end and not counts[end - 1]:
            end -= 1
        return cls(counts=counts[:end], sum=hist.sum)

    @property
    def count(self) -> int:
        return sum(self.counts)

    def minus(self, earlier: HistSample) -> HistSample:
        """What was observed after ``earlier`` (a snapshot of the same histogram)."""
        n = max(len(self.counts), len(earlier.counts))
        a = self.counts + [0] * (n - len(self.counts))
        b = earlier.counts + [0] * (n - len(earlier.counts))
        diff = [max(0, x - y) for x, y in zip(a, b, strict=True)]
        while diff and not diff[-1]:
            diff.pop()
        return HistSample(counts=diff, sum=max(0.0, self.sum - earlier.sum))

    def plus(self, other: HistSample) -> HistSample:
        n = max(len(self.counts), len(other.counts))
        a = self.counts + [0] * (n - len(self.counts))
        b = other.counts + [0] * (n - len(other.counts))
        return HistSample(counts=[x + y for x, y in zip(a, b, strict=True)], sum=self.sum + other.sum)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile in seconds, interpolated inside its bucket as PromQL's ``histogram_quantile`` does
        (so within a factor of two of the true value); None when nothing was observed."""
        total = self.count
        if not total:
            return None
        rank = q * total
        acc = 0
        for i, n in enumerate(self.counts):
            if n and acc + n >= rank:
                lo = 0.0 if i == 0 else 2.0 ** (i - 1) / 1e6
                hi = 2.0**i / 1e6
                return lo + (hi - lo) * max(0.0, rank - acc) / n
            acc += n
        return 2.0 ** (len(self.counts) - 1) / 1e6

    def mean(self) -> float | None:
        total = self.count
        return self.sum / total if total else None

    def at_least(self, value_s: float) -> int:
        """Observations in buckets that lie wholly at or above ``value_s`` (a lower bound of the true count)."""
        first = max(0, int(value_s * 1_000_000).bit_length() + 1)
        return sum(self.counts[first:])


class ComponentSample(msgspec.Struct, frozen=True, kw_only=True):
    """One tool, MCP server, state store or workflow step, as the profile reads it (cumulative counts).

    ``settings`` names the config keys a recommendation may tell the user to change, by role:
    ``concurrency``, ``timeout``, ``cache``; ``busy_s`` defaults to the duration histogram's sum.
    """

    kind: str
    name: str
    workflow: str | None = None
    calls: int = 0
    errors: int = 0
    timeouts: int = 0
    retries: int = 0
    duration: HistSample | None = None
    busy_s: float | None = None
    concurrency: int | None = None
    in_flight: int = 0
    cache_hits: int | None = None
    cache_lookups: int | None = None
    breaker_opens: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    settings: dict[str, str] = msgspec.field(default_factory=dict)

    def minus(self, earlier: ComponentSample) -> ComponentSample:
        """The counts since ``earlier``; the configuration and the gauges are this sample's."""
        dur = self.duration
        if dur is not None and earlier.duration is not None:
            dur = dur.minus(earlier.duration)
        busy = None if self.busy_s is None else max(0.0, self.busy_s - (earlier.busy_s or 0.0))

        def less(a: int | None, b: int | None) -> int | None:
            return None if a is None else max(0, a - (b or 0))

        return msgspec.structs.replace(
            self,
            calls=max(0, self.calls - earlier.calls),
            errors=max(0, self.errors - earlier.errors),
            timeouts=max(0, self.timeouts - earlier.timeouts),
            retries=max(0, self.retries - earlier.retries),
            duration=dur,
            busy_s=busy,
            cache_hits=less(self.cache_hits, earlier.cache_hits),
            cache_lookups=less(self.cache_lookups, earlier.cache_lookups),
            breaker_opens=max(0, self.breaker_opens - earlier.breaker_opens),
            prompt_tokens=max(0, self.prompt_tokens - earlier.prompt_tokens),
            completion_tokens=max(0, self.completion_tokens - earlier.completion_tokens),
            cost_usd=max(0.0, self.cost_usd - earlier.cost_usd),
        )


class ComponentFigures:
    """Counts of a component that keeps none of its own: ``observe`` once per call (a list index and a few adds),
    ``add_usage`` for the LLM tokens and cost a call spent, ``retries`` and ``in_flight`` counted by the owner.

    ``outcome`` is ``ok``/``success``, ``timeout`` or anything else (an error).
    """

    __slots__ = ("calls", "completion_tokens", "concurrency", "cost_usd", "duration", "errors", "in_flight", "kind",
                 "name", "prompt_tokens", "retries", "settings", "timeouts", "workflow")  # fmt: skip

    def __init__(
        self,
        kind: str,
        name: str,
        *,
        workflow: str | None = None,
        concurrency: int | None = None,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.kind = kind
        self.name = name
        self.workflow = workflow
        self.concurrency = concurrency
        self.settings = dict(settings or {})
        self.calls = 0
        self.errors = 0
        self.timeouts = 0
        self.in_flight = 0
        self.retries = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cost_usd = 0.0
        self.duration = Pow2Histogram()

    def __repr__(self) -> str:
        return f"<ComponentFigures {self.kind} {self.name!r} calls={self.calls} errors={self.errors}>"

    def observe(self, duration_s: float, outcome: str = "ok") -> None:
        self.calls += 1
        self.duration.observe(duration_s)
        if outcome not in _OK:
            self.errors += 1
            if outcome in _TIMEOUTS:
                self.timeouts += 1

    def add_usage(self, prompt_tokens: int, completion_tokens: int, cost_usd: float) -> None:
        """Count LLM usage of a call (a workflow step's, say)."""
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.cost_usd += cost_usd

    def sample(self) -> ComponentSample:
        return ComponentSample(
            kind=self.kind,
            name=self.name,
            workflow=self.workflow,
            calls=self.calls,
            errors=self.errors,
            timeouts=self.timeouts,
            retries=self.retries,
            duration=HistSample.of(self.duration),
            concurrency=self.concurrency,
            in_flight=self.in_flight,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cost_usd=self.cost_usd,
            settings=dict(self.settings),
        )
