"""A micro-batcher: concurrent single requests coalesced into one upstream call.

Embeddings and list-prompt completions cost about the same for one input as for thirty-two, so callers that
arrive together are sent together. When no batch is in flight, what is pending goes out at the end of the
current loop iteration: a lone caller never waits, and callers submitting in the same iteration still share a
call. While a batch is in flight, items wait for the next batch, which goes out when it is full
(``max_batch_size``, or ``max_batch_tokens``), when the batches in flight have all come back, when its oldest
item has waited ``max_wait_ms``, or earlier when a caller's deadline needs it, whichever comes first: the upstream
call's own duration sets the batch size, as in group commit. Each caller gets its own result back; a failed
dispatch fails only the callers of that batch, with the dispatch's own exception.

Adaptive mode tunes the wait of items that arrive while a batch is in flight (AIMD): a batch that gained nothing
by waiting halves it; a batch that gained items while meeting ``target_latency_ms`` adds a step, so under load
the wait grows toward ``max_wait_ms`` and batches fill.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import msgspec

from ..errors import BatchError, BatchItemTooLargeError, LifecycleError
from ..lifecycle import Lifecycle
from ..metrics import BatcherMetrics, Metrics

__all__ = ["BatcherStatistics", "MicroBatcher"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_MAX_WAIT_MS = 5.0
#: Adaptive mode: the wait grows by this share of ``max_wait_ms`` per good batch, and halves per useless one.
_AIMD_STEP = 0.125
_AIMD_DECREASE = 0.5
#: Weight of the newest dispatch duration in the running estimate used to flush ahead of a deadline.
_EWMA = 0.2
_REASONS = ("size", "tokens", "idle", "time", "deadline", "close")


class BatcherStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot: what waits now, and what went out since the batcher was made."""

    name: str
    pending: int
    batches_in_flight: int
    batches: int
    items: int
    cancelled: int
    failed_batches: int
    mean_batch_size: float
    mean_fill_ratio: float
    mean_queue_wait_s: float
    batch_size_histogram: tuple[tuple[int, int], ...]  # (upper bound in items, batches), last bound 0 = above
    flushes: dict[str, int]
    current_wait_ms: float


class _Pending(Generic[T, R]):
    __slots__ = ("deadline", "fut", "item", "submitted", "tokens")

    def __init__(self, item: T, tokens: int, fut: asyncio.Future[R], submitted: float, deadline: float | None):
        self.item = item
        self.tokens = tokens
        self.fut = fut
        self.submitted = submitted
        self.deadline = deadline


class MicroBatcher(Lifecycle, Generic[T, R]):
    """Coalesce concurrent ``submit`` calls into calls of ``dispatch(items) -> results`` (same order)::

        async def embed(texts: list[str]) -> list[list[float]]:
            return await client.embeddings(texts)

        async with MicroBatcher(embed, max_batch_size=32, max_wait_ms=5) as batcher:
            vector = await batcher.submit("hello", tokens=2)

    ``deadline`` is a ``loop.time()`` by which the caller needs its answer: the batch goes out early enough,
    by the running estimate of dispatch time, to meet it. A caller cancelled before its batch goes out is
    left out of it. ``aclose()`` sends what is pending and waits for batches in flight.
    """

    started_when_created = True  # usable from construction; aclose flushes what it holds

    def __init__(
        self,
        dispatch: Callable[[list[T]], Awaitable[Sequence[R]]],
        *,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
        max_batch_tokens: int | None = None,
        adaptive: bool = False,
        target_latency_ms: float | None = None,
        name: str = "",
        metrics: Metrics | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, not {max_batch_size!r}.")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be 0 or more, not {max_wait_ms!r}.")
        if max_batch_tokens is not None and max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be at least 1 (or None), not {max_batch_tokens!r}.")
        if target_latency_ms is not None and target_latency_ms <= 0:
            raise ValueError(f"target_latency_ms must be greater than 0 (or None), not {target_latency_ms!r}.")
        self._dispatch = dispatch
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_wait_ms = max_wait_ms
        self.max_batch_tokens = max_batch_tokens
        self.adaptive = adaptive
        self.target_latency_ms = target_latency_ms
        self._m: BatcherMetrics = metrics.batcher(name) if metrics is not None else BatcherMetrics(name)
        # Adaptive mode starts at no wait: items submitted in the same loop iteration still share a batch.
        self._wait_s = 0.0 if adaptive else max_wait_ms / 1000
        self._pending: list[_Pending[T, R]] = []
        self._pending_tokens = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._timer_reason = "time"
        self._idle: asyncio.Handle | None = None  # the end-of-iteration flush, while nothing is in flight
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._dispatch_s = 0.0  # running estimate of one dispatch's duration
        self._closed = False
        self._close_timeout_s: float | None = None
        self._batches = 0
        self._items = 0
        self._cancelled = 0
        self._failed = 0
        self._flushes = dict.fromkeys(_REASONS, 0)

    # ---- submitting --------------------------------------------------------------------------------------

    async def submit(self, item: T, *, tokens: int = 0, deadline: float | None = None) -> R:
        """Add ``item`` to the next batch and return its result (or raise the batch's exception)."""
        if self._closed:
            raise LifecycleError(f"MicroBatcher {self.name!r} is closed; submit before closing it.")
        limit = self.max_batch_tokens
        if limit is not None and tokens > limit:
            raise BatchItemTooLargeError(
                f"An item of {tokens} tokens is over MicroBatcher {self.name!r}'s max_batch_tokens={limit}; "
                "split it or raise max_batch_tokens."
            )
        loop = asyncio.get_running_loop()
        if limit is not None and self._pending_tokens + tokens > limit:
            self._flush("tokens")  # this item would overflow the token budget: send what is there first
        fut: asyncio.Future[R] = loop.create_future()
        now = loop.time()
        p = _Pending(item, tokens, fut, now, deadline)
        self._pending.append(p)
        self._pending_tokens += tokens
        if len(self._pending) >= self.max_batch_size:
            self._flush("size")
        elif limit is not None and self._pending_tokens >= limit:
            self._flush("tokens")
        elif self._in_flight == 0:
            # Nothing to wait for: waiting would only add latency. call_soon, not now, so the callers
            # already scheduled in this iteration join the batch.
            if self._idle is None:
                self._idle = loop.call_soon(self._on_idle)
        else:
            self._arm(loop, now, p)
        try:
            return await fut
        except asyncio.CancelledError:
            if p in self._pending:  # not sent yet: leave the batch, which goes on without it
                self._pending.remove(p)
                self._pending_tokens -= p.tokens
                self._cancelled += 1
                if not self._pending:
                    self._disarm()
            raise

    def _arm(self, loop: asyncio.AbstractEventLoop, now: float, p: _Pending[T, R]) -> None:
        at, reason = self._pending[0].submitted + self._wait_s, "time"
        if p.deadline is not None and p.deadline - self._dispatch_s < at:
            at, reason = p.deadline - self._dispatch_s, "deadline"
        if at < self._timer_at:
            self._disarm()
            self._timer_at, self._timer_reason = at, reason
            self._timer = loop.call_at(max(at, now), self._on_timer)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = math.inf

    def _on_idle(self) -> None:
        self._idle = None
        if self._in_flight == 0 and self._pending:
            self._flush("idle")

    def _on_timer(self) -> None:
        self._timer = None
        self._flush(self._timer_reason)

    def _flush(self, reason: str) -> None:
        """Send the pending items as one batch; later items, if any, get a timer of their own."""
        self._disarm()
        batch = [p for p in self._pending[: self.max_batch_size] if not p.fut.done()]
        del self._pending[: self.max_batch_size]
        self._pending_tokens = sum(p.tokens for p in self._pending)
        if self._pending:
            loop = asyncio.get_running_loop()
            for p in self._pending:
                self._arm(loop, loop.time(), p)
        if not batch:
            return
        self._flushes[reason] += 1
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._send(batch, reason), name=f"batch-{self.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Pending[T, R]], reason: str) -> None:
        try:
            await self._send_batch(batch, reason)
        finally:
            self._landed()

    async def _send_batch(self, batch: list[_Pending[T, R]], reason: str) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        m = self._m
        tokens = sum(p.tokens for p in batch)
        fill = len(batch) / self.max_batch_size
        if self.max_batch_tokens is not None:
            fill = max(fill, tokens / self.max_batch_tokens)
        m.observe_batch(len(batch), fill)
        waited = 0.0
        for p in batch:
            m.queue_wait.observe(t0 - p.submitted)
            waited = max(waited, t0 - p.submitted)
        self._batches += 1
        self._items += len(batch)
        try:
            results = await self._dispatch([p.item for p in batch])
        except Exception as exc:
            self._failed += 1
            logger.debug("MicroBatcher %r: a batch of %d failed: %r", self.name, len(batch), exc)
            for p in batch:
                if not p.fut.done():
                    p.fut.set_exception(exc)
            return
        except BaseException:
            for p in batch:  # cancelled (close with a hung dispatch): the callers must not hang too
                if not p.fut.done():
                    p.fut.set_exception(LifecycleError(f"MicroBatcher {self.name!r} was closed mid-dispatch."))
            raise
        took = loop.time() - t0
        self._dispatch_s += _EWMA * (took - self._dispatch_s) if self._batches > 1 else took - self._dispatch_s
        if len(results) != len(batch):
            self._failed += 1
            err = BatchError(
                f"MicroBatcher {self.name!r}: dispatch returned {len(results)} results for {len(batch)} items; "
                "it must return one result per item, in order."
            )
            for p in batch:
                if not p.fut.done():
                    p.fut.set_exception(err)
            return
        for p, r in zip(batch, results, strict=True):
            if not p.fut.done():
                p.fut.set_result(r)
        if self.adaptive:
            self._tune(len(batch), reason, waited + took)

    def _landed(self) -> None:
        """A batch came back and its callers have their results: with none left in flight, the items that waited
        for it go out at the end of this iteration, with what the woken callers submit next (see ``submit``)."""
        self._in_flight -= 1
        if self._in_flight == 0 and self._pending and self._idle is None and not self._closed:
            self._idle = asyncio.get_running_loop().call_soon(self._on_idle)

    def _tune(self, size: int, reason: str, latency_s: float) -> None:
        top = self.max_wait_ms / 1000
        target = self.target_latency_ms
        if target is not None and latency_s * 1000 > target:
            self._wait_s *= _AIMD_DECREASE  # over the latency target: back off
        elif reason == "time" and size == 1:
            self._wait_s *= _AIMD_DECREASE  # waited and nobody joined: waiting is useless at this load
        elif size > 1 and reason in ("time", "deadline"):
            self._wait_s = min(top, self._wait_s + _AIMD_STEP * top)  # waiting paid: wait a little longer
        if self._wait_s < top * 1e-3:
            self._wait_s = 0.0

    # ---- lifecycle -----------------------------------------------------------------------------------------

    async def aclose(self, timeout_s: float | None = None) -> None:
        """Refuse new items, send the pending ones, and wait for every batch in flight; idempotent.

        After ``timeout_s`` (or when the wait is cancelled) the batches still in flight are cancelled and their
        callers get LifecycleError.
        """
        self._close_timeout_s = timeout_s
        await super().aclose()

    async def _drain(self) -> None:
        self._closed = True
        while self._pending:
            self._flush("close")
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self._close_timeout_s)

    async def _close(self) -> None:
        self._closed = True
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        tasks = list(self._tasks)
        for t in tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def statistics(self) -> BatcherStatistics:
        m = self._m
        n = m.queue_wait.count
        bounds = [2**i for i in range(len(m.sizes) - 1)] + [0]
        hist = tuple((b, c) for b, c in zip(bounds, m.sizes, strict=True) if c)
        return BatcherStatistics(
            name=self.name,
            pending=len(self._pending),
            batches_in_flight=len(self._tasks),
            batches=self._batches,
            items=self._items,
            cancelled=self._cancelled,
            failed_batches=self._failed,
            mean_batch_size=self._items / self._batches if self._batches else 0.0,
            mean_fill_ratio=m.fill_sum / sum(m.fill) if sum(m.fill) else 0.0,
            mean_queue_wait_s=m.queue_wait.sum / n if n else 0.0,
            batch_size_histogram=hist,
            flushes=dict(self._flushes),
            current_wait_ms=self._wait_s * 1000,
        )

    def __repr__(self) -> str:
        s = self.statistics()
        return (
            f"<MicroBatcher {s.name!r} pending={s.pending} in_flight={s.batches_in_flight} batches={s.batches} "
            f"items={s.items} mean_size={s.mean_batch_size:.1f} wait_ms={s.current_wait_ms:.2f}>"
        )
