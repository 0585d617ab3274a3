"""Memory stays flat in a long run: fixed-size histograms, old windows merged, no per-sample storage.

A short soak with many small windows (so the bounded window list merges hundreds of times) samples the RSS
after every window; growth after warm-up must stay within a few MB. The 10-minute soak figures are in
docs/load-testing.md.
"""

from __future__ import annotations

import pytest

from agentcli.loadtest.collector import Collector
from agentcli.loadtest.plan import resolve
from agentcli.loadtest.scenario import LoadSpec
from agentcli.loadtest.session import run_local


@pytest.mark.slow
async def test_rss_stays_flat_over_a_soak_with_many_windows() -> None:
    plan = resolve(LoadSpec(rate="1000/s", duration="8s", window="100ms"))
    collector = Collector(plan, max_windows=16)
    outcome = await run_local(plan, None, collector=collector)
    total = outcome.collector.total()
    assert total.started == 8000
    assert len(collector.windows) == 16 and collector.windows.merges == 80 - 16
    samples = [mb for t, mb in collector.rss_samples if t >= 2.0]
    assert len(samples) >= 30 and min(samples) > 0
    growth = max(samples) - samples[0]
    assert growth < 8.0, f"RSS grew by {growth:.1f} MB over the soak: {collector.rss_samples}"
    # the second half must not keep climbing: compare the means of the two halves
    half = len(samples) // 2
    assert sum(samples[half:]) / (len(samples) - half) - sum(samples[:half]) / half < 4.0
