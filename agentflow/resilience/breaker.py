"""Circuit breakers with resilience4j semantics, for asyncio.

A breaker watches the outcomes of recent calls in a sliding window (the last N calls, or the last N seconds)
and opens when, after at least ``minimum_calls``, the share of failed calls or of slow calls reaches its
threshold. While OPEN it refuses calls at once with :class:`~agentflow.errors.CircuitOpenError`; after the open
wait it lets ``half_open_max_calls`` probe calls through (HALF_OPEN). If the probes stay under the thresholds
it closes; otherwise it opens again, each time waiting ``open_wait_multiplier`` times longer (up to
``max_open_wait_s``). FORCED_OPEN and DISABLED are manual states that only :meth:`CircuitBreaker.reset` leaves.

A permit is taken on entry and given back exactly once on exit, whatever happens: a cancelled call (shutdown,
a caller that gave up) is not counted, and its half-open probe permit goes back, so a half-open breaker can
never be wedged by calls that never finished.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Annotated, Literal, TypeVar

import msgspec

from ..errors import CircuitOpenError
from ..metrics import BreakerMetrics, Metrics

__all__ = [
    "BreakerConfig",
    "BreakerPermit",
    "BreakerRegistry",
    "BreakerState",
    "BreakerStatistics",
    "CircuitBreaker",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_BREAKER_WINDOW_SIZE = 100
DEFAULT_BREAKER_MINIMUM_CALLS = 20
DEFAULT_BREAKER_FAILURE_RATE = 0.5
DEFAULT_BREAKER_SLOW_CALL_DURATION_S = 30.0
DEFAULT_BREAKER_SLOW_CALL_RATE = 1.0
DEFAULT_BREAKER_OPEN_WAIT_S = 30.0
DEFAULT_BREAKER_OPEN_WAIT_MULTIPLIER = 2.0
DEFAULT_BREAKER_MAX_OPEN_WAIT_S = 300.0
DEFAULT_BREAKER_HALF_OPEN_MAX_CALLS = 5
DEFAULT_BREAKER_MAX_BREAKERS = 1000

_Rate = Annotated[float, msgspec.Meta(gt=0, le=1)]


class BreakerState(enum.Enum):
    """A breaker's state; the values are the ``state`` label of ``agentflow_breaker_state``."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"


class BreakerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How a :class:`CircuitBreaker` decides (resilience4j's settings, in seconds)::

        BreakerConfig(window_type="time", window_size=60, minimum_calls=10, failure_rate_threshold=0.3)

    ``window_size`` counts calls for ``window_type="count"`` and seconds for ``"time"``. Rates are fractions:
    ``0.5`` opens the breaker when half the calls in the window failed.
    """

    window_type: Literal["count", "time"] = "count"
    window_size: Annotated[int, msgspec.Meta(ge=1)] = DEFAULT_BREAKER_WINDOW_SIZE
    minimum_calls: Annotated[int, msgspec.Meta(ge=1)] = DEFAULT_BREAKER_MINIMUM_CALLS
    failure_rate_threshold: _Rate = DEFAULT_BREAKER_FAILURE_RATE
    slow_call_duration_s: Annotated[float, msgspec.Meta(gt=0)] = DEFAULT_BREAKER_SLOW_CALL_DURATION_S
    slow_call_rate_threshold: _Rate = DEFAULT_BREAKER_SLOW_CALL_RATE
    open_wait_s: Annotated[float, msgspec.Meta(ge=0)] = DEFAULT_BREAKER_OPEN_WAIT_S
    open_wait_multiplier: Annotated[float, msgspec.Meta(ge=1)] = DEFAULT_BREAKER_OPEN_WAIT_MULTIPLIER
    max_open_wait_s: Annotated[float, msgspec.Meta(ge=0)] = DEFAULT_BREAKER_MAX_OPEN_WAIT_S
    half_open_max_calls: Annotated[int, msgspec.Meta(ge=1)] = DEFAULT_BREAKER_HALF_OPEN_MAX_CALLS

    def __post_init__(self) -> None:
        # msgspec checks Meta constraints only when decoding; direct construction is checked here.
        problems = []
        if self.window_type not in ("count", "time"):
            problems.append(f"window_type must be 'count' or 'time', not {self.window_type!r}")
        for field in ("window_size", "minimum_calls", "half_open_max_calls"):
            if getattr(self, field) < 1:
                problems.append(f"{field} must be at least 1")
        for field in ("failure_rate_threshold", "slow_call_rate_threshold"):
            if not 0 < getattr(self, field) <= 1:
                problems.append(f"{field} must be a fraction in (0, 1]")
        if self.slow_call_duration_s <= 0:
            problems.append("slow_call_duration_s must be greater than 0")
        if self.open_wait_s < 0 or self.max_open_wait_s < self.open_wait_s:
            problems.append("open_wait_s must be at least 0 and at most max_open_wait_s")
        if self.open_wait_multiplier < 1:
            problems.append("open_wait_multiplier must be at least 1")
        if problems:
            raise ValueError("Invalid BreakerConfig: " + "; ".join(problems) + ".")


class BreakerStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of one breaker: its state, its window, and counts since it was made."""

    name: str
    state: str
    window_calls: int
    window_failures: int
    window_slow: int
    failure_rate: float
    slow_call_rate: float
    probes_in_flight: int
    open_count: int
    retry_after_s: float | None
    successes: int
    failures: int
    ignored: int
    rejected: int
    cancelled: int
    slow: int
    transitions: int


class _CountWindow:
    """The outcomes of the last ``size`` calls, with running totals."""

    __slots__ = ("calls", "failed", "ring", "slow")

    def __init__(self, size: int) -> None:
        self.ring: deque[tuple[bool, bool]] = deque(maxlen=size)
        self.calls = self.failed = self.slow = 0

    def record(self, failed: bool, slow: bool, now: float) -> None:
        ring = self.ring
        if len(ring) == ring.maxlen:
            old_failed, old_slow = ring[0]
            self.calls -= 1
            self.failed -= old_failed
            self.slow -= old_slow
        ring.append((failed, slow))
        self.calls += 1
        self.failed += failed
        self.slow += slow

    def expire(self, now: float) -> None:
        pass

    def clear(self) -> None:
        self.ring.clear()
        self.calls = self.failed = self.slow = 0


class _TimeWindow:
    """Outcomes of the last ``size`` seconds, in one-second buckets ``[second, calls, failed, slow]``."""

    __slots__ = ("buckets", "calls", "failed", "size", "slow")

    def __init__(self, size: int) -> None:
        self.size = size
        self.buckets: deque[list[int]] = deque()
        self.calls = self.failed = self.slow = 0

    def record(self, failed: bool, slow: bool, now: float) -> None:
        self.expire(now)
        second = int(now)
        b = self.buckets
        if not b or b[-1][0] != second:
            b.append([second, 0, 0, 0])
        last = b[-1]
        last[1] += 1
        last[2] += failed
        last[3] += slow
        self.calls += 1
        self.failed += failed
        self.slow += slow

    def expire(self, now: float) -> None:
        oldest = int(now) - self.size  # buckets at or before this second have left the window
        b = self.buckets
        while b and b[0][0] <= oldest:
            _, calls, failed, slow = b.popleft()
            self.calls -= calls
            self.failed -= failed
            self.slow -= slow

    def clear(self) -> None:
        self.buckets.clear()
        self.calls = self.failed = self.slow = 0


class BreakerPermit:
    """One call's permission; report its outcome once with :meth:`success`, :meth:`failure` or :meth:`cancel`.

    Later reports are ignored, so a permit can be given back in ``finally`` without double counting. Also an
    async context manager that reports for you (``async with breaker.acquire(): ...``).
    """

    __slots__ = ("_breaker", "_done", "epoch", "probe", "start")

    def __init__(self, breaker: CircuitBreaker, epoch: int, probe: bool, start: float) -> None:
        self._breaker = breaker
        self.epoch = epoch
        self.probe = probe
        self.start = start
        self._done = False

    def success(self) -> None:
        if not self._done:
            self._done = True
            self._breaker._record(self, None)

    def failure(self, exc: BaseException) -> None:
        """Record ``exc``; whether it counts as a failure is the breaker's ``is_failure``'s call."""
        if not self._done:
            self._done = True
            self._breaker._record(self, exc)

    def cancel(self) -> None:
        """Give the permit back without counting the call (it never finished)."""
        if not self._done:
            self._done = True
            self._breaker._release(self)

    async def __aenter__(self) -> BreakerPermit:
        return self

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            self.success()
        elif isinstance(exc, Exception):
            self.failure(exc)
        else:
            self.cancel()  # CancelledError, KeyboardInterrupt: the call has no outcome


def _always(exc: BaseException) -> bool:
    return True


def _never(exc: BaseException) -> bool:
    return False


class CircuitBreaker:
    """A circuit breaker; use it as an async context manager, or wrap a call::

        breaker = CircuitBreaker("openai/gpt-4o", BreakerConfig(minimum_calls=10))
        async with breaker:               # raises CircuitOpenError while open
            reply = await call_the_llm()
        reply = await breaker.call(lambda: call_the_llm())

    ``is_failure(exc)`` says which exceptions count as failures (default: every ``Exception``); the others
    count as successes (the upstream answered). ``is_ignored(exc)`` exceptions count as neither. A cancelled
    call counts as nothing and gives its permit back. ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        name: str,
        config: BreakerConfig | None = None,
        *,
        is_failure: Callable[[BaseException], bool] | None = None,
        is_ignored: Callable[[BaseException], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_transition: Callable[[str, BreakerState, BreakerState], None] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.name = name
        self.config = cfg = config if config is not None else BreakerConfig()
        self._is_failure = is_failure or _always
        self._is_ignored = is_ignored or _never
        self._clock = clock
        self._on_transition = on_transition
        self._m: BreakerMetrics = metrics.breaker(name) if metrics is not None else BreakerMetrics(name)
        self._window: _CountWindow | _TimeWindow = (
            _CountWindow(cfg.window_size) if cfg.window_type == "count" else _TimeWindow(cfg.window_size)
        )
        # minimum_calls above a count window's size could never be reached; resilience4j caps it the same way.
        self._minimum = min(cfg.minimum_calls, cfg.window_size) if cfg.window_type == "count" else cfg.minimum_calls
        self._slow_s = cfg.slow_call_duration_s
        self._state = BreakerState.CLOSED
        self._m.state = self._state.value
        self._epoch = 0  # bumped on every transition: outcomes of permits from an earlier state are not counted
        self._open_until = 0.0
        self._open_count = 0  # consecutive openings without closing: the exponent of the open-wait backoff
        self._probes_in_flight = 0
        self._probe_calls = self._probe_failed = self._probe_slow = 0
        self._transitions = 0
        self._entered: dict[asyncio.Task[object] | None, list[BreakerPermit]] = {}

    # ---- state ---------------------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        self._refresh(self._clock())
        return self._state

    def _refresh(self, now: float) -> None:
        if self._state is BreakerState.OPEN and now >= self._open_until:
            self._transition(BreakerState.HALF_OPEN, now)

    def _transition(self, new: BreakerState, now: float, wait_s: float = 0.0, why: str = "") -> None:
        old = self._state
        self._state = new
        self._epoch += 1
        self._transitions += 1
        m = self._m
        m.state = new.value
        m.transitions[(old.value, new.value)] = m.transitions.get((old.value, new.value), 0) + 1
        self._probes_in_flight = self._probe_calls = self._probe_failed = self._probe_slow = 0
        if new is BreakerState.OPEN:
            self._open_until = now + wait_s
            logger.warning("Circuit breaker %r opened (%s -> open) for %.3g s: %s", self.name, old.value, wait_s, why)
        elif new is BreakerState.FORCED_OPEN:
            logger.warning("Circuit breaker %r forced open (%s -> forced_open)", self.name, old.value)
        else:
            logger.info("Circuit breaker %r: %s -> %s", self.name, old.value, new.value)
        if new is BreakerState.CLOSED or new is BreakerState.DISABLED:
            self._window.clear()
            self._open_count = 0
        if self._on_transition is not None:
            try:
                self._on_transition(self.name, old, new)
            except Exception:
                logger.exception("on_transition callback of circuit breaker %r failed", self.name)

    def _open_wait(self) -> float:
        cfg = self.config
        return float(min(cfg.max_open_wait_s, cfg.open_wait_s * cfg.open_wait_multiplier ** (self._open_count - 1)))

    def retry_after_s(self) -> float | None:
        """Seconds until a probe may go through: 0 when calls are allowed, None when unknown (forced open)."""
        now = self._clock()
        self._refresh(now)
        st = self._state
        if st is BreakerState.OPEN:
            return max(0.0, self._open_until - now)
        if st is BreakerState.FORCED_OPEN:
            return None
        if st is BreakerState.HALF_OPEN and not self._probe_room():
            return None  # every probe permit is out; when they come back is not known
        return 0.0

    def _probe_room(self) -> bool:
        # Permits per half-open period: the probes running plus those already judged.
        return self._probes_in_flight + self._probe_calls < self.config.half_open_max_calls

    # ---- calls -----------------------------------------------------------------------------------------

    def acquire(self) -> BreakerPermit:
        """Take a permit for one call, or raise :class:`CircuitOpenError` at once; report the outcome on it."""
        now = self._clock()
        st = self._state
        if st is BreakerState.CLOSED:  # the common case first: nothing to refresh
            return BreakerPermit(self, self._epoch, False, now)
        self._refresh(now)
        st = self._state
        if st is BreakerState.DISABLED:
            return BreakerPermit(self, self._epoch, False, now)
        if st is BreakerState.HALF_OPEN and self._probe_room():
            self._probes_in_flight += 1
            return BreakerPermit(self, self._epoch, True, now)
        self._m.calls["rejected"] += 1
        after = self.retry_after_s()
        if after is None:
            hint = "reset it to let calls through" if st is BreakerState.FORCED_OPEN else "try again shortly"
        else:
            hint = f"retry in {after:.3g} s"
        raise CircuitOpenError(
            f"Circuit breaker {self.name!r} is {st.value} and refused the call; {hint}.",
            name=self.name,
            state=st.value,
            retry_after_s=after,
        )

    def _release(self, permit: BreakerPermit) -> None:
        self._m.calls["cancelled"] += 1
        if permit.probe and permit.epoch == self._epoch:
            self._probes_in_flight -= 1

    def _record(self, permit: BreakerPermit, exc: BaseException | None) -> None:
        now = self._clock()
        m = self._m
        slow = now - permit.start > self._slow_s
        if exc is None and not permit.probe and permit.epoch == self._epoch and self._state is BreakerState.CLOSED:
            # The common case, a success while closed: it lowers the failure rate, so it can open the breaker
            # only through the slow-call rate, or when an earlier failure is still in the window.
            m.calls["success"] += 1
            w = self._window
            w.record(False, slow, now)
            if slow:
                m.slow += 1
            elif not w.failed and not w.slow:
                return
            if w.calls >= self._minimum and self._over(w.failed, w.slow, w.calls):
                self._open_count = 1
                why = f"{w.failed} of the last {w.calls} calls failed, {w.slow} were slow"
                self._transition(BreakerState.OPEN, now, self._open_wait(), why)
            return
        if exc is not None and self._is_ignored(exc):
            m.calls["ignored"] += 1
            if permit.probe and permit.epoch == self._epoch:
                self._probes_in_flight -= 1  # an ignored probe tells nothing: its permit goes back
            return
        failed = exc is not None and self._is_failure(exc)
        m.calls["failure" if failed else "success"] += 1
        m.slow += slow
        if permit.epoch != self._epoch:
            return  # taken in an earlier state (say CLOSED, and the breaker opened since): not this state's business
        st = self._state
        if permit.probe:
            self._probes_in_flight -= 1
            self._probe_calls += 1
            self._probe_failed += failed
            self._probe_slow += slow
            self._judge_probes(now)
        elif st is BreakerState.CLOSED:
            w = self._window
            w.record(failed, slow, now)
            if w.calls >= self._minimum and self._over(w.failed, w.slow, w.calls):
                self._open_count = 1
                why = f"{w.failed} of the last {w.calls} calls failed, {w.slow} were slow"
                self._transition(BreakerState.OPEN, now, self._open_wait(), why)

    def _over(self, failed: int, slow: int, calls: int) -> bool:
        cfg = self.config
        return failed >= cfg.failure_rate_threshold * calls or slow >= cfg.slow_call_rate_threshold * calls

    def _judge_probes(self, now: float) -> None:
        n = self.config.half_open_max_calls
        # Reopen as soon as the failed probes alone reach the threshold over all n; close once all n are in.
        if self._over(self._probe_failed, self._probe_slow, n):
            self._open_count += 1
            why = f"{self._probe_failed} of {n} probes failed, {self._probe_slow} were slow"
            self._transition(BreakerState.OPEN, now, self._open_wait(), why)
        elif self._probe_calls >= n:
            self._transition(BreakerState.CLOSED, now)

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``await fn()`` inside the breaker and return its result."""
        permit = self.acquire()
        try:
            result = await fn()
        except Exception as exc:
            permit.failure(exc)
            raise
        except BaseException:
            permit.cancel()
            raise
        permit.success()
        return result

    async def __aenter__(self) -> CircuitBreaker:
        permit = self.acquire()
        # Several tasks may be inside one breaker at once: each task's permits stack up under it.
        self._entered.setdefault(asyncio.current_task(), []).append(permit)
        return self

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        task = asyncio.current_task()
        stack = self._entered[task]
        permit = stack.pop()
        if not stack:
            del self._entered[task]
        await permit.__aexit__(exc_type, exc, tb)

    # ---- manual control ----------------------------------------------------------------------------------

    def open_for(self, seconds: float) -> None:
        """Refuse calls for ``seconds`` (a 429 with Retry-After), then probe as usual.

        Never shortens an open wait already running; does nothing while forced open or disabled.
        """
        now = self._clock()
        self._refresh(now)
        st = self._state
        if st is BreakerState.FORCED_OPEN or st is BreakerState.DISABLED:
            return
        seconds = max(0.0, float(seconds))
        if st is BreakerState.OPEN:
            self._open_until = max(self._open_until, now + seconds)
        else:
            self._transition(BreakerState.OPEN, now, seconds, "open_for() was called (a Retry-After, say)")

    def force_open(self) -> None:
        """Refuse every call until :meth:`reset`."""
        if self._state is not BreakerState.FORCED_OPEN:
            self._transition(BreakerState.FORCED_OPEN, self._clock())

    def disable(self) -> None:
        """Let every call through and record nothing, until :meth:`reset`."""
        if self._state is not BreakerState.DISABLED:
            self._transition(BreakerState.DISABLED, self._clock())

    def reset(self) -> None:
        """Back to CLOSED with an empty window and no backoff."""
        if self._state is not BreakerState.CLOSED:
            self._transition(BreakerState.CLOSED, self._clock())
        else:
            self._window.clear()
            self._open_count = 0

    # ---- introspection -------------------------------------------------------------------------------

    def statistics(self) -> BreakerStatistics:
        now = self._clock()
        self._refresh(now)
        w = self._window
        w.expire(now)
        m = self._m
        return BreakerStatistics(
            name=self.name,
            state=self._state.value,
            window_calls=w.calls,
            window_failures=w.failed,
            window_slow=w.slow,
            failure_rate=w.failed / w.calls if w.calls else 0.0,
            slow_call_rate=w.slow / w.calls if w.calls else 0.0,
            probes_in_flight=self._probes_in_flight,
            open_count=self._open_count,
            retry_after_s=self.retry_after_s(),
            successes=m.calls["success"],
            failures=m.calls["failure"],
            ignored=m.calls["ignored"],
            rejected=m.calls["rejected"],
            cancelled=m.calls["cancelled"],
            slow=m.slow,
            transitions=self._transitions,
        )

    def __repr__(self) -> str:
        s = self.statistics()
        return (
            f"<CircuitBreaker {self.name!r} state={s.state} window={s.window_failures}/{s.window_calls} failed "
            f"probes={s.probes_in_flight} rejected={s.rejected}>"
        )


class BreakerRegistry:
    """Breakers by key, made on first use with one config; an LLM client keys them by (provider, model)::

        breakers = BreakerRegistry(BreakerConfig(minimum_calls=10), metrics=runner.metrics)
        async with breakers.get("openai", "gpt-4o"):
            ...

    The key parts are joined with ``/`` into the breaker's name (its metrics label). At most ``max_breakers``
    are kept, so keys taken from data cannot grow the registry (and the metrics) without bound.
    """

    def __init__(
        self,
        config: BreakerConfig | None = None,
        *,
        is_failure: Callable[[BaseException], bool] | None = None,
        is_ignored: Callable[[BaseException], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_transition: Callable[[str, BreakerState, BreakerState], None] | None = None,
        metrics: Metrics | None = None,
        max_breakers: int = DEFAULT_BREAKER_MAX_BREAKERS,
    ) -> None:
        self.config = config if config is not None else BreakerConfig()
        self._is_failure = is_failure
        self._is_ignored = is_ignored
        self._clock = clock
        self._on_transition = on_transition
        self._metrics = metrics
        self.max_breakers = max_breakers
        self._breakers: dict[str, CircuitBreaker] = {}

    def get(self, *key: str) -> CircuitBreaker:
        name = "/".join(key)
        b = self._breakers.get(name)
        if b is None:
            if len(self._breakers) >= self.max_breakers:
                raise ValueError(
                    f"BreakerRegistry already holds max_breakers={self.max_breakers} breakers; key {name!r} would "
                    "add one more. Key breakers by provider and model, not by data, or raise max_breakers."
                )
            b = self._breakers[name] = CircuitBreaker(
                name,
                self.config,
                is_failure=self._is_failure,
                is_ignored=self._is_ignored,
                clock=self._clock,
                on_transition=self._on_transition,
                metrics=self._metrics,
            )
        return b

    def __len__(self) -> int:
        return len(self._breakers)

    def statistics(self) -> dict[str, BreakerStatistics]:
        return {name: b.statistics() for name, b in self._breakers.items()}

    def __repr__(self) -> str:
        states: dict[str, int] = {}
        for b in self._breakers.values():
            states[b.state.value] = states.get(b.state.value, 0) + 1
        shown = " ".join(f"{k}={v}" for k, v in sorted(states.items()))
        return f"<BreakerRegistry breakers={len(self._breakers)} {shown}>".replace(" >", ">")
