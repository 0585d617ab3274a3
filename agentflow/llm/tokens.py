"""Token estimates: what the rate limiter charges before a provider reports usage, and how a batch's usage is
shared between its items."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["estimate_tokens", "split_tokens"]


def estimate_tokens(text: str) -> int:
    """~4 characters per token: the estimate the rate limiter charges before the provider reports usage."""
    return max(1, (len(text) + 3) // 4)


def split_tokens(total: int, items: Sequence[str]) -> list[int]:
    """Share ``total`` tokens between ``items`` in proportion to their estimated size (sums to ``total``)."""
    weights = [estimate_tokens(t) for t in items]
    w = sum(weights)
    shares = [total * x // w for x in weights]
    shares[-1] += total - sum(shares)
    return shares
