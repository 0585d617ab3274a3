"""A rate limiter for requests and tokens per minute, where callers over the limit queue instead of failing.

The limit is a sliding window: in any ``period_s`` (60 s by default) at most ``rpm`` calls are granted and at
most ``tpm`` tokens charged. A token bucket would let a full bucket through at once and then the refill, up to
twice the limit in one minute; providers count per sliding minute, so this counts the same way and the limit
holds exactly.

Waiters form one queue in priority order (lower number first, FIFO within a priority). Only the head may be
granted, so a large request is not starved by a stream of small ones behind it. No background task: a single
timer, armed for the moment the head fits, grants what fits and re-arms itself.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable

import msgspec

from ..errors import LifecycleError, RateLimitQueueFullError, RateLimitTooLargeError
from ..lifecycle import Lifecycle
from ..metrics import LimiterMetrics, Metrics

__all__ = ["RateLimiter", "RateLimiterStatistics"]

DEFAULT_RATE_LIMIT_PERIOD_S = 60.0
DEFAULT_RATE_LIMIT_MAX_QUEUE = 1000


class RateLimiterStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot: limits, use of the current window, the queue, and counts since the limiter was made."""

    name: str
    rpm: float | None
    tpm: float | None
    period_s: float
    window_requests: int
    window_tokens: int
    queued: int
    max_queue: int
    granted: int
    rejected: int
    cancelled: int
    mean_wait_s: float


class _Grant:
    """One charge in the window: ``[time, requests, tokens]``; a cancelled grant is zeroed, not removed."""

    __slots__ = ("at", "requests", "tokens")

    def __init__(self, at: float, requests: int, tokens: int) -> None:
        self.at = at
        self.requests = requests
        self.tokens = tokens


class RateLimiter(Lifecycle):
    """Requests-per-minute and tokens-per-minute limits together; callers queue in priority order::

        limiter = RateLimiter(rpm=500, tpm=200_000, name="openai/gpt-4o")
        await limiter.acquire(tokens=estimate)      # waits while over either limit
        reply = await call_the_llm()
        limiter.adjust(reply.usage.total_tokens - estimate)

    ``acquire`` raises :class:`~agentflow.errors.RateLimitQueueFullError` when ``max_queue`` callers already
    wait, and :class:`~agentflow.errors.RateLimitTooLargeError` when ``tokens`` alone exceed ``tpm``. A waiter
    that is cancelled leaves the queue and consumes nothing. ``None`` for a limit means unlimited.
    ``period_s`` is the window ``rpm`` and ``tpm`` count over (a minute; shorter in tests).
    """

    started_when_created = True  # usable from construction; aclose fails the waiting calls

    def __init__(
        self,
        *,
        rpm: float | None = None,
        tpm: float | None = None,
        max_queue: int = DEFAULT_RATE_LIMIT_MAX_QUEUE,
        clock: Callable[[], float] = time.monotonic,
        name: str = "",
        period_s: float = DEFAULT_RATE_LIMIT_PERIOD_S,
        metrics: Metrics | None = None,
    ) -> None:
        if rpm is not None and rpm < 1:
            raise ValueError(f"rpm must be at least 1 (or None for no request limit), not {rpm!r}.")
        if tpm is not None and tpm < 1:
            raise ValueError(f"tpm must be at least 1 (or None for no token limit), not {tpm!r}.")
        if max_queue < 0:
            raise ValueError(f"max_queue must be 0 or more, not {max_queue!r}.")
        if period_s <= 0:
            raise ValueError(f"period_s must be greater than 0, not {period_s!r}.")
        self.name = name
        self.rpm = rpm
        self.tpm = tpm
        self.max_queue = max_queue
        self.period_s = period_s
        self._clock = clock
        self._m: LimiterMetrics = metrics.rate_limiter(name) if metrics is not None else LimiterMetrics(name)
        self._log: deque[_Grant] = deque()
        self._requests = 0
        self._tokens = 0
        # (priority, sequence, future, tokens, enqueued at); cancelled entries stay until they reach the head.
        self._heap: list[tuple[int, int, asyncio.Future[_Grant], int, float]] = []
        self._seq = itertools.count()
        self._queued = 0
        self._granted = 0
        self._cancelled = 0
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    # ---- the window ------------------------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        horizon = now - self.period_s
        log = self._log
        while log and log[0].at <= horizon:
            g = log.popleft()
            self._requests -= g.requests
            self._tokens -= g.tokens

    def _fits(self, tokens: int) -> bool:
        if self.rpm is not None and self._requests + 1 > self.rpm:
            return False
        return self.tpm is None or self._tokens + tokens <= self.tpm

    def _charge(self, now: float, tokens: int) -> _Grant:
        g = _Grant(now, 1, tokens)
        self._log.append(g)
        self._requests += 1
        self._tokens += tokens
        self._granted += 1
        return g

    def _ready_at(self, tokens: int) -> float:
        """When enough of the window will have expired for a call of ``tokens`` to fit (window expired first)."""
        need_requests = self._requests + 1 - self.rpm if self.rpm is not None else 0
        need_tokens = self._tokens + tokens - self.tpm if self.tpm is not None else 0
        at = 0.0
        for g in self._log:
            if need_requests <= 0 and need_tokens <= 0:
                break
            need_requests -= g.requests
            need_tokens -= g.tokens
            at = g.at
        return at + self.period_s

    def _check(self, tokens: int) -> None:
        if self._closed:
            raise LifecycleError(f"Rate limiter {self.name!r} is closed; create a new one.")
        if tokens < 0:
            raise ValueError(f"tokens must be 0 or more, not {tokens!r}.")
        if self.tpm is not None and tokens > self.tpm:
            raise RateLimitTooLargeError(
                f"A call of {tokens} tokens can never fit rate limiter {self.name!r}'s tpm={self.tpm:g}; "
                "split the request or raise tpm."
            )

    # ---- acquiring ---------------------------------------------------------------------------------------

    def try_acquire(self, tokens: int = 1) -> bool:
        """Take capacity now if it is free and nobody waits; never queues."""
        return self._try(tokens) is not None

    def _try(self, tokens: int) -> _Grant | None:
        self._check(tokens)
        now = self._clock()
        self._expire(now)
        if self._queued or not self._fits(tokens):
            return None
        g = self._charge(now, tokens)
        self._m.wait.observe(0.0)
        return g

    async def acquire(self, tokens: int = 1, *, priority: int = 0) -> _Grant:
        """Wait until a call of ``tokens`` fits both limits, behind callers of a lower ``priority`` number.

        Returns the grant; :meth:`refund` it if the call is then not sent after all.
        """
        g = self._try(tokens)
        if g is not None:
            return g
        if self._queued >= self.max_queue:
            self._m.rejected += 1
            raise RateLimitQueueFullError(
                f"Rate limiter {self.name!r} already has max_queue={self.max_queue} callers waiting; the call "
                "was not queued. Slow down, or raise max_queue."
            )
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[_Grant] = loop.create_future()
        t0 = self._clock()
        heapq.heappush(self._heap, (priority, next(self._seq), fut, tokens, t0))
        self._queued += 1
        self._m.queued = self._queued
        if self._heap[0][2] is fut:
            self._pump()  # a new head: arm the timer for it
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._refund(fut.result())  # granted, but the caller is gone: the capacity goes back
            elif not fut.done():
                fut.cancel()
            self._cancelled += 1
            if not (fut.done() and not fut.cancelled()):
                self._queued -= 1
                self._m.queued = self._queued
            self._pump()
            raise

    def refund(self, grant: _Grant) -> None:
        """Give back a grant whose call was not sent (say, an open breaker refused it): its request and tokens
        leave the window now, and waiters may go through. A second refund of the same grant does nothing."""
        if grant.requests or grant.tokens:
            self._refund(grant)
            if self._queued:
                self._pump()

    def _refund(self, g: _Grant) -> None:
        self._requests -= g.requests
        self._tokens -= g.tokens
        g.requests = g.tokens = 0
        self._granted -= 1

    def _pump(self) -> None:
        """Grant from the head of the queue while it fits; arm the timer for the next head."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        now = self._clock()
        self._expire(now)
        heap = self._heap
        while heap:
            _, _, fut, tokens, t0 = heap[0]
            if fut.done():  # cancelled while waiting: already uncounted
                heapq.heappop(heap)
                continue
            if not self._fits(tokens):
                break
            heapq.heappop(heap)
            fut.set_result(self._charge(now, tokens))
            self._queued -= 1
            self._m.wait.observe(now - t0)
        self._m.queued = self._queued
        if heap and not self._closed:
            delay = max(0.0, self._ready_at(heap[0][3]) - now)
            self._timer = asyncio.get_running_loop().call_later(delay, self._pump)

    def adjust(self, tokens_delta: int) -> None:
        """Correct the last estimate once the real usage is known.

        More tokens are charged now (and leave the window a period from now); fewer take tokens back from the
        most recent charges, never below zero, and may let waiters through at once.
        """
        if tokens_delta > 0:
            self._log.append(_Grant(self._clock(), 0, tokens_delta))
            self._tokens += tokens_delta
        elif tokens_delta < 0:
            back = -tokens_delta
            for g in reversed(self._log):
                if back <= 0:
                    break
                take = min(back, g.tokens)
                g.tokens -= take
                self._tokens -= take
                back -= take
            if self._queued:
                self._pump()

    # ---- lifecycle and introspection -----------------------------------------------------------------------

    async def _close(self) -> None:
        """Refuse new calls and fail the waiting ones with LifecycleError."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._heap:
            _, _, fut, _, _ = heapq.heappop(self._heap)
            if not fut.done():
                fut.set_exception(LifecycleError(f"Rate limiter {self.name!r} closed while this call waited."))
        self._queued = 0
        self._m.queued = 0

    def statistics(self) -> RateLimiterStatistics:
        self._expire(self._clock())
        w = self._m.wait
        return RateLimiterStatistics(
            name=self.name,
            rpm=self.rpm,
            tpm=self.tpm,
            period_s=self.period_s,
            window_requests=self._requests,
            window_tokens=self._tokens,
            queued=self._queued,
            max_queue=self.max_queue,
            granted=self._granted,
            rejected=self._m.rejected,
            cancelled=self._cancelled,
            mean_wait_s=w.sum / w.count if w.count else 0.0,
        )

    def __repr__(self) -> str:
        s = self.statistics()
        rpm = "-" if s.rpm is None else f"{s.window_requests}/{s.rpm:g}"
        tpm = "-" if s.tpm is None else f"{s.window_tokens}/{s.tpm:g}"
        return f"<RateLimiter {s.name!r} rpm={rpm} tpm={tpm} queued={s.queued}/{s.max_queue} granted={s.granted}>"
