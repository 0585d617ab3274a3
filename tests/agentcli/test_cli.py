"""agentcli: benchmark modes, the JSON report, --app, profiling, and user errors exiting 2 without a traceback.

Runs are tiny (a few thousand events) so the whole file stays fast; they check that figures are produced and
consistent, not how large they are.
"""

from __future__ import annotations

import os
import pstats
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import REPO_ROOT
from typer.testing import CliRunner, Result

from agentcli.main import app

TESTS = REPO_ROOT / "tests"
ROOT = TESTS.parent
REPORT_KEYS = {
    "format", "scenario", "mode", "bus", "completed", "errors", "duration_s", "throughput_per_s", "latency_ms",
    "latency_measures", "rss_peak_mb", "cpu_s", "repeat", "order", "runs", "ratios", "round_ratios", "thresholds",
    "passed", "warnings", "notes", "details", "options", "config", "versions", "machine", "command", "started_at",
    "phases", "interrupted", "profile_snapshot",
}  # fmt: skip
LATENCY_KEYS = {"p50", "p90", "p95", "p99", "p999", "max", "mean", "count"}

cli = CliRunner()


def bench(*args: str, code: int = 0) -> Result:
    result = cli.invoke(app, ["benchmark", *args])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result


def report(tmp_path: Path, *args: str) -> dict[str, Any]:
    path = tmp_path / "report.json"
    bench(*args, "--json", str(path))
    data: dict[str, Any] = msgspec.json.decode(path.read_bytes())
    return data


def assert_latency(lat: dict[str, Any] | None) -> None:
    assert lat is not None
    assert set(lat) == LATENCY_KEYS
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]


def assert_consistent(data: dict[str, Any], requested: int) -> None:
    assert data["details"]["requested"] == requested
    assert data["completed"] + data["errors"] == requested
    assert data["warnings"] == []
    assert data["duration_s"] > 0 and data["throughput_per_s"] > 0 and data["cpu_s"] > 0


# ---- modes and the report -------------------------------------------------------------------------------------


def test_closed_mode_writes_the_full_report(tmp_path: Path) -> None:
    data = report(tmp_path, "--scenario", "noop", "--requests", "2000")
    assert set(data) == REPORT_KEYS
    assert data["profile_snapshot"]["agents"][0]["handled"] == 2000  # the measured phase, for profile-report
    assert (data["format"], data["scenario"], data["mode"], data["bus"]) == (
        "agentcli.benchmark/1",
        "noop",
        "closed",
        "memory",
    )
    details = data["details"]
    assert (details["kind"], details["agent"], details["concurrent_users"]) == ("noop", "noop", 64)
    assert_consistent(data, 2000)
    assert data["completed"] == 2000 and data["errors"] == 0 and data["passed"] is True
    assert_latency(data["latency_ms"])
    assert data["ratios"] == {} and data["phases"] == []
    [run] = data["runs"]
    assert (run["side"], run["round"], run["completed"]) == ("agentflow", 1, 2000)
    assert data["rss_peak_mb"] > 1
    assert set(data["versions"]) >= {"python", "agentflow", "uvloop", "msgspec", "aiohttp"}
    assert data["machine"]["cores"] >= 1 and data["machine"]["cpu"]
    assert data["config"]["runner"]["worker_pool_size"] == 64
    assert data["options"]["users"] == 64 and data["options"]["limits"]["count"] == 2000
    assert data["command"][0] == "agentcli"
    assert data["started_at"].endswith("+00:00")
    assert details["shutdown_s"] is not None and details["shutdown_s"] < 1.0


def test_closed_mode_against_the_raw_baseline(tmp_path: Path) -> None:
    data = report(tmp_path, "--requests", "2000", "--concurrent-users", "16", "--compare-raw", "--scenario", "noop")
    assert_consistent(data, 2000)
    assert data["ratios"]["raw"] > 0
    raw = next(r for r in data["runs"] if r["side"] == "raw")
    assert raw["completed"] == 2000 and raw["throughput_per_s"] > 0
    assert_latency(raw["latency_ms"])
    assert data["ratios"]["raw"] == pytest.approx(data["throughput_per_s"] / raw["throughput_per_s"])


def test_throughput_mode(tmp_path: Path) -> None:
    data = report(tmp_path, "--mode", "throughput", "--requests", "2000")
    assert_consistent(data, 2000)
    assert data["errors"] == 0 and data["details"]["concurrent_users"] is None
    assert_latency(data["latency_ms"])
    assert "created_at" in data["latency_measures"]


def test_a_long_flood_reports_the_latency_at_its_end_and_a_short_one_does_not(tmp_path: Path) -> None:
    long = report(tmp_path, "--mode", "throughput", "--requests", "250000")
    assert_consistent(long, 250000)
    [run] = long["runs"]
    tail = run["tail_latency_ms"]
    # the events handled once the last 100,000 were being emitted: those, and at most those still in the bus or held
    # by the agent when they began
    runner = long["config"]["runner"]
    in_transit = runner["event_buffer_size"] + runner["max_concurrent_events"]
    assert 100_000 <= tail["count"] <= 100_000 + in_transit and tail["p99"] <= run["latency_ms"]["max"]
    assert long["latency_ms"]["count"] == 250000  # the whole run's histogram still holds every event
    short = report(tmp_path, "--mode", "throughput", "--requests", "2000")
    assert short["runs"][0]["tail_latency_ms"] is None


def test_throughput_mode_in_batches_against_the_raw_item_pipeline(tmp_path: Path) -> None:
    data = report(tmp_path, "--mode", "throughput", "--batch-size", "256", "--requests", "2000", "--compare-raw")
    assert_consistent(data, 2000)
    assert data["details"]["batch_size"] == 256
    raw = next(r for r in data["runs"] if r["side"] == "raw")
    assert data["ratios"]["raw"] > 0 and raw["completed"] == 2000


def test_throughput_mode_reports_the_bare_and_the_raw_pipeline_each_with_its_ratio(tmp_path: Path) -> None:
    data = report(tmp_path, "--mode", "throughput", "--requests", "2000", "--compare-raw")
    assert_consistent(data, 2000)
    by_side = {r["side"]: r for r in data["runs"]}
    assert set(by_side) == {"bare", "raw", "agentflow"}
    bare, raw = by_side["bare"], by_side["raw"]
    assert bare["completed"] == raw["completed"] == 2000
    assert bare["latency_ms"] is None and raw["latency_ms"] is not None  # bare does no per-event work at all
    assert set(data["ratios"]) == {"raw", "bare"}
    assert data["ratios"]["bare"] == pytest.approx(data["throughput_per_s"] / bare["throughput_per_s"])
    assert data["ratios"]["raw"] == pytest.approx(data["throughput_per_s"] / raw["throughput_per_s"])


def test_latency_mode_paces_at_half_of_saturation(tmp_path: Path) -> None:
    data = report(tmp_path, "--mode", "latency", "--requests", "1000", "--compare-raw")
    assert_consistent(data, 1000)
    ours, raw = (next(r for r in data["runs"] if r["side"] == side) for side in ("agentflow", "raw"))
    assert ours["rate_per_s"] == pytest.approx(ours["saturation_per_s"] / 2)
    assert raw["rate_per_s"] == pytest.approx(raw["saturation_per_s"] / 2)
    assert data["ratios"]["raw"] == pytest.approx(ours["saturation_per_s"] / raw["saturation_per_s"])
    assert data["details"]["load_fraction"] == 0.5
    assert_latency(data["latency_ms"])
    assert "intended" in data["latency_measures"]


def test_duration_limits_a_run(tmp_path: Path) -> None:
    data = report(tmp_path, "--duration", "300ms", "--concurrent-users", "8")
    assert data["completed"] > 0 and data["errors"] == 0
    assert data["completed"] == data["details"]["requested"]
    assert data["duration_s"] >= 0.3


def test_repeat_alternates_the_sides_and_reports_the_median(tmp_path: Path) -> None:
    data = report(tmp_path, "--mode", "throughput", "--requests", "1000", "--compare-raw", "--repeat", "3")
    assert [(r["round"], r["side"]) for r in data["runs"]] == [
        (1, "bare"), (1, "raw"), (1, "agentflow"), (2, "agentflow"), (2, "raw"), (2, "bare"),
        (3, "bare"), (3, "raw"), (3, "agentflow"),
    ]  # fmt: skip
    ours = sorted(r["throughput_per_s"] for r in data["runs"] if r["side"] == "agentflow")
    assert data["throughput_per_s"] == ours[1]  # the median round, not the best
    rounds = [rr["ratios"]["raw"] for rr in data["round_ratios"]]
    assert [rr["round"] for rr in data["round_ratios"]] == [1, 2, 3]
    assert data["ratios"]["raw"] == pytest.approx(sorted(rounds)[1])
    for rr in data["round_ratios"]:  # each round's ratio is of that round's two runs
        a, b = (
            next(r for r in data["runs"] if r["round"] == rr["round"] and r["side"] == s) for s in ("agentflow", "raw")
        )
        assert rr["ratios"]["raw"] == pytest.approx(a["throughput_per_s"] / b["throughput_per_s"])
    assert "alternating" in data["order"] and "median" in data["order"]


def test_latency_rounds_each_measure_only_themselves(tmp_path: Path) -> None:
    # A round's saturation flood comes before its paced run; it must not land in the previous round's figures.
    data = report(tmp_path, "--mode", "latency", "--requests", "1000", "--repeat", "3")
    ours = [r for r in data["runs"] if r["side"] == "agentflow"]
    assert [r["round"] for r in ours] == [1, 2, 3]
    assert [r["latency_ms"]["count"] for r in ours] == [1000, 1000, 1000]
    # Each round's histogram holds exactly its own paced events: before, a round also held the next round's
    # saturation flood (counts 342,712 / 281,528 / 3,000, p99 84 ms against 0.06 ms). Percentiles are not
    # compared: a scheduling stall on a busy machine moves one round's p99 a hundredfold by itself.
    assert all(r["latency_ms"]["p99"] is not None for r in ours)


def test_overload_scenario_reports_refusals_capacity_memory_and_no_loss(tmp_path: Path) -> None:
    # Small bounds, so the backlog drains in a moment; 50 in flight + 200 buffered + 20 waiting for room stay
    # under max_pending_requests, so here max_waiting_emits is the bound that refuses requests.
    config = tmp_path / "small.toml"
    config.write_text(
        "[runner]\nevent_buffer_size = 200\nmax_concurrent_events = 50\nmax_waiting_emits = 20\n"
        "max_pending_requests = 300\n"
    )
    data = report(tmp_path, "--scenario", "overload", "--config", str(config), "--requests", "2000", "--duration", "1s")
    assert (data["scenario"], data["mode"], data["details"]["kind"]) == ("overload", None, "overload")
    req, ingest, blocked = data["details"]["requests"], data["details"]["ingest"], data["details"]["blocked"]
    assert req["offered"] == req["completed"] + req["refused"] + req["timed_out"] + req["failed"]
    assert req["refused"] == req["refused_by"]["max_waiting_emits"] > 0
    assert req["max_pending_requests"] <= 300 and req["max_waiting_emits"] <= 20
    assert req["accepted"] == req["handled_after_drain"] and req["lost"] == 0
    assert req["capacity_per_s"] > 0 and req["share_of_capacity"] > 0 and req["rss_growth_mb"] >= 0
    assert ingest["refused_by_status"].get("429", 0) > 0 and ingest["client_errors"].get("http_429", 0) > 0
    assert ingest["accepted"] == ingest["accepted_posts"] * ingest["events_per_post"] == ingest["handled_after_drain"]
    assert ingest["lost"] == 0
    assert [(r["side"], r["round"]) for r in data["runs"]] == [
        (side, n) for n in range(1, 6) for side in ("raw", "agentflow")
    ]
    assert blocked["emitters"] == 2000 and len(blocked["block_s"]) == 5 and data["ratios"]["blocked_vs_raw"] > 0
    assert data["ratios"]["request_capacity_share"] == req["share_of_capacity"]
    assert data["ratios"]["ingest_capacity_share"] == ingest["share_of_capacity"]
    assert data["completed"] == req["completed"] and data["errors"] == 0 and data["passed"] is True
    assert_latency(data["latency_ms"])


@pytest.mark.parametrize("agent_batch", [None, "1", "64"])
def test_batch_size_feeds_a_batch_agent_unless_told_otherwise(tmp_path: Path, agent_batch: str | None) -> None:
    extra = [] if agent_batch is None else ["--agent-batch-size", agent_batch]
    data = report(tmp_path, "--mode", "throughput", "--batch-size", "256", "--requests", "3000", *extra)
    assert_consistent(data, 3000)
    assert data["latency_ms"]["count"] == 3000  # every event's latency recorded, batched or not
    out = bench("--mode", "throughput", "--batch-size", "256", "--requests", "1000", *extra).output
    assert ("batch agent" in out) == (agent_batch != "1")


def test_bare_command_also_runs_agents_against_the_mock_llm_and_writes_both(tmp_path: Path) -> None:
    data = report(tmp_path, "--requests", "1000")
    assert data["scenario"] == "noop" and data["completed"] == 1000
    [llm] = data["phases"]
    assert (llm["scenario"], llm["completed"], llm["errors"], llm["phases"]) == ("llm-chat", 2000, 0, [])
    assert llm["details"]["kind"] == "llm" and llm["details"]["cost"][0]["calls"] == 2000
    out = bench("--requests", "1000").output
    assert "llm-chat" in out and "LLM cost summary" in out
    assert "llm-chat" not in bench("--scenario", "noop", "--requests", "1000").output
    assert "llm-chat" not in bench("--mode", "throughput", "--requests", "1000").output


def test_the_summary_table_is_printed() -> None:
    out = bench("--scenario", "noop", "--requests", "1000", "--compare-raw").output
    for text in ("completed", "errors", "throughput", "latency p99", "peak RSS", "CPU time", "agentflow/raw"):
        assert text in out
    assert "ratio raw:" in out and "runs: raw, agentflow in this process" in " ".join(out.split())


# ---- --app ----------------------------------------------------------------------------------------------------


def test_app_runner_and_agent(tmp_path: Path) -> None:
    data = report(
        tmp_path, "--app", "agentcli_app:runner", "--app-dir", str(TESTS), "--agent", "echo", "--requests", "500",
        "--payload", '{"x": 1}',
    )  # fmt: skip
    assert (data["scenario"], data["details"]["app"], data["details"]["agent"]) == (
        "app",
        "agentcli_app:runner",
        "echo",
    )
    assert_consistent(data, 500)
    assert data["errors"] == 0
    assert_latency(data["latency_ms"])


@pytest.mark.parametrize("mode", ["closed", "throughput"])
def test_handler_errors_are_counted(tmp_path: Path, mode: str) -> None:
    config = tmp_path / "agentflow.toml"
    config.write_text("[retry]\nmax_attempts = 1\n")
    path = tmp_path / "report.json"
    result = bench(
        "--app", "agentcli_app:make_runner", "--app-dir", str(TESTS), "--agent", "flaky", "--config", str(config),
        "--mode", mode, "--requests", "200", "--json", str(path), code=1,
    )  # fmt: skip
    data = msgspec.json.decode(path.read_bytes())
    assert_consistent(data, 200)
    assert (data["completed"], data["errors"], data["passed"]) == (180, 20, False)
    # Failed requests are left out of the figures: the run exits 1 and says how many failed.
    unit = "requests" if mode == "closed" else "events"
    assert f"20 of 200 {unit} failed" in " ".join(result.output.split())
    # agentflow logs at most 10 dead letters a second per agent; agentcli shows 5 of those and counts the rest
    assert re.search(r"\d+ more log records were not shown", result.output)


def test_app_with_several_agents_needs_agent() -> None:
    out = bench("--app", "agentcli_app:make_runner", "--app-dir", str(TESTS), "--requests", "10", code=2).output
    assert "--agent" in out and "echo, flaky" in out


def test_app_runner_instance_cannot_take_config(tmp_path: Path) -> None:
    config = tmp_path / "agentflow.toml"
    config.write_text("")
    out = bench("--app", "agentcli_app:runner", "--app-dir", str(TESTS), "--config", str(config), code=2).output
    assert "--config" in out


# ---- user errors exit 2 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--bogus"], "No such option"),
        (["--duration", "3x"], "'3x' is not a duration"),
        (["--scenario", "llm-chat", "--bus", "kafka"], "--bus kafka runs the noop scenario"),
        (["--scenario", "llm-chat", "--mode", "latency"], "--mode does not apply to --scenario llm-chat"),
        (["--bus", "kafka", "--mode", "throughput", "--duration", "1s"], "number of events"),
        (["--duration", "0s"], "not a positive duration"),
        (["--mode", "nope"], "nope"),
        (["--profile", "cpu"], "needs --output"),
        (["--app", "nomodule:x"], "cannot import 'nomodule'"),
        (["--app", "agentcli_app"], "module:attribute"),
        (["--requests", "0"], "--requests"),
        (["--requests", "5", "--duration", "1s"], "not both"),
        (["--batch-size", "4"], "--batch-size"),
        (["--load-fraction", "0.5"], "latency only"),
        (["--mode", "latency", "--load-fraction", "1.5"], "not in (0, 1]"),
        (["--payload", "{nope"], "not valid JSON"),
        (["--mode", "latency", "--payload", "{}"], "drop --payload"),
        (["--app", "agentcli_app:make_runner", "--compare-raw", "--agent", "echo"], "raw baseline"),
        (["--json", "/no/such/dir/report.json"], "does not exist"),
        (["--agent-batch-size", "0"], "--agent-batch-size"),
        (["--app", "agentcli_app:make_runner", "--agent", "echo", "--agent-batch-size", "4"], "shapes the"),
        (["--scenario", "overload", "--compare-raw"], "--compare-raw does not apply to"),
        (["--scenario", "overload", "--bootstrap", "127.0.0.1:9092"], "--bus kafka"),
        (["--scenario", "tools", "--batch-size", "4"], "--batch-size does not apply to --scenario"),
        (["--scenario", "mcp", "--bus", "kafka"], "--bus kafka runs the noop scenario"),
        (["--scenario", "stream", "--requests", "5", "--duration", "1s"], "not both"),
        (["--scenario", "tools", "--threshold", "raw_1call_ratio>=0.8"], "it reports no ratio (add --compare-raw)"),
    ],
)
def test_bad_flags_print_usage_and_exit_2(args: list[str], expected: str) -> None:
    out = bench(*args, code=2).output
    assert "Usage: agentcli benchmark" in out
    assert expected in " ".join(out.split())  # the error panel may wrap lines


@pytest.mark.parametrize(
    ("content", "expected"),
    [("[runner]\nworkers = 3\n", "unknown key 'runner.workers'"), ("[runner\n", "invalid TOML")],
)
def test_bad_config_file_exits_2_naming_the_file(tmp_path: Path, content: str, expected: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(content)
    out = " ".join(bench("--config", str(config), code=2).output.split())
    assert str(config) in out and expected in out


def test_missing_config_file_exits_2() -> None:
    out = " ".join(bench("--config", "/no/such/agentflow.toml", code=2).output.split())
    assert "/no/such/agentflow.toml" in out and "not found" in out


# ---- profiling ------------------------------------------------------------------------------------------------


def test_profile_cpu_writes_a_pstats_file(tmp_path: Path) -> None:
    out = tmp_path / "f.prof"
    result = bench("--requests", "2000", "--profile", "cpu", "--output", str(out))
    stats = pstats.Stats(str(out))
    assert stats.total_calls > 2000  # type: ignore[attr-defined]
    assert "tottime" in result.output and "profiled runs are slowed down" in result.output


def test_profile_memory_writes_the_top_allocation_sites(tmp_path: Path) -> None:
    out = tmp_path / "mem.txt"
    result = bench("--mode", "throughput", "--requests", "2000", "--profile", "memory", "--output", str(out))
    lines = [line for line in out.read_text().splitlines() if not line.startswith("#")]
    assert 0 < len(lines) <= 25
    size, count, site = lines[0].split("\t")
    assert float(size) > 0 and int(count) > 0 and ":" in site
    assert "peak RSS" in result.output


# ---- the real entry point -------------------------------------------------------------------------------------


def _python_m(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "agentcli", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )


def test_python_m_agentcli() -> None:
    version = _python_m("version")
    assert version.returncode == 0, version.stderr
    assert "agentflow" in version.stdout and "uvloop" in version.stdout
    run = _python_m("benchmark", "--requests", "1000")
    assert run.returncode == 0, run.stderr
    assert "completed" in run.stdout and "\x1b[" not in run.stdout  # not a terminal: no progress bar, no colour
    bad = _python_m("benchmark", "--duration", "3x")
    assert bad.returncode == 2 and "Usage" in bad.stderr and "Traceback" not in bad.stderr
