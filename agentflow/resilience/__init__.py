"""Resilience building blocks with no knowledge of buses, agents or HTTP: retry policies, circuit breakers,
rate limits and retry budgets (see docs/resilience.md)."""

from .breaker import BreakerConfig, BreakerPermit, BreakerRegistry, BreakerState, BreakerStatistics, CircuitBreaker
from .budget import RetryBudget, RetryBudgetStatistics
from .limits import RateLimiter, RateLimiterStatistics
from .retry import RetryPolicy

__all__ = [
    "BreakerConfig",
    "BreakerPermit",
    "BreakerRegistry",
    "BreakerState",
    "BreakerStatistics",
    "CircuitBreaker",
    "RateLimiter",
    "RateLimiterStatistics",
    "RetryBudget",
    "RetryBudgetStatistics",
    "RetryPolicy",
]
