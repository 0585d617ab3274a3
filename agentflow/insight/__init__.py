"""Insight: where the time and the money go, and what to change.

* :mod:`.snapshot` — a runner's raw figures at one moment (:func:`take_snapshot`), and the difference of two.
* :mod:`.profile` — the profile report: rows per agent, provider, tool, MCP server, state store, workflow step
  and the worker pool, ``SLOW``/``BOTTLENECK``/``COSTLY`` flags and recommendations (:func:`build_profile`).
* :mod:`.costs` — cost reports over a time window and cost history in a state backend.
* :mod:`.alerts` — ``[monitoring.alerts]``: thresholds checked over a sliding window, with hysteresis.
* :mod:`.looplag` — event-loop lag, measured always.
* :mod:`.sampler` — a sampling CPU profiler, heap and task dumps for ``/debug/*``.
* :mod:`.hub` — what a Runner owns of all this (``runner.insight``).

See docs/observability.md.
"""

from .alerts import ALERTS, Alert, AlertMonitor
from .costs import CostGroup, CostHistory, CostReport, RunFigures, WorkflowCost, build_cost_report
from .hub import Insight
from .looplag import LoopLag, LoopLagStatistics
from .profile import Flag, ProfileReport, ProfileRow, Recommendation, Totals, WorkflowTotals, build_profile
from .snapshot import AgentSample, CacheUse, ProfileSnapshot, ProviderSample, take_snapshot

__all__ = [
    "ALERTS",
    "AgentSample",
    "Alert",
    "AlertMonitor",
    "CacheUse",
    "CostGroup",
    "CostHistory",
    "CostReport",
    "Flag",
    "Insight",
    "LoopLag",
    "LoopLagStatistics",
    "ProfileReport",
    "ProfileRow",
    "ProfileSnapshot",
    "ProviderSample",
    "Recommendation",
    "RunFigures",
    "Totals",
    "WorkflowCost",
    "WorkflowTotals",
    "build_cost_report",
    "build_profile",
    "take_snapshot",
]
