"""The small protocols the LLM client needs from the resilience parts it is handed (see :mod:`agentflow.llm.hub`).

The client only needs its breaker, limiter, retry budget and batcher to look like these, so it can be built and
tested without them; ``NO_BREAKER`` stands in for a provider without a breaker.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

__all__ = [
    "NO_BREAKER",
    "BatcherFactory",
    "BatcherLike",
    "BreakerLike",
    "BreakersLike",
    "BudgetLike",
    "LimiterLike",
    "PermitLike",
    "SharedCacheLike",
]

T_contra = TypeVar("T_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)


class PermitLike(Protocol):
    def success(self) -> None: ...

    def failure(self, exc: BaseException) -> None: ...

    def cancel(self) -> None: ...


class BreakerLike(Protocol):
    def acquire(self) -> PermitLike: ...

    def open_for(self, seconds: float) -> None: ...


class BreakersLike(Protocol):
    def get(self, *key: str) -> BreakerLike: ...


class LimiterLike(Protocol):
    async def acquire(self, tokens: int = 1, *, priority: int = 0) -> Any: ...

    def refund(self, grant: Any) -> None: ...

    def adjust(self, tokens_delta: int) -> None: ...


class BudgetLike(Protocol):
    def record_call(self) -> None: ...

    def try_spend(self) -> bool: ...


class BatcherLike(Protocol[T_contra, R_co]):
    async def submit(self, item: T_contra, *, tokens: int = 0, deadline: float | None = None) -> R_co: ...

    async def aclose(self) -> None: ...


class SharedCacheLike(Protocol):
    """A cache shared by every worker (the second level of the response cache): bytes under string keys, each
    with a time to live. Failures raise; the client counts them and treats them as misses."""

    @property
    def name(self) -> str: ...

    async def get_blob(self, key: str) -> bytes | None: ...

    async def set_blob(self, key: str, value: bytes, ttl_s: float) -> None: ...


BatcherFactory = Callable[[Callable[[list[Any]], Awaitable[Sequence[Any]]], str], BatcherLike[Any, Any]]


class _NoBreaker:
    """Breaker and permit in one, for providers without a breaker: every call goes through."""

    def acquire(self) -> _NoBreaker:
        return self

    def success(self) -> None:
        return None

    def failure(self, exc: BaseException) -> None:
        return None

    def cancel(self) -> None:
        return None

    def open_for(self, seconds: float) -> None:
        return None


NO_BREAKER = _NoBreaker()
