"""Retry policy: how many attempts and how long to wait between them.

The waits come from tenacity's strategies (exponential backoff with full jitter added, capped), so the
semantics are tenacity's. The retry *loop* is agentflow's own: ``tenacity.AsyncRetrying`` costs ~20 µs per
call, twenty times the whole per-event budget of the worker pool, so it is consulted only after a failure.
"""

from __future__ import annotations

from typing import Any

import tenacity

__all__ = ["RetryPolicy"]


class RetryPolicy:
    """Exponential backoff with jitter and a maximum number of attempts.

    ``delay_s(n, exc)`` is the wait after failed attempt ``n`` (1-based): ``initial * multiplier**(n-1)`` plus
    a uniform jitter in ``[0, jitter_s]``, capped at ``max_backoff_s``. An exception that carries
    ``after_s`` (such as :class:`agentflow.Retry`) sets the wait itself, up to ``max_after_s`` (so a bogus
    value cannot park the event for a day)::

        policy = RetryPolicy(max_attempts=5, initial_backoff_s=0.2)
        policy.delay_s(1, None)   # ~0.2 s (+ jitter)
        policy.delay_s(3, None)   # ~0.8 s (+ jitter)
    """

    __slots__ = (
        "_rs",
        "_stop",
        "_wait",
        "initial_backoff_s",
        "jitter_s",
        "max_after_s",
        "max_attempts",
        "max_backoff_s",
        "multiplier",
    )

    def __init__(
        self,
        *,
        max_attempts: int = 3,
        initial_backoff_s: float = 0.1,
        max_backoff_s: float = 10.0,
        multiplier: float = 2.0,
        jitter_s: float = 0.1,
        max_after_s: float = 300.0,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1 (the first attempt counts).")
        self.max_attempts = max_attempts
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.multiplier = multiplier
        self.jitter_s = jitter_s
        self.max_after_s = max_after_s
        self._wait = tenacity.wait_exponential_jitter(
            multiplier=initial_backoff_s, max=max_backoff_s, exp_base=multiplier, jitter=jitter_s
        )
        self._stop = tenacity.stop_after_attempt(max_attempts)
        self._rs = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})

    @classmethod
    def from_config(cls, cfg: Any) -> RetryPolicy:
        """Build from any object with the fields of ``agentflow.config.RetryConfig``."""
        return cls(
            max_attempts=cfg.max_attempts,
            initial_backoff_s=cfg.initial_backoff_s,
            max_backoff_s=cfg.max_backoff_s,
            multiplier=cfg.multiplier,
            jitter_s=cfg.jitter_s,
            max_after_s=cfg.max_after_s,
        )

    def __repr__(self) -> str:
        return (
            f"RetryPolicy(max_attempts={self.max_attempts}, initial_backoff_s={self.initial_backoff_s}, "
            f"max_backoff_s={self.max_backoff_s}, multiplier={self.multiplier}, jitter_s={self.jitter_s}, "
            f"max_after_s={self.max_after_s})"
        )

    def should_retry(self, attempt: int) -> bool:
        """True when failed attempt ``attempt`` (1-based) may be followed by another."""
        self._rs.attempt_number = attempt
        return not self._stop(self._rs)

    def delay_s(self, attempt: int, exc: BaseException | None) -> float:
        """Seconds to wait after failed attempt ``attempt``; an exception's ``after_s`` wins when set (at most
        ``max_after_s``)."""
        after = getattr(exc, "after_s", None)
        if isinstance(after, int | float) and after >= 0:
            return min(float(after), self.max_after_s)
        self._rs.attempt_number = attempt
        return float(self._wait(self._rs))
