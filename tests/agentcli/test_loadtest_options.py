"""agentcli loadtest options: --abort-on-fail with its grace period, the live view, and --payload-file (JSONL).

The abort rule is tested on windows with made-up times (no clock), and once end to end through the CLI.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from agentcli.loadtest import live
from agentcli.loadtest.collector import Collector
from agentcli.loadtest.figures import WindowRecord
from agentcli.loadtest.live import LiveView
from agentcli.loadtest.plan import resolve
from agentcli.loadtest.report import read_report
from agentcli.loadtest.scenario import LoadSpec
from agentcli.loadtest.session import LiveStatus, run_local
from agentcli.loadtest.targets import LoadTarget, Probe
from agentcli.main import app

cli = CliRunner()


def window(i: int, *, failing: bool) -> WindowRecord:
    """One 1 s window: all 10 iterations failed, or all 10 succeeded."""
    return WindowRecord(index=i, stage=0, t0_s=float(i), t1_s=float(i + 1), target=10.0, scheduled=10, started=10,
                        completed=0 if failing else 10, errors=10 if failing else 0)  # fmt: skip


def collector(*, abort_on_fail: bool, grace: str = "2s") -> Collector:
    spec = LoadSpec(rate="10/s", duration="30s", thresholds=["error_rate<0.5"], abort_on_fail=abort_on_fail,
                    abort_grace=grace)  # fmt: skip
    return Collector(resolve(spec))


def test_abort_needs_a_threshold_failing_in_every_window_for_the_grace_period() -> None:
    c = collector(abort_on_fail=True)
    # fail, pass (resets the grace), fail, fail: the 2 s grace is only complete at the end of the 4th window
    assert [c.on_window(window(i, failing=f), None) for i, f in enumerate([True, False, True])] == [False] * 3
    assert c.failing_since == 2.0
    assert c.on_window(window(3, failing=True), None) is True
    assert c.abort_reason is not None and c.abort_reason.startswith("error_rate<0.5")
    assert "window ending at 4.0s" in c.abort_reason


def test_without_abort_on_fail_a_failing_threshold_never_stops_the_run() -> None:
    c = collector(abort_on_fail=False)
    assert not any(c.on_window(window(i, failing=True), None) for i in range(10))
    assert c.abort_reason is None


def test_a_zero_grace_aborts_on_the_first_failing_window() -> None:
    c = collector(abort_on_fail=True, grace="0s")
    assert c.on_window(window(0, failing=False), None) is False
    assert c.on_window(window(1, failing=True), None) is True


def test_cli_abort_on_fail_stops_early_and_exits_1(tmp_path: Path) -> None:
    out = tmp_path / "a.json"
    result = cli.invoke(app, ["loadtest", "--rate", "100/s", "--duration", "60s", "--window", "200ms",
                              "--threshold", "p50<1us", "--abort-on-fail", "--abort-grace", "600ms",
                              "--json", str(out)])  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "aborted:" in result.output and "p50<1us" in result.output
    rep = read_report(out)
    assert rep.aborted and rep.abort_reason and "p50<1us" in rep.abort_reason
    # It ran at least the grace (3 windows) and stopped long before the 6,000 arrivals of the full minute.
    assert 60 <= rep.run.started < 3000
    assert not rep.passed


def status() -> LiveStatus:
    return LiveStatus(elapsed_s=12.0, target=250.0, vus_busy=3, vus=8, started=2900, finished=2897, dropped=4,
                      errors=7)  # fmt: skip


def plan_two_stages() -> Any:
    return resolve(LoadSpec(rate="100/s", stages="10s:250,10s:250"))


def test_live_view_shows_stage_rates_vus_percentiles_errors_and_dropped() -> None:
    plan = plan_two_stages()
    c = Collector(plan)
    c.last = {"rate": 248.5, "p50": 0.0012, "p95": 0.0021, "p99": 0.0035}
    view = LiveView(Console(file=io.StringIO(), force_terminal=True, width=160), plan, status(), c)
    buf = io.StringIO()
    Console(file=buf, width=160).print(view.table())
    row = buf.getvalue().splitlines()[-1].split()
    assert row == ["2/2", "250.0/s", "248.5", "3/8", "1.20", "2.10", "3.50", "7", "4"]


async def test_live_view_draws_on_a_terminal_and_stays_silent_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "REFRESH_S", 0.01)
    plan = plan_two_stages()
    term = io.StringIO()
    async with LiveView(Console(file=term, force_terminal=True, width=160), plan, status(), Collector(plan)) as v:
        assert v.enabled
        for _ in range(500):  # a few redraws; bounded, so a view that never draws fails instead of hanging
            if term.getvalue().count("achieved/s") >= 2:
                break
            await asyncio.sleep(0.01)
    assert term.getvalue().count("achieved/s") >= 2, "the view did not redraw"
    assert "250.0/s" in term.getvalue() and "3/8" in term.getvalue()
    assert v._ticker is None and v._live is None  # closed
    await v.aclose()  # idempotent
    piped = io.StringIO()
    async with LiveView(Console(file=piped, force_terminal=False), plan, status(), Collector(plan)) as quiet:
        assert not quiet.enabled
        await asyncio.sleep(0.05)
    assert piped.getvalue() == ""


class RecordingTarget(LoadTarget):
    name = "recording"

    def __init__(self) -> None:
        self.payloads: list[Any] = []

    async def call(self, payload: Any, probe: Probe) -> Any:
        self.payloads.append(payload)
        await asyncio.sleep(0)
        return None


async def test_payload_file_sends_its_lines_in_turn(tmp_path: Path) -> None:
    data = tmp_path / "p.jsonl"
    data.write_text('{"q": "a"}\n\n[1, 2]\n"text"\n')  # a blank line is skipped
    target = RecordingTarget()
    spec = LoadSpec(rate="100/s", duration="100ms", payload_file=str(data))
    outcome = await run_local(resolve(spec), None, target=target)
    assert outcome.collector.total().completed == 10
    lines: list[Any] = [{"q": "a"}, [1, 2], "text"]
    assert target.payloads == [lines[i % 3] for i in range(10)]


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        ('{"a": 1}\n{"a": \n', [], "line 2 is not JSON"),
        ("\n\n", [], "has no payloads"),
        ('{"a": 1}\n', ["--payload", '{"b": 2}'], "not both"),
        (None, [], "does not exist"),
    ],
)
def test_bad_payload_files_exit_2_with_a_sentence(
    tmp_path: Path, content: str | None, extra: list[str], message: str
) -> None:
    path = tmp_path / "p.jsonl"
    if content is not None:
        path.write_text(content)
    result = cli.invoke(app, ["loadtest", "--rate", "10/s", "--duration", "1s", "--payload-file", str(path), *extra])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert message in " ".join(result.output.replace("│", " ").split())
