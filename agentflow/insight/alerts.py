"""The live performance monitor: ``[monitoring.alerts]`` thresholds checked every ``interval_s`` over a sliding
window, with hysteresis.

Each check takes a profile snapshot into a ring of ``window_s / interval_s + 1``, so the window's figures are
the newest snapshot minus the oldest: handler and queue-wait p95 and error rate per agent, event-loop lag p99,
rate-limiter wait p95 per provider/model, dead letters per minute; beside them the gauges read now: resident
memory, breaker states, consumer lag. An alert fires when its figure passes the threshold and clears once the
figure stayed under ``clear_ratio`` times the threshold for ``clear_after`` checks in a row. Each transition is
one log line (WARNING when firing, INFO when clearing); ``agentflow_alert_firing{alert,subject}`` is 1 while
it fires; ``GET /alerts`` lists every alert with its figure, threshold and the profile's recommendation.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import resource
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final

import msgspec

from ..metrics import GaugeSample
from .profile import build_profile, fmt_s
from .snapshot import ProfileSnapshot, take_snapshot

if TYPE_CHECKING:
    from ..config import AlertsConfig
    from ..runner import Runner

__all__ = ["ALERTS", "PROCESS", "Alert", "AlertMonitor"]

logger = logging.getLogger("agentflow.alerts")

#: Every alert, in the order they are checked (the ``alert`` label).
ALERTS: Final = (
    "handler_p95",
    "error_rate",
    "queue_wait_p95",
    "event_loop_lag",
    "rss",
    "breaker_open",
    "rate_limit_wait",
    "dlq_growth",
    "consumer_lag",
)
_LAG_MIN_TICKS: Final = 5
#: The subject of the alerts about the whole process (a Prometheus label cannot be empty: it would vanish).
PROCESS: Final = "process"
_OPEN: Final = ("open", "forced_open")

#: What to do when there is no more specific recommendation from the profile, by alert.
_ADVICE: Final = {
    "handler_p95": "take a CPU profile (agentcli profile --url ...) to see where the handler spends its time",
    "error_rate": "list its dead letters (agentcli dlq list --agent {subject}) to see what fails",
    "queue_wait_p95": "raise `[agents.{subject}] concurrency` or `[runner] worker_pool_size`, or run more workers",
    "event_loop_lag": "something blocks the event loop: take a CPU profile (agentcli profile --url ...) and move "
    "blocking or CPU-heavy work off the loop (asyncio.to_thread)",
    "rss": "take a heap snapshot (GET /debug/heap with [monitoring] profiling = true) to see what grows",
    "breaker_open": "calls through {subject} fail fast while it is open: check what it protects",
    "rate_limit_wait": "raise the limits of `[llm.PROVIDER.limits]` or add a provider",
    "dlq_growth": "list the dead letters (agentcli dlq list) to see what fails",
    "consumer_lag": "raise the agent's concurrency or run more workers (up to the partition count)",
}


class Alert(msgspec.Struct, kw_only=True):
    """One alert on one subject (an agent, a breaker, a limiter, a consumer group, or ``process``).

    ``value`` is the figure at the last check (None when the window had too little to go on), ``threshold``
    what fires it and ``clear_below`` what it must stay under to clear; ``since`` is when it last fired (Unix
    time) and ``changed_at`` when it last changed state."""

    alert: str
    subject: str
    firing: bool = False
    value: float | None = None
    threshold: float
    clear_below: float
    unit: str
    figure: str = ""
    since: float | None = None
    changed_at: float | None = None
    recommendation: str | None = None
    checks_below: int = 0


class _Figure(msgspec.Struct, frozen=True):
    alert: str
    subject: str
    value: float | None
    threshold: float
    unit: str
    figure: str


def _unit_text(value: float, unit: str) -> str:
    if unit == "s":
        return fmt_s(value)
    if unit == "ratio":
        return f"{100 * value:.1f}%"
    if unit == "MB":
        return f"{value:,.0f} MB"
    if unit == "per_min":
        return f"{value:,.1f}/min"
    if unit == "state":
        return "open" if value >= 0.5 else "closed"
    return f"{value:,.0f}"


def rss_bytes() -> int:
    """Resident memory of this process now (Linux /proc; elsewhere the peak from getrusage)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


class AlertMonitor:
    """Checks ``config``'s thresholds on ``runner``; :meth:`run` loops until cancelled (the runner's task group
    owns it). :meth:`check` is one check, also called by tests with a chosen clock."""

    def __init__(self, runner: Runner, config: AlertsConfig, *, rss: Callable[[], int] = rss_bytes) -> None:
        self._runner = runner
        self.config = config
        self._rss = rss
        size = max(2, math.ceil(config.window_s / config.interval_s) + 1)
        self._ring: deque[ProfileSnapshot] = deque(maxlen=size)
        self._alerts: dict[tuple[str, str], Alert] = {}
        self.checks = 0
        self.transitions = 0

    def __repr__(self) -> str:
        firing = sum(1 for a in self._alerts.values() if a.firing)
        return f"<AlertMonitor checks={self.checks} alerts={len(self._alerts)} firing={firing}>"

    async def run(self) -> None:
        self._ring.append(take_snapshot(self._runner))
        while True:
            await asyncio.sleep(self.config.interval_s)
            try:
                self.check()
            except Exception:  # a bug in a check must not end the monitor (nor the runner's task group)
                logger.exception("The alert check failed; it runs again in %.1f s.", self.config.interval_s)

    def alerts(self) -> list[Alert]:
        return [msgspec.structs.replace(a) for _, a in sorted(self._alerts.items())]

    def window(self) -> ProfileSnapshot | None:
        """The sliding window's figures (newest snapshot minus the oldest), None before two checks."""
        if len(self._ring) < 2:
            return None
        return self._ring[-1].minus(self._ring[0])

    def gauges(self) -> list[GaugeSample]:
        return [
            (
                "agentflow_alert_firing",
                "1 while the alert fires for the subject (an agent, breaker, limiter, consumer group or the process).",
                ("alert", "subject"),
                (a.alert, a.subject),
                1.0 if a.firing else 0.0,
            )
            for _, a in sorted(self._alerts.items())
        ]

    # ---- one check -----------------------------------------------------------------------------------------

    def check(self, now: float | None = None) -> list[Alert]:
        """Take a snapshot, compute every figure, update every alert; return the alerts that changed state."""
        self.checks += 1
        self._ring.append(take_snapshot(self._runner))
        window = self.window()
        changed = []
        for fig in self._figures(window):
            alert = self._update(fig, time.time() if now is None else now)
            if alert is not None:
                changed.append(alert)
        if changed:
            self._recommend(changed, window)
            for a in changed:
                self._log(a)
        return changed

    def _figures(self, window: ProfileSnapshot | None) -> Iterator[_Figure]:
        cfg = self.config
        if window is not None:
            yield from self._agent_figures(window)
            yield from self._window_figures(window)
        if cfg.rss_mb is not None:
            mb = self._rss() / 1_048_576
            yield _Figure("rss", PROCESS, mb, cfg.rss_mb, "MB", f"resident memory {mb:,.0f} MB")
        if cfg.breaker_open:
            for name, b in sorted(self._runner.metrics.breakers().items()):
                is_open = 1.0 if b.state in _OPEN else 0.0
                yield _Figure("breaker_open", name, is_open, 0.5, "state", f"breaker {name!r} is {b.state}")
        if cfg.consumer_lag is not None:
            for sub in self._runner.bus.statistics().subscriptions:
                if sub.lag is not None and sub.group in self._runner.agent_topics:
                    yield _Figure(
                        "consumer_lag",
                        sub.group,
                        float(sub.lag),
                        float(cfg.consumer_lag),
                        "events",
                        f"{sub.lag:,} events of {sub.topic!r} not yet finished",
                    )

    def _agent_figures(self, window: ProfileSnapshot) -> Iterator[_Figure]:
        cfg = self.config
        enough = cfg.min_events
        for a in window.agents:
            limit = a.slo_p95_s if a.slo_p95_s is not None else cfg.handler_p95_s
            if limit is not None:
                p95 = a.duration.quantile(0.95) if a.duration.count >= enough else None
                text = "" if p95 is None else f"handler p95 {fmt_s(p95)} over the last {fmt_s(window.window_s)}"
                yield _Figure("handler_p95", a.name, p95, limit, "s", text)
            if cfg.error_rate is not None:
                attempts = a.duration.count
                failed = a.failed_attempts + a.rejected
                rate = failed / attempts if attempts >= enough else None
                text = "" if rate is None else f"{failed:,} of {attempts:,} attempts failed or were rejected"
                yield _Figure("error_rate", a.name, rate, cfg.error_rate, "ratio", text)
            if cfg.queue_wait_p95_s is not None:
                qw = a.queue_wait.quantile(0.95) if a.queue_wait.count >= enough else None
                text = "" if qw is None else f"queue wait p95 {fmt_s(qw)} over the last {fmt_s(window.window_s)}"
                yield _Figure("queue_wait_p95", a.name, qw, cfg.queue_wait_p95_s, "s", text)

    def _window_figures(self, window: ProfileSnapshot) -> Iterator[_Figure]:
        cfg = self.config
        if cfg.event_loop_lag_s is not None:
            lag = window.loop_lag.quantile(0.99) if window.loop_lag.count >= _LAG_MIN_TICKS else None
            text = "" if lag is None else f"event-loop lag p99 {fmt_s(lag)} over the last {fmt_s(window.window_s)}"
            yield _Figure("event_loop_lag", PROCESS, lag, cfg.event_loop_lag_s, "s", text)
        if cfg.rate_limit_wait_p95_s is not None:
            for p in window.providers:
                wait = p.limiter_wait
                if wait is None:
                    continue
                p95 = wait.quantile(0.95) if wait.count >= cfg.min_events else None
                text = "" if p95 is None else f"rate-limiter wait p95 {fmt_s(p95)} over {wait.count:,} grants"
                yield _Figure("rate_limit_wait", p.key, p95, cfg.rate_limit_wait_p95_s, "s", text)
        if cfg.dlq_per_min is not None and window.window_s > 0:
            per_min = window.dead_letters_written * 60.0 / window.window_s
            text = f"{window.dead_letters_written:,} dead letters in the last {fmt_s(window.window_s)}"
            yield _Figure("dlq_growth", PROCESS, per_min, cfg.dlq_per_min, "per_min", text)

    def _update(self, fig: _Figure, now: float) -> Alert | None:
        key = (fig.alert, fig.subject)
        a = self._alerts.get(key)
        clear_below = fig.threshold * self.config.clear_ratio
        if a is None:
            a = self._alerts[key] = Alert(
                alert=fig.alert, subject=fig.subject, threshold=fig.threshold, clear_below=clear_below, unit=fig.unit
            )
        a.value, a.threshold, a.clear_below = fig.value, fig.threshold, clear_below
        if fig.figure:
            a.figure = fig.figure
        if not a.firing:
            if fig.value is not None and fig.value > fig.threshold:
                a.firing, a.since, a.changed_at, a.checks_below = True, now, now, 0
                self.transitions += 1
                return a
            return None
        # Firing: a window with nothing to go on counts toward clearing, as does a figure under clear_below.
        if fig.value is None or fig.value < clear_below:
            a.checks_below += 1
        else:
            a.checks_below = 0
        if a.checks_below >= self.config.clear_after:
            a.firing, a.changed_at, a.checks_below = False, now, 0
            self.transitions += 1
            return a
        return None

    def _recommend(self, changed: list[Alert], window: ProfileSnapshot | None) -> None:
        recs: dict[str, str] = {}
        if window is not None and any(a.firing for a in changed):
            for rec in build_profile(window, source="alerts").recommendations:
                recs.setdefault(rec.name, rec.text)
        for a in changed:
            if a.firing:
                a.recommendation = recs.get(a.subject) or _ADVICE[a.alert].format(subject=a.subject)

    def _log(self, a: Alert) -> None:
        subject = f" for {a.subject!r}" if a.subject != PROCESS else ""
        key = f"[monitoring.alerts] {_KEYS[a.alert]}"
        if a.firing:
            figure = a.figure or _unit_text(a.value or 0.0, a.unit)
            if a.unit != "state":
                figure += f", over the threshold {_unit_text(a.threshold, a.unit)}"
            logger.warning(
                "Alert %s firing%s: %s (%s). Recommendation: %s.",
                a.alert,
                subject,
                figure,
                key,
                (a.recommendation or "").rstrip("."),
            )
        else:
            now = "no events in the window" if a.value is None else _unit_text(a.value, a.unit)
            logger.info(
                "Alert %s cleared%s: %s, under %s for %d checks.",
                a.alert,
                subject,
                now,
                _unit_text(a.clear_below, a.unit),
                self.config.clear_after,
            )


#: The [monitoring.alerts] key of each alert, for the log lines.
_KEYS: Final = {
    "handler_p95": "handler_p95_s, or [agents.NAME] slo_p95_s",
    "error_rate": "error_rate",
    "queue_wait_p95": "queue_wait_p95_s",
    "event_loop_lag": "event_loop_lag_s",
    "rss": "rss_mb",
    "breaker_open": "breaker_open",
    "rate_limit_wait": "rate_limit_wait_p95_s",
    "dlq_growth": "dlq_per_min",
    "consumer_lag": "consumer_lag",
}
