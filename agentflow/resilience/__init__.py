"""Resilience building blocks with no knowledge of buses or agents: retry policies (more to come)."""

from .retry import RetryPolicy

__all__ = ["RetryPolicy"]
